"""Bradley-Terry rewards fitted to a preference game, and their policies.

The RLHF baseline that Nash learning is compared with (ALGORITHMS.md
section 5, claim 6): fit a reward model ``r(x, y)`` under the Bradley-Terry
(BT) assumption

  P_r(y > y' | x) = sigmoid(r(x, y) - r(x, y')),

then take the policy that maximizes it: greedy (``argmax_y r``) or
KL-regularized, ``pi(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, the maximizer
of ``E_{y~pi} r - beta KL(pi || pi_ref)``.

The fit is maximum likelihood against the exact preferences, with ordered
pairs ``(y, y')`` drawn from a comparison distribution ``w(y, y' | x)``
(default ``pi_ref x pi_ref``: the responses of an RLHF dataset come from the
reference policy). Per context, with ``W = w + w^T`` and ``d_yy' = r_y -
r_y'``, the expected log-likelihood is

  L(r) = sum_{y, y'} W_yy' P(y > y') log sigmoid(d_yy'),

concave in ``r``, with gradient ``dL/dr_a = sum_b W_ab (P_ab - sigmoid(d_ab))``
and Hessian ``-Lap(W * s)``, the negative graph Laplacian of the weights
``W_ab s_ab``, ``s = sigmoid(d) (1 - sigmoid(d))``. It is invariant to adding
a constant to ``r``, so rewards are returned centred (mean zero over ``y``).
When ``P`` is itself BT with rewards ``r*``, the gradient vanishes at ``r*``
for every ``w``: the fit recovers ``r*`` up to an additive constant.

Everything here is NumPy float64 on the host, like :mod:`nash_jax.reference`.
"""

from __future__ import annotations

import numpy as np
import scipy.special

DEFAULT_TOLERANCE = 1e-10
# Where float64 rounding stalls Newton (sharp preferences near 0 or 1, seen:
# steps of ~3e-10 for population games); a stalled step below this counts
# as converged.
ROUNDING_FLOOR = 1e-7


class FitError(RuntimeError):
  """The maximum-likelihood fit did not converge (e.g. no finite MLE)."""


def _as_contexts(array, ndim):
  array = np.asarray(array, np.float64)
  return array[None] if array.ndim == ndim - 1 else array


def bradley_terry_preferences(rewards):
  """``P(y > y' | x) = sigmoid(r(x, y) - r(x, y'))``, ``[X, n, n]``."""
  rewards = _as_contexts(rewards, 2)
  return scipy.special.expit(rewards[:, :, None] - rewards[:, None, :])


def pair_weights(ref_policy, num_contexts, num_actions):
  """The symmetrized comparison weights ``W = w + w^T`` of ``w = pi_ref x
  pi_ref``, ``[X, n, n]``; ``ref_policy=None`` means uniform pairs."""
  if ref_policy is None:
    ref = np.full((num_contexts, num_actions), 1.0 / num_actions)
  else:
    ref = np.broadcast_to(_as_contexts(ref_policy, 2),
                          (num_contexts, num_actions))
  w = ref[:, :, None] * ref[:, None, :]
  return w + np.swapaxes(w, -1, -2)


def log_likelihood(rewards, preferences, weights):
  """``L(r) = sum_{y,y'} W_yy' P_yy' log sigmoid(r_y - r_y')`` per context,
  ``[X]``; ``weights`` is the symmetrized ``W``."""
  rewards = _as_contexts(rewards, 2)
  diff = rewards[:, :, None] - rewards[:, None, :]
  return np.sum(weights * preferences * -np.logaddexp(0.0, -diff), axis=(1, 2))


def _gradient_and_hessian(rewards, preferences, weights):
  diff = rewards[:, :, None] - rewards[:, None, :]
  sig = scipy.special.expit(diff)
  grad = np.sum(weights * (preferences - sig), axis=-1)
  coupling = weights * sig * (1 - sig)
  n = rewards.shape[-1]
  laplacian = np.eye(n) * np.sum(coupling, axis=-1)[:, :, None] - coupling
  return grad, laplacian


