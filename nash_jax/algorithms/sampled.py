"""Sampled NLHF in parameter space, for any policy class (ALGORITHMS.md
section 4).

Every step draws a batch of ``batch_size`` contexts ``x ~ rho``, a response
``y ~ pi_theta(.|x)`` and an opponent ``y'`` (from ``pi_theta``, an anchor,
a half-step policy or a geometric mixture with ``pi_ref``, as the algorithm
says), asks the oracle for each comparison's outcome ``o`` (one preference
query each: ``batch_size`` queries a step), and takes one optax step on a
per-sample loss from :mod:`nash_jax.rules`. The policy is used only through
``Policy.init``, ``sample`` and ``log_prob`` (:mod:`nash_jax.policies`), so
each algorithm has one implementation for every policy class.

State (:class:`~nash_jax.algorithms.base.PolicyState`): ``params`` are the
policy's params; ``extra`` is a dict with the optax state ``opt`` and, where
the algorithm has them, the ``anchor`` params (``nash_prox``,
``approx_nash_mp``) and the ``half``-step params (``approx_nash_mp``).
Anchor refreshes are data (``jnp.where`` on the step counter), not Python
control flow, and the numeric hyperparameters (``beta``, ``eta``,
``learning_rate``, ``anchor_tau``, ``mixture``) are closed over with no
branching on their values, so they may be tracers (sweeps vmap over them).

* ``online_ipo``: ``y, y' ~ pi``; minimize ``(h - (o - 1/2)/beta)^2``.
* ``self_play_pg``: ``y, y' ~ pi``; REINFORCE on both responses (``o`` for
  ``y``, ``1 - o`` for ``y'``) with a leave-one-pair-out baseline.
* ``nash_prox``: online IPO on the prox game around an anchor ``pi_k``
  (hard copy every ``anchor_every`` steps or EMA with ``anchor_tau``) with
  prox strength ``eta``.
* ``approx_nash_mp``: ``inner_steps`` policy-gradient steps on each Nash-MP
  half step; the opponent is the anchor ``pi_k`` for the first half, the
  half-step policy for the second; then the anchor moves.
* ``nash_md_pg``: ``y ~ pi``, ``y'`` from the mixture with logits
  ``(1 - c) log pi + c log pi_ref``; REINFORCE with a leave-one-out
  baseline.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nash_jax import rules
from nash_jax.algorithms.base import (
  Algorithm,
  AlgorithmConfig,
  PolicyState,
  advance,
  make_optimizer,
  new_state,
)
from nash_jax.games import oracle as oracle_lib
from nash_jax.games.core import Game
from nash_jax.policies import Policy, full_log_policy


class Batch(NamedTuple):
  """One batch of comparisons: contexts, responses, opponents, outcomes and
  the reference log-probabilities of both responses (all ``[B]``)."""

  contexts: chex.Array
  responses: chex.Array
  opponents: chex.Array
  outcomes: chex.Array
  log_ref: chex.Array
  log_ref_opponent: chex.Array


def draw_batch(key, policy: Policy, params, opponent_params, game: Game,
               config: AlgorithmConfig, mixture=0.0) -> Batch:
  """Samples ``B`` comparisons: ``x ~ rho``, ``y ~ pi_params``,
  ``y' ~ pi_opponent`` (mixed with ``pi_ref`` by ``mixture``) and ``o``."""
  x_key, y_key, opp_key, o_key = jax.random.split(key, 4)
  contexts = oracle_lib.sample_contexts(x_key, game, config.batch_size)
  responses = policy.sample(y_key, params, game, contexts)
  opponents = policy.sample(opp_key, opponent_params, game, contexts, mixture)
  outcomes = oracle_lib.preference_outcomes(o_key, game, contexts, responses,
                                            opponents, config.oracle)
  return Batch(contexts, responses, opponents, outcomes,
               oracle_lib.reference_log_prob(game, contexts, responses),
               oracle_lib.reference_log_prob(game, contexts, opponents))


def _sg(tree):
  return jax.lax.stop_gradient(tree)


