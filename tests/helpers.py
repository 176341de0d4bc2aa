"""Helpers shared by the test files: the cases the fast tier keeps, random
NumPy games, seed-sweep setups and their bit-identity check, the exact gradients the sampled estimators
are tested against, and the environment of a child process (XLA flags, fake
devices).

The refusals of a binary (many cases in one process) are in
tests/refusals.py; the tiny Hugging Face checkpoints in tests/hf_fixtures.py.
Rank promotion raises in every test (tests/conftest.py).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nash_jax import rules
from nash_jax.games import generate_game, win_rates

# --------------------------------------------------------------------------
# The fast tier (``pytest -m 'not slow'``, BUILD.md).


def slow_except(cases, fast, key=lambda case: case):
  """``cases`` for ``pytest.mark.parametrize``, each marked ``slow`` unless
  ``key(case)`` is in ``fast``: the fast tier runs the cases of ``fast``,
  the full suite all of them (same ids). A tuple case is one value per
  argument name."""
  return [pytest.param(*(case if isinstance(case, tuple) else (case,)),
                       marks=() if key(case) in fast else pytest.mark.slow)
          for case in cases]


# --------------------------------------------------------------------------
# Random games in NumPy.


def random_preferences(rng, num_contexts, num_actions):
  """``P(y > y') ~ U(0, 1)`` below the diagonal, ``P + P^T = 1`` exactly;
  ``[num_contexts, num_actions, num_actions]`` from ``rng`` (one
  ``uniform`` draw)."""
  lower = np.tril(rng.uniform(size=(num_contexts, num_actions, num_actions)),
                  -1)
  upper = np.triu(1 - np.swapaxes(lower, -1, -2), 1)
  return lower + upper + 0.5 * np.eye(num_actions)


def random_numpy_game(rng, num_contexts, num_actions, ref_concentration=1.0):
  """``(P, rho, pi_ref)``: random preferences (:func:`random_preferences`),
  ``rho ~ Dirichlet(1)`` over contexts and, per context, ``pi_ref ~
  Dirichlet(ref_concentration)``, drawn in that order from ``rng`` (a
  ``numpy.random.Generator``, or a seed for one)."""
  rng = np.random.default_rng(rng)
  preferences = random_preferences(rng, num_contexts, num_actions)
  weights = rng.dirichlet(np.ones(num_contexts))
  ref = rng.dirichlet(np.full(num_actions, ref_concentration),
                      size=num_contexts)
  return preferences, weights, ref


# --------------------------------------------------------------------------
# Seed sweeps against single runs.


def seed_games(num_seeds, num_contexts, num_actions):
  """``(keys, games, log_eq)``: ``num_seeds`` keys split from
  ``PRNGKey(0)``, a random game with a random ``pi_ref`` per key (float64,
  stacked), and a uniform stand-in for ``log pi*`` ``[num_seeds, X, n]``."""
  keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
  games = jax.vmap(lambda k: generate_game(k, 'random', num_contexts,
                                           num_actions, 'random',
                                           jnp.float64))(keys)
  log_eq = jnp.full((num_seeds, num_contexts, num_actions),
                    -jnp.log(num_actions))
  return keys, games, log_eq


def assert_seed_equal(sweep, single, i):
  """Seed ``i`` of a multi-seed run ``(state, rows)`` equals the only seed
  of a single run, bit for bit: every logged value and every state leaf."""
  (s_state, s_rows), (o_state, o_rows) = sweep, single
  assert len(s_rows) == len(o_rows)
  for a, b in zip(s_rows, o_rows):
    for k in a:
      np.testing.assert_array_equal(a[k][i], b[k][0], err_msg=k)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[i], y[0]),
               s_state, o_state)


def assert_seeds_equal_single_runs(sweep, single_run, keys, games, log_eq,
                                   seeds):
  """:func:`assert_seed_equal` for each seed ``i`` of ``seeds``, against
  ``single_run(keys[i:i+1], games[i:i+1], log_eq[i:i+1], i)``."""
  for i in seeds:
    one = lambda x: x[i:i + 1]
    single = single_run(one(keys), jax.tree.map(one, games), one(log_eq), i)
    assert_seed_equal(sweep, single, i)


# --------------------------------------------------------------------------
# Exact gradients of the objectives the sampled algorithms estimate, on a
# game with ``preferences``, ``log_ref_policy`` and ``context_weights``
# (ALGORITHMS.md section 4).


def assert_unbiased(samples, exact, z=5.0):
  """The mean of per-batch gradients ``samples [B, d]`` is within ``z``
  standard errors (estimated from the batches) of ``exact``, and that
  standard error is below a tenth of the largest exact component (the
  check has teeth)."""
  exact = np.asarray(exact).reshape(-1)
  mean = samples.mean(axis=0)
  stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
  assert np.all(np.abs(mean - exact) <= z * stderr + 1e-12), (
      mean, exact, stderr)
  assert np.max(stderr) < 0.1 * np.max(np.abs(exact))


def kl_rho(log_p, log_q, game):
  """``KL_rho(p || q) = sum_x rho(x) sum_y p(y|x) log(p(y|x) / q(y|x))``."""
  return jnp.sum(game.context_weights *
                 jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def play(log_policy, log_opponent, game):
  """``P(pi > sg opponent)``, differentiable in ``pi`` only."""
  g = win_rates(game.preferences,
                jax.lax.stop_gradient(jnp.exp(log_opponent)))
  return jnp.sum(game.context_weights *
                 jnp.sum(jnp.exp(log_policy) * g, axis=-1))


def exact_self_play(logits, game, beta):
  """``-grad S``, ``S`` the self-play objective."""
  return -jax.grad(rules.self_play_objective)(
      logits, game.preferences, game.log_ref_policy, game.context_weights,
      beta)


def exact_online_ipo(logits, game, beta):
  """The gradient of the online IPO loss."""
  return jax.grad(rules.online_ipo_loss)(
      logits, game.preferences, game.log_ref_policy, game.context_weights,
      beta)


def exact_nash_prox(logits, anchor_logits, game, beta, eta):
  """Gradient of ``E_{x, y, y' ~ sg pi} (h - lambda (P - 1/2))^2`` (the
  Bernoulli outcome only adds a constant)."""
  kappa, lam = eta / (1 + eta), eta / (beta * (1 + eta))

  def loss(logits):
    log_pi = rules.normalize(logits)
    log_anchor = rules.normalize(anchor_logits)
    weights = jax.lax.stop_gradient(jnp.exp(log_pi))
    diff = lambda v: v[:, :, None] - v[:, None, :]
    h = (diff(log_pi) - kappa * diff(game.log_ref_policy) -
         (1 - kappa) * diff(log_anchor))
    per_pair = (h - lam * (game.preferences - 0.5)) ** 2
    per_context = jnp.sum(weights[:, :, None] * weights[:, None, :] *
                          per_pair, axis=(-1, -2))
    return jnp.sum(game.context_weights * per_context)

  return jax.grad(loss)(logits)


def exact_prox_pg(logits, opponent_logits, anchor_logits, game, beta, eta):
  """``-grad [P(pi > opp) - beta KL(pi||pi_ref) - (beta/eta) KL(pi||pi_k)]``."""

  def objective(logits):
    log_pi = rules.normalize(logits)
    return (play(log_pi, rules.normalize(opponent_logits), game) -
            beta * kl_rho(log_pi, game.log_ref_policy, game) -
            beta / eta * kl_rho(log_pi, rules.normalize(anchor_logits),
                                game))

  return -jax.grad(objective)(logits)


def exact_nash_md(logits, game, mixture, beta):
  """``-grad [P(pi > sg pi^mu) - beta KL(pi||pi_ref)]``, ``pi^mu`` the
  geometric mixture."""

  def objective(logits):
    log_pi = rules.normalize(logits)
    log_mix = rules.geometric_mixture(jax.lax.stop_gradient(log_pi),
                                      game.log_ref_policy, mixture)
    return (play(log_pi, log_mix, game) -
            beta * kl_rho(log_pi, game.log_ref_policy, game))

  return -jax.grad(objective)(logits)


# --------------------------------------------------------------------------
# Child processes: XLA flags and fake devices (both read when JAX starts).

# XLA's CPU backend optimizations turned down: compiling takes most of a
# tiny run's time. A check that compares runs makes them under the same
# flags (other flags compile other programs) or holds to a stated tolerance.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def child_env(*xla_flags, **variables):
  """This process's environment with ``XLA_FLAGS`` extended by
  ``xla_flags`` and the given ``variables`` set."""
  flags = ' '.join([os.environ.get('XLA_FLAGS', ''), *xla_flags]).strip()
  return dict(os.environ, XLA_FLAGS=flags, **variables)


def fake_devices_env(count, *xla_flags):
  """The environment of a child process that sees ``count`` fake CPU
  devices: :func:`child_env` with ``xla_flags``,
  ``--xla_force_host_platform_device_count=count`` and
  ``JAX_PLATFORMS=cpu``."""
  return child_env(*xla_flags,
                   f'--xla_force_host_platform_device_count={count}',
                   JAX_PLATFORMS='cpu')