def fit_rewards(preferences, ref_policy=None, *, tol=DEFAULT_TOLERANCE,
                max_iter=200):
  """Maximum-likelihood Bradley-Terry rewards of each context.

  Newton's method on the concave ``L`` (module docstring) with a
  backtracking line search, restricted to mean-zero rewards: the step solves
  ``(Lap + 1 1^T / n) delta = grad``, whose ``1 1^T / n`` term fixes the
  constant that ``L`` does not see (``grad`` sums to zero). Stops after a
  full Newton step with ``max_a |delta_a| < tol`` (quadratic convergence:
  the rewards are then accurate far below ``tol``), or when the steps stall
  for 10 iterations below ``ROUNDING_FLOOR`` (float64 rounding).

  Args:
    preferences: ``[X, n, n]`` or ``[n, n]``, ``P + P^T = 1``.
    ref_policy: comparison pairs are drawn from ``pi_ref x pi_ref``;
      ``[X, n]``, ``[n]`` or ``None`` (uniform pairs).
    tol: tolerance on the Newton step.
    max_iter: Newton iterations before :class:`FitError`.

  Returns:
    ``[X, n]`` rewards (float64, mean zero over responses).

  Raises:
    FitError: no convergence, e.g. a finite MLE does not exist because some
      set of responses beats all the others with probability 1.
  """
  preferences = _as_contexts(preferences, 3)
  num_contexts, n = preferences.shape[0], preferences.shape[-1]
  weights = pair_weights(ref_policy, num_contexts, n)
  rewards = np.zeros((num_contexts, n))
  ones = np.full((n, n), 1.0 / n)
  best, since_best = np.inf, 0
  for _ in range(max_iter):
    grad, laplacian = _gradient_and_hessian(rewards, preferences, weights)
    try:
      step = np.linalg.solve(laplacian + ones, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:
      step = np.full_like(rewards, np.nan)
    if not np.all(np.isfinite(step)):
      raise FitError('fit_rewards: the rewards diverge (a singular or '
                     'non-finite Newton step); a finite maximum-likelihood '
                     'fit does not exist, e.g. some responses win with '
                     'probability 1')
    size = np.max(np.abs(step))
    best, since_best = (size, 0) if size < best else (best, since_best + 1)
    if size < tol or (since_best >= 10 and best < ROUNDING_FLOOR):
      rewards = rewards + step
      return rewards - np.mean(rewards, axis=-1, keepdims=True)
    base = log_likelihood(rewards, preferences, weights)
    slope = np.sum(grad * step, axis=-1)
    scale = np.ones((num_contexts, 1))
    for _ in range(50):
      cand = rewards + scale * step
      ok = (log_likelihood(cand, preferences, weights) >=
            base + 1e-4 * scale[:, 0] * slope)
      if ok.all():
        break
      scale = np.where(ok[:, None], scale, scale / 2)
    rewards = rewards + scale * step
  raise FitError(f'fit_rewards: Newton steps still above {tol:g} after '
                 f'{max_iter} iterations (max |step| {np.max(np.abs(step)):.3g}'
                 '); a finite maximum-likelihood fit may not exist')


def greedy_policy(rewards, tol=1e-9):
  """``argmax_y r(x, y)``, uniform over responses within ``tol`` of the max
  (a flat reward gives the uniform policy), ``[X, n]``."""
  rewards = _as_contexts(rewards, 2)
  best = rewards >= np.max(rewards, axis=-1, keepdims=True) - tol
  return best / np.sum(best, axis=-1, keepdims=True)


def regularized_policy(rewards, ref_policy, beta):
  """``pi(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``, the maximizer of
  ``E_pi r - beta KL(pi || pi_ref)``; the greedy policy at ``beta = 0``."""
  rewards = _as_contexts(rewards, 2)
  if beta == 0:
    return greedy_policy(rewards)
  logits = np.log(np.broadcast_to(np.asarray(ref_policy, np.float64),
                                  rewards.shape)) + rewards / beta
  return scipy.special.softmax(logits, axis=-1)


def kl_to_ref(policy, ref_policy):
  """``KL(pi || pi_ref)`` per context, ``[X]`` (terms with ``pi = 0`` are 0)."""
  policy = _as_contexts(policy, 2)
  ref = np.broadcast_to(np.asarray(ref_policy, np.float64), policy.shape)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(policy > 0, policy * np.log(policy / ref), 0.0)
  return np.sum(terms, axis=-1)


def matched_kl_policy(rewards, ref_policy, target_kl, tol=1e-10):
  """The KL-regularized reward maximizer at the ``beta'`` whose policy is as
  far from ``pi_ref`` as ``target_kl``, per context: ``pi ∝ pi_ref exp(r /
  beta')`` with ``KL(pi || pi_ref) = target_kl``.

  ``KL(pi_beta' || pi_ref)`` decreases from the greedy policy's
  ``-log pi_ref(argmax)`` (as ``beta' -> 0``) to 0 (``beta' -> inf``), so
  bisection on ``log beta'`` finds it; a target beyond the greedy policy's
  KL gives the greedy policy.

  Returns:
    ``([X, n] policy, [X] beta')``.
  """
  rewards = _as_contexts(rewards, 2)
  ref = np.broadcast_to(np.asarray(ref_policy, np.float64), rewards.shape)
  target = np.broadcast_to(np.asarray(target_kl, np.float64),
                           rewards.shape[:1])
  lo = np.full(rewards.shape[:1], -30.0)   # log beta': sharp
  hi = np.full(rewards.shape[:1], 30.0)    # log beta': pi_ref
  for _ in range(200):
    mid = (lo + hi) / 2
    kl = kl_to_ref(regularized_policy_per_context(rewards, ref, np.exp(mid)),
                   ref)
    too_sharp = kl > target
    lo = np.where(too_sharp, mid, lo)
    hi = np.where(too_sharp, hi, mid)
    if np.max(hi - lo) < tol:
      break
  beta = np.exp((lo + hi) / 2)
  return regularized_policy_per_context(rewards, ref, beta), beta


def regularized_policy_per_context(rewards, ref_policy, beta):
  """``pi ∝ pi_ref exp(r / beta_x)`` with a ``beta_x > 0`` per context."""
  logits = np.log(ref_policy) + rewards / np.asarray(beta)[:, None]
  return scipy.special.softmax(logits, axis=-1)


def misfit(rewards, preferences):
  """``max |P(y > y') - sigmoid(r_y - r_y')|`` per context, ``[X]``: zero
  exactly when the preferences are Bradley-Terry with these rewards."""
  preferences = _as_contexts(preferences, 3)
  return np.max(np.abs(preferences - bradley_terry_preferences(rewards)),
                axis=(1, 2))