def _make(name: str, config: AlgorithmConfig, policy: Policy,
          loss_fn: Callable, opponent: Callable, anchors: Callable | None,
          mixture=0.0) -> Algorithm:
  """The shared skeleton of every sampled algorithm.

  Args:
    name: the algorithm's name.
    config: hyperparameters.
    policy: the policy class.
    loss_fn: ``(params, batch, extra, game) -> scalar`` to minimize.
    opponent: ``(state) -> params`` that ``y'`` is drawn from.
    anchors: ``(names, refresh)``: the extra params the algorithm keeps
      (initialized to the initial params) and ``refresh(extra, new_params,
      step) -> extra`` run after each step (``step`` counts the step just
      taken); or None.
    mixture: mixture coefficient of ``pi_ref`` in the opponent's logits.
  """
  optimizer = make_optimizer(config)

  def init(key, game: Game) -> PolicyState:
    init_key, key = jax.random.split(key)
    params = policy.init(init_key, game)
    extra = {'opt': optimizer.init(params)}
    if anchors is not None:
      extra.update({name: params for name in anchors[0]})
    return new_state(key, params, extra)

  def step(state: PolicyState, game: Game):
    key, batch_key = jax.random.split(state.key)
    batch = draw_batch(batch_key, policy, _sg(state.params),
                       _sg(opponent(state)), game, config, mixture)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch,
                                              state.extra, game)
    updates, opt = optimizer.update(grads, state.extra['opt'], state.params)
    params = optax.apply_updates(state.params, updates)
    extra = dict(state.extra, opt=opt)
    if anchors is not None:
      extra = anchors[1](extra, params, state.step + 1)
    new = advance(state, params, extra, config.batch_size)
    return new.replace(key=key), {'loss': loss}

  def log_policy(state: PolicyState, game: Game):
    return full_log_policy(policy, state.params, game)

  return Algorithm(name, init, step, log_policy)


def _log_probs(policy, params, game, batch: Batch):
  """``log pi(y|x)`` and ``log pi(y'|x)`` of a batch."""
  return (policy.log_prob(params, game, batch.contexts, batch.responses),
          policy.log_prob(params, game, batch.contexts, batch.opponents))


def _current(state: PolicyState):
  return state.params


