"""Sampled NLHF in parameter space, for any policy class (ALGORITHMS.md
section 4).

Every step draws a batch of ``batch_size`` contexts ``x ~ rho``, a response
``y ~ pi_theta(.|x)`` and an opponent ``y'`` (from ``pi_theta``, an anchor,
a half-step policy or a geometric mixture with ``pi_ref``, as the algorithm
says), asks the oracle for each comparison's outcome ``o`` (one preference
query each: ``batch_size`` queries a step), and takes one optax step on a
per-sample loss from :mod:`nash_jax.rules`. Both the policy and the
environment are injected: the policy is used only through ``Policy.init``,
``sample`` and ``log_prob`` (:mod:`nash_jax.policies`), the world only
through the environment's ``contexts``, ``ref_log_prob``, ``outcomes`` and
``reference`` (:mod:`nash_jax.environments`), so each algorithm has one
implementation for every policy class (tabular, log-linear, MLP,
transformer) and every environment (a tabular game, a token game).

State (:class:`~nash_jax.algorithms.base.SampledState`): the policy's
``params``, the optax state and, where the algorithm has them, the
``anchor`` params (``nash_prox``, ``approx_nash_mp``) and the ``half``-step
params (``approx_nash_mp``).
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

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nash_jax import rules
from nash_jax.algorithms.base import (
  Algorithm,
  AlgorithmConfig,
  SampledState,
  make_optimizer,
  shard_batch,
)
from nash_jax.environments.core import Environment
from nash_jax.policies.core import Policy


class Batch(NamedTuple):
  """One batch of comparisons: context data ``x``, responses, opponents,
  outcomes and the reference log-probabilities of both responses (all with a
  leading ``[B]`` axis)."""

  contexts: Any
  responses: chex.Array
  opponents: chex.Array
  outcomes: chex.Array
  log_ref: chex.Array
  log_ref_opponent: chex.Array


def draw_batch(key, policy: Policy, env: Environment, env_params, params,
               opponent_params, batch_size: int, mixture=None) -> Batch:
  """Samples ``B`` comparisons: ``x ~ rho``, ``y ~ pi_params``,
  ``y' ~ pi_opponent`` (mixed with ``pi_ref`` by ``mixture``, unless it is
  None) and ``o``. The environment's reference is handed to the policy only
  for a mixture, so that a sequence policy runs the reference model only
  where it is needed.

  Data parallel: the contexts, both responses and the whole batch are
  constrained to the mesh's ``'data'`` axis (:func:`~nash_jax.algorithms.
  base.shard_batch`; a no-op without one), so that generation, the
  oracle, reference scoring and the loss on this batch are split over the
  ``'data'`` devices."""
  x_key, y_key, opp_key, o_key = jax.random.split(key, 4)
  x = shard_batch(env.contexts(env_params, x_key, batch_size))
  responses = shard_batch(policy.sample(y_key, params, x, 0.0, None))
  if mixture is None:
    opponents = policy.sample(opp_key, opponent_params, x, 0.0, None)
  else:
    opponents = policy.sample(opp_key, opponent_params, x, mixture,
                              env.reference(env_params))
  opponents = shard_batch(opponents)
  outcomes = env.outcomes(env_params, o_key, x, responses, opponents)
  return shard_batch(Batch(x, responses, opponents, outcomes,
                           env.ref_log_prob(env_params, x, responses),
                           env.ref_log_prob(env_params, x, opponents)))


def _sg(tree):
  return jax.lax.stop_gradient(tree)


def _make(name: str, config: AlgorithmConfig, policy: Policy,
          env: Environment, loss_fn: Callable, opponent: Callable,
          anchors: Callable | None = None, has_half: bool = False,
          mixture=None) -> Algorithm:
  """The shared skeleton of every sampled algorithm.

  Args:
    name: the algorithm's name.
    config: hyperparameters.
    policy: the policy class.
    env: the environment.
    loss_fn: ``(params, batch, state) -> scalar`` to minimize.
    opponent: ``(state) -> params`` that ``y'`` is drawn from.
    anchors: ``refresh(state, new_params, step) -> (anchor, half)`` run after
      each step (``step`` counts the step just taken), or None for an
      algorithm without anchors; anchors (and ``half`` with ``has_half``)
      start at the initial params.
    has_half: whether the state keeps half-step params.
    mixture: mixture coefficient of ``pi_ref`` in the opponent's logits,
      or None for an opponent drawn from its own params.
  """
  optimizer = make_optimizer(config)

  def init(key, env_params) -> SampledState:
    init_key, key = jax.random.split(key)
    params = policy.init(init_key, env.all_contexts(env_params),
                         env.reference(env_params))
    zero = jnp.zeros((), jnp.int32)
    return SampledState(
        params=params, opt_state=optimizer.init(params),
        anchor=params if anchors is not None else None,
        half=params if has_half else None, step=zero,
        preference_queries=zero, generated_tokens=zero, key=key)

  def step(state: SampledState, env_params):
    key, batch_key = jax.random.split(state.key)
    batch = draw_batch(batch_key, policy, env, env_params, _sg(state.params),
                       _sg(opponent(state)), config.batch_size, mixture)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, state)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    anchor, half = state.anchor, state.half
    if anchors is not None:
      anchor, half = anchors(state, params, state.step + 1)
    tokens = state.generated_tokens
    if policy.num_tokens is not None:
      tokens = tokens + (policy.num_tokens(batch.responses) +
                         policy.num_tokens(batch.opponents)).astype(
                             tokens.dtype)
    new = state.replace(
        params=params, opt_state=opt_state, anchor=anchor, half=half,
        step=state.step + 1,
        preference_queries=state.preference_queries + config.batch_size,
        generated_tokens=tokens, key=key)
    return new, {'loss': loss}

  return Algorithm(name, init, step, policy)


def _log_probs(policy, params, batch: Batch):
  """``log pi(y|x)`` and ``log pi(y'|x)`` of a batch."""
  return (policy.log_prob(params, batch.contexts, batch.responses),
          policy.log_prob(params, batch.contexts, batch.opponents))


def _current(state: SampledState):
  return state.params


def make_online_ipo(config: AlgorithmConfig, policy: Policy,
                    env: Environment) -> Algorithm:
  """Online IPO (Calandriello et al. 2024) on sampled comparisons."""

  def loss_fn(params, batch: Batch, state):
    del state
    log_y, log_y_prime = _log_probs(policy, params, batch)
    return jnp.mean(rules.online_ipo_sample_loss(
        log_y, log_y_prime, batch.log_ref, batch.log_ref_opponent,
        batch.outcomes, config.beta))

  return _make('online_ipo', config, policy, env, loss_fn, _current)


def pair_baseline(advantage: chex.Array,
                  advantage_opponent: chex.Array) -> chex.Array:
  """Baseline of the two responses of each comparison: the mean advantage
  of the *other* comparisons, which are independent of this one (a
  leave-one-out over single responses would not be: ``y'``'s outcome is
  ``1 - o``)."""
  return rules.leave_one_out_baseline((advantage + advantage_opponent) / 2)


def make_self_play_pg(config: AlgorithmConfig, policy: Policy,
                      env: Environment) -> Algorithm:
  """Self-play policy gradient (REINFORCE) on sampled comparisons.

  Both responses of a comparison are REINFORCE samples from ``pi_theta``
  against an independent ``pi_theta`` sample (``o`` for ``y``, ``1 - o`` for
  ``y'``), each an unbiased estimate of ``grad S``.
  """
  beta = config.beta

  def loss_fn(params, batch: Batch, state):
    del state
    log_y, log_y_prime = _log_probs(policy, params, batch)
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

  return _make('self_play_pg', config, policy, env, loss_fn, _current)


def _blend(tree, other, weight):
  """``(1 - weight) tree + weight other``, leaf by leaf."""
  return jax.tree.map(lambda a, b: (1 - weight) * a + weight * b, tree, other)


def _select(condition, new, old):
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def make_nash_prox(config: AlgorithmConfig, policy: Policy,
                   env: Environment) -> Algorithm:
  """Nash Prox: proximal-point self-play in IPO form with a moving anchor.

  Each step descends :func:`nash_jax.rules.nash_prox_sample_loss` around the
  anchor ``pi_k``. ``anchor='copy'``: ``theta_k <- theta`` after every
  ``anchor_every`` (``M``) steps, so each anchor is an outer proximal-point
  step solved by ``M`` inner steps (exact PP as ``M`` grows; ``M = 1`` with
  sgd is online IPO with step ``kappa * learning_rate``). ``anchor='ema'``:
  ``theta_k <- (1 - tau) theta_k + tau theta`` after every step.
  """

  def loss_fn(params, batch: Batch, state: SampledState):
    log_y, log_y_prime = _log_probs(policy, params, batch)
    anc_y, anc_y_prime = _log_probs(policy, _sg(state.anchor), batch)
    return jnp.mean(rules.nash_prox_sample_loss(
        log_y, log_y_prime, batch.log_ref, batch.log_ref_opponent, anc_y,
        anc_y_prime, batch.outcomes, config.beta, config.eta))

  def anchors(state: SampledState, params, step):
    if config.anchor == 'ema':
      anchor = _blend(state.anchor, params, config.anchor_tau)
    else:
      anchor = _select(step % config.anchor_every == 0, params,
                       state.anchor)
    return anchor, None

  return _make('nash_prox', config, policy, env, loss_fn, _current, anchors)


def make_approx_nash_mp(config: AlgorithmConfig, policy: Policy,
                        env: Environment) -> Algorithm:
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

  def opponent(state: SampledState):
    return _select(in_first_half(state.step), state.anchor, state.half)

  def loss_fn(params, batch: Batch, state: SampledState):
    log_y = policy.log_prob(params, batch.contexts, batch.responses)
    anc_y = policy.log_prob(_sg(state.anchor), batch.contexts,
                            batch.responses)
    advantage = (batch.outcomes - config.beta * (log_y - batch.log_ref) -
                 config.beta / config.eta * (log_y - anc_y))
    baseline = rules.leave_one_out_baseline(advantage)
    return jnp.mean(rules.prox_pg_sample_loss(
        log_y, batch.log_ref, anc_y, batch.outcomes, baseline, config.beta,
        config.eta))

  def anchors(state: SampledState, params, step):
    phase = step % period
    half = _select(phase == config.inner_steps, params, state.half)
    anchor = _select(phase == 0, params, state.anchor)
    return anchor, half

  return _make('approx_nash_mp', config, policy, env, loss_fn, opponent,
               anchors, has_half=True)


def make_nash_md_pg(config: AlgorithmConfig, policy: Policy,
                    env: Environment) -> Algorithm:
  """Nash-MD-PG (Munos et al. 2024): REINFORCE against the geometric mixture
  of ``pi_theta`` and ``pi_ref`` (coefficient ``mixture``)."""
  beta = config.beta

  def loss_fn(params, batch: Batch, state):
    del state
    log_y = policy.log_prob(params, batch.contexts, batch.responses)
    baseline = rules.leave_one_out_baseline(
        batch.outcomes - beta * (log_y - batch.log_ref))
    return jnp.mean(rules.self_play_pg_sample_loss(
        log_y, batch.log_ref, batch.outcomes, baseline, beta))

  return _make('nash_md_pg', config, policy, env, loss_fn, _current,
               mixture=config.mixture)
