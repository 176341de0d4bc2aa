"""Exact reference solutions of tabular preference games (NumPy, float64).

* :func:`regularized_equilibrium`: ``pi*_beta``, the unique fixed point of
  ``pi(y|x) ∝ pi_ref(y|x) exp(g_pi(y|x) / beta)`` (ALGORITHMS.md section 1),
  by damped Newton on the log-policy.
* :func:`von_neumann_winner`: the ``beta = 0`` symmetric equilibrium, by a
  linear program per context (scipy's HiGHS).

These run on the host in float64, once per game, and are what the metrics
``kl_to_equilibrium`` are measured against.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.special

DEFAULT_TOLERANCE = 1e-10
# Where float64 rounding of g / beta stops Newton (seen: ~2e-10 for n = 1000,
# beta = 1e-3); below this a stalled iteration counts as converged.
ROUNDING_FLOOR = 1e-8


# The smallest beta > 0 whose pi*_beta the Newton solver reaches in float64:
# it converged for every random game tried with n = 6 to 100 at 1e-4 and
# failed (after seconds to minutes) for some at 3e-5. The experiments refuse
# smaller beta before any work (see check_beta).
MIN_BETA = 1e-4


def check_beta(beta: float) -> str | None:
  """Why the exact reference cannot be solved at ``beta`` (``0 < beta <
  MIN_BETA``), or None when it can (``beta = 0`` is the von Neumann
  winner, solved as a linear program)."""
  if 0 < beta < MIN_BETA:
    return (f'{beta:g} is below {MIN_BETA:g}, the smallest beta > 0 whose '
            'pi*_beta the exact reference solver reaches in float64; use '
            f'--beta >= {MIN_BETA:g} (or 0, the unregularized game, where '
            'the algorithm allows it)')
  return None


class SolverError(RuntimeError):
  """The reference solver did not reach its tolerance."""


def _log_softmax(logits):
  return logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)


def fixed_point_residual(log_policy, preferences, log_ref_policy, beta):
  """``r = log pi - log pi_ref - g_pi / beta`` per context, ``[X, n]``.

  ``r`` is constant in ``y`` exactly at ``pi*_beta``; its span (max - min over
  ``y``) is the fixed-point residual of ALGORITHMS.md section 2.
  """
  policy = np.exp(log_policy)
  g = np.einsum('xyz,xz->xy', preferences, policy)
  return log_policy - log_ref_policy - g / beta


def _span(r):
  return np.max(r, axis=-1) - np.min(r, axis=-1)


def regularized_equilibrium(preferences, ref_policy, beta, *,
                            tol=DEFAULT_TOLERANCE, max_iter=1000,
                            return_log=False):
  """The regularized Nash equilibrium ``pi*_beta`` of each context.

  Newton's method on ``F(l) = l - log pi_ref - g_{softmax(l)} / beta`` modulo
  constants. Its Jacobian ``I - (1/beta) (P - 1/2) (diag pi - pi pi^T)`` is
  ``I`` minus a matrix similar to an antisymmetric one, so its eigenvalues are
  ``1 + i w`` and it is never singular: every Newton direction is a descent
  direction of the merit ``||F - mean F||^2``, and a backtracking line search
  per context makes the iteration globally convergent in practice. It ends
  when the span of ``F`` is below ``tol`` in every context, or when it stalls
  at the rounding floor of float64 (below ``ROUNDING_FLOOR``; this happens
  for ``n`` in the thousands with ``beta = 1e-3``, around ``2e-10``).

  Args:
    preferences: ``[X, n, n]`` or ``[n, n]``.
    ref_policy: ``[X, n]`` or ``[n]``, strictly positive.
    beta: regularization strength, ``> 0``.
    tol: span tolerance on the fixed-point residual.
    max_iter: Newton iterations before :class:`SolverError`.
    return_log: return ``log pi*_beta`` instead of probabilities.

  Returns:
    ``pi*_beta`` (or its log), ``[X, n]`` float64.
  """
  if not beta > 0:
    raise ValueError(f'beta must be > 0 for the regularized equilibrium, '
                     f'got {beta}')
  preferences = np.asarray(preferences, np.float64)
  if preferences.ndim == 2:
    preferences = preferences[None]
  num_contexts, n = preferences.shape[0], preferences.shape[-1]
  log_ref = np.log(np.broadcast_to(np.asarray(ref_policy, np.float64),
                                   (num_contexts, n)))
  log_ref = _log_softmax(log_ref)
  # Only the antisymmetric part of P moves g (the 1/2 part is constant).
  antisym = preferences - 0.5
  eye = np.eye(n)

  def merit(r):
    centred = r - np.mean(r, axis=-1, keepdims=True)
    return np.sum(centred ** 2, axis=-1)

  log_pi = log_ref.copy()
  r = fixed_point_residual(log_pi, preferences, log_ref, beta)
  best_span, best_log_pi, since_best = np.inf, log_pi, 0
  for _ in range(max_iter):
    span = np.max(_span(r))
    if span < best_span:
      best_span, best_log_pi, since_best = span, log_pi, 0
    else:
      since_best += 1
    # Converged, or at the float64 rounding floor: no new best for ten Newton
    # steps while already within ROUNDING_FLOOR.
    if best_span < tol or (since_best >= 10 and best_span < ROUNDING_FLOOR):
      return best_log_pi if return_log else np.exp(best_log_pi)
    pi = np.exp(log_pi)
    jac_softmax = pi[:, :, None] * eye - pi[:, :, None] * pi[:, None, :]
    jacobian = eye - np.einsum('xyz,xzw->xyw', antisym, jac_softmax) / beta
    direction = np.linalg.solve(jacobian, -r[..., None])[..., 0]
    m0 = merit(r)
    step = np.ones((num_contexts, 1))
    active = np.ones(num_contexts, bool)
    new_log_pi, new_r = log_pi, r
    for _ in range(60):
      cand = _log_softmax(log_pi + step * direction)
      cand_r = fixed_point_residual(cand, preferences, log_ref, beta)
      ok = active & (merit(cand_r) <= (1 - 1e-4 * step[:, 0]) * m0)
      new_log_pi = np.where(ok[:, None], cand, new_log_pi)
      new_r = np.where(ok[:, None], cand_r, new_r)
      active &= ~ok
      if not active.any():
        break
      step = np.where(active[:, None], step * 0.5, step)
    log_pi, r = new_log_pi, new_r
  raise SolverError(
      f'regularized_equilibrium did not reach span {tol:g} in {max_iter} '
      f'Newton iterations (span {np.max(_span(r)):.3g}, beta={beta})')


def von_neumann_winner(preferences):
  """A von Neumann winner per context (the ``beta = 0`` equilibrium).

  Solves ``max_{pi, v} v`` s.t. ``sum_y pi(y) P(y > y') >= v`` for every
  ``y'``, ``pi`` in the simplex. The value is exactly 1/2 (the game is
  symmetric). The winner need not be unique (a tie game admits every policy);
  HiGHS returns one vertex solution.

  Args:
    preferences: ``[X, n, n]`` or ``[n, n]``.

  Returns:
    ``[X, n]`` float64 probabilities.
  """
  preferences = np.asarray(preferences, np.float64)
  if preferences.ndim == 2:
    preferences = preferences[None]
  n = preferences.shape[-1]
  cost = np.zeros(n + 1)
  cost[-1] = -1.0
  a_eq = np.concatenate([np.ones((1, n)), np.zeros((1, 1))], axis=1)
  bounds = [(0, None)] * n + [(None, None)]
  winners = []
  for pref in preferences:
    a_ub = np.concatenate([-pref.T, np.ones((n, 1))], axis=1)
    result = scipy.optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(n),
                                    A_eq=a_eq, b_eq=[1.0], bounds=bounds,
                                    method='highs')
    if result.status != 0:
      raise SolverError(f'von_neumann_winner: linprog failed: '
                        f'{result.message}')
    pi = np.clip(result.x[:n], 0, None)
    winners.append(pi / pi.sum())
  return np.stack(winners)


def equilibrium(preferences, ref_policy, beta, **kwargs):
  """``pi*_beta`` for ``beta > 0``, a von Neumann winner for ``beta = 0``."""
  if beta == 0:
    return von_neumann_winner(preferences)
  return regularized_equilibrium(preferences, ref_policy, beta, **kwargs)