def make_online_ipo(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Online IPO (Calandriello et al. 2024) on sampled comparisons."""

  def loss_fn(params, batch: Batch, extra, game):
    del extra
    log_y, log_y_prime = _log_probs(policy, params, game, batch)
    return jnp.mean(rules.online_ipo_sample_loss(
        log_y, log_y_prime, batch.log_ref, batch.log_ref_opponent,
        batch.outcomes, config.beta))

  return _make('online_ipo', config, policy, loss_fn, _current, None)


def pair_baseline(advantage: chex.Array,
                  advantage_opponent: chex.Array) -> chex.Array:
  """Baseline of the two responses of each comparison: the mean advantage
  of the *other* comparisons, which are independent of this one (a
  leave-one-out over single responses would not be: ``y'``'s outcome is
  ``1 - o``)."""
  return rules.leave_one_out_baseline((advantage + advantage_opponent) / 2)


def make_self_play_pg(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Self-play policy gradient (REINFORCE) on sampled comparisons.

  Both responses of a comparison are REINFORCE samples from ``pi_theta``
  against an independent ``pi_theta`` sample (``o`` for ``y``, ``1 - o`` for
  ``y'``), each an unbiased estimate of ``grad S``.
  """
  beta = config.beta

  def loss_fn(params, batch: Batch, extra, game):
    del extra
    log_y, log_y_prime = _log_probs(policy, params, game, batch)
    adv = batch.outcomes - beta * (log_y - batch.log_ref)
    adv_prime = (1 - batch.outcomes) - beta * (log_y_prime -
                                               batch.log_ref_opponent)
    baseline = pair_baseline(adv, adv_prime)
    loss_y = rules.self_play_pg_sample_loss(log_y, batch.log_ref,
                                            batch.outcomes, baseline, beta)
    loss_y_prime = rules.self_play_pg_sample_loss(
        log_y_prime, batch.log_ref_opponent, 1 - batch.outcomes, baseline,
        beta)
    return jnp.mean(loss_y + loss_y_prime) / 2

  return _make('self_play_pg', config, policy, loss_fn, _current, None)


def _anchor(extra):
  return extra['anchor']


def _blend(tree, other, weight):
  """``(1 - weight) tree + weight other``, leaf by leaf."""
  return jax.tree.map(lambda a, b: (1 - weight) * a + weight * b, tree, other)


def _select(condition, new, old):
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def make_nash_prox(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Nash Prox: proximal-point self-play in IPO form with a moving anchor.

  Each step descends :func:`nash_jax.rules.nash_prox_sample_loss` around the
  anchor ``pi_k``. ``anchor='copy'``: ``theta_k <- theta`` after every
  ``anchor_every`` (``M``) steps, so each anchor is an outer proximal-point
  step solved by ``M`` inner steps (exact PP as ``M`` grows; ``M = 1`` with
  sgd is online IPO with step ``kappa * learning_rate``). ``anchor='ema'``:
  ``theta_k <- (1 - tau) theta_k + tau theta`` after every step.
  """

  def loss_fn(params, batch: Batch, extra, game):
    log_y, log_y_prime = _log_probs(policy, params, game, batch)
    anc_y, anc_y_prime = _log_probs(policy, _sg(extra['anchor']), game,
                                    batch)
    return jnp.mean(rules.nash_prox_sample_loss(
        log_y, log_y_prime, batch.log_ref, batch.log_ref_opponent, anc_y,
        anc_y_prime, batch.outcomes, config.beta, config.eta))

  def anchors(extra, params, step):
    if config.anchor == 'ema':
      anchor = _blend(extra['anchor'], params, config.anchor_tau)
    else:
      anchor = _select(step % config.anchor_every == 0, params,
                       extra['anchor'])
    return dict(extra, anchor=anchor)

  return _make('nash_prox', config, policy, loss_fn, _current,
               (('anchor',), anchors))


def make_approx_nash_mp(config: AlgorithmConfig,
                        policy: Policy) -> Algorithm:
  """Approximate Nash Mirror Prox with ``inner_steps`` (``K``) policy-gradient
  steps per half step.

  Steps ``0..K-1`` of each outer iteration maximize
  ``P(pi > pi_k) - beta KL(pi||pi_ref) - (beta/eta) KL(pi||pi_k)`` (opponent:
  the anchor); then ``half <- theta``; steps ``K..2K-1`` the same with the
  half-step policy as opponent; then the anchor ``theta_k <- theta``. The
  prox centre stays ``pi_k`` in both halves; ``theta`` is not reset.
  """
  period = 2 * config.inner_steps

  def in_first_half(step):
    return step % period < config.inner_steps

  def opponent(state: PolicyState):
    return _select(in_first_half(state.step), state.extra['anchor'],
                   state.extra['half'])

  def loss_fn(params, batch: Batch, extra, game):
    log_y = policy.log_prob(params, game, batch.contexts, batch.responses)
    anc_y = policy.log_prob(_sg(extra['anchor']), game, batch.contexts,
                            batch.responses)
    advantage = (batch.outcomes - config.beta * (log_y - batch.log_ref) -
                 config.beta / config.eta * (log_y - anc_y))
    baseline = rules.leave_one_out_baseline(advantage)
    return jnp.mean(rules.prox_pg_sample_loss(
        log_y, batch.log_ref, anc_y, batch.outcomes, baseline, config.beta,
        config.eta))

  def anchors(extra, params, step):
    phase = step % period
    half = _select(phase == config.inner_steps, params, extra['half'])
    anchor = _select(phase == 0, params, extra['anchor'])
    return dict(extra, anchor=anchor, half=half)

  return _make('approx_nash_mp', config, policy, loss_fn, opponent,
               (('anchor', 'half'), anchors))


def make_nash_md_pg(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Nash-MD-PG (Munos et al. 2024): REINFORCE against the geometric mixture
  of ``pi_theta`` and ``pi_ref`` (coefficient ``mixture``)."""
  beta = config.beta

  def loss_fn(params, batch: Batch, extra, game):
    del extra
    log_y = policy.log_prob(params, game, batch.contexts, batch.responses)
    baseline = rules.leave_one_out_baseline(
        batch.outcomes - beta * (log_y - batch.log_ref))
    return jnp.mean(rules.self_play_pg_sample_loss(
        log_y, batch.log_ref, batch.outcomes, baseline, beta))

  return _make('nash_md_pg', config, policy, loss_fn, _current, None,
               mixture=config.mixture)


SAMPLED_MAKERS = {
    'online_ipo': make_online_ipo,
    'self_play_pg': make_self_play_pg,
    'nash_prox': make_nash_prox,
    'approx_nash_mp': make_approx_nash_mp,
    'nash_md_pg': make_nash_md_pg,
}
