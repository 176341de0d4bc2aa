"""Loading a user's own preference game from a file, with validation.

Accepted formats:

* ``.npy``: preferences only, ``[n, n]`` (one context) or ``[X, n, n]``.
* ``.npz``: ``preferences`` (as above), optional ``ref_policy`` (``[n]`` or
  ``[X, n]``), ``context_weights`` (``[X]``), and for parametrized policies
  ``features`` (``[X, n, d]``, response features ``phi(x, y)``) with optional
  ``context_features`` (``[X, d]``; zeros if absent).

``ref_policy`` and ``context_weights`` must sum to 1 within 1e-6, or within
the rounding of their stored type (float32: ``n * 2^-23``); those stored in
a lower precision than float64 are renormalized in float64.

Every check raises :class:`GameFileError` with one line naming the file and what
is wrong, before any work starts.
"""

from __future__ import annotations

import os

import numpy as np

from nash_jax.games.core import Game, make_game

ANTISYMMETRY_TOLERANCE = 1e-6
SUM_TOLERANCE = 1e-6


class GameFileError(ValueError):
  """A game file that cannot be used, with a one-line reason."""


def _fail(path, message):
  raise GameFileError(f'game file {path}: {message}')


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  if len(text) > 200:
    text = text[:200] + '...'
  return f'{type(error).__name__}: {text}'


def _check_finite_in_unit(path, name, array):
  if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
    _fail(path, f'{name} must be real numbers, got dtype {array.dtype}')
  if not np.all(np.isfinite(array)):
    _fail(path, f'{name} holds NaN or infinite values')
  if np.any(array < 0) or np.any(array > 1):
    _fail(path, f'{name} has values outside [0, 1] '
          f'(min {array.min():.6g}, max {array.max():.6g})')


def validate_preferences(path, preferences: np.ndarray) -> np.ndarray:
  """Checks shape, range and ``P + P^T = 1``; returns ``[X, n, n]`` float64."""
  if preferences.ndim not in (2, 3):
    _fail(path, f'preferences must have shape [n, n] or [X, n, n], got '
          f'{list(preferences.shape)}')
  if preferences.shape[-1] != preferences.shape[-2]:
    _fail(path, f'preferences must be square in the last two axes, got '
          f'{list(preferences.shape)}')
  if preferences.shape[-1] < 2:
    _fail(path, 'preferences need at least 2 responses')
  if preferences.ndim == 3 and preferences.shape[0] < 1:
    _fail(path, 'preferences have no contexts')
  _check_finite_in_unit(path, 'preferences', preferences)
  preferences = preferences.astype(np.float64)
  if preferences.ndim == 2:
    preferences = preferences[None]
  violation = np.max(np.abs(preferences + np.swapaxes(preferences, -1, -2) - 1))
  if violation > ANTISYMMETRY_TOLERANCE:
    _fail(path, f'preferences break P + P^T = 1 by {violation:.3g} '
          f'(tolerance {ANTISYMMETRY_TOLERANCE:g})')
  return preferences


def _validate_distribution(path, name, array, shape):
  if (not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) or
      not np.all(np.isfinite(array))):
    _fail(path, f'{name} must hold finite real numbers')
  if list(array.shape) != list(shape):
    _fail(path, f'{name} must have shape {list(shape)}, got '
          f'{list(array.shape)}')
  if np.any(array <= 0):
    _fail(path, f'{name} must be strictly positive')
  sums = np.sum(array.astype(np.float64), axis=-1)
  off = np.max(np.abs(sums - 1))
  if off > sum_tolerance(array.dtype, array.shape[-1]):
    _fail(path, f'{name} must sum to 1 (off by {off:.3g})')
  if array.dtype == np.float64:
    return array
  # Stored in a lower precision: summing to 1 within its rounding; make it
  # a distribution in float64.
  array = array.astype(np.float64)
  return array / np.sum(array, axis=-1, keepdims=True)


def sum_tolerance(dtype, n: int) -> float:
  """How far from 1 a stored distribution over ``n`` entries may sum:
  :data:`SUM_TOLERANCE`, or the rounding of ``n`` values of a coarser
  floating type (float32: ``n * 2^-23``, 2.4e-6 for n = 20)."""
  if not np.issubdtype(dtype, np.floating):
    return SUM_TOLERANCE
  return max(SUM_TOLERANCE, n * float(np.finfo(dtype).eps))


NPZ_ARRAYS = ('preferences', 'ref_policy', 'context_weights', 'features',
              'context_features')


def _validate_real(path, name, array, ndim):
  if (not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) or
      not np.all(np.isfinite(array))):
    _fail(path, f'{name} must hold finite real numbers')
  if array.ndim != ndim or array.shape[-1] < 1:
    _fail(path, f'{name} must have {ndim} axes with d >= 1, got shape '
          f'{list(array.shape)}')
  return array.astype(np.float64)


def load_game(path: str, dtype=None) -> Game:
  """Reads and validates a game file; see the module docstring for formats."""
  if not os.path.exists(path):
    _fail(path, 'does not exist')
  if os.path.isdir(path):
    _fail(path, 'is a directory, expected a .npy or .npz file')
  try:
    loaded = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001 - any reader failure is the file's.
    _fail(path, f'cannot be read as .npy or .npz ({_one_line(e)})')
  ref_policy = context_weights = features = context_features = None
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      keys = set(loaded.files)
      unknown = keys - set(NPZ_ARRAYS)
      if 'preferences' not in keys:
        _fail(path, f'.npz has no "preferences" array (has {sorted(keys)})')
      if unknown:
        _fail(path, f'.npz has unknown arrays {sorted(unknown)}; expected '
              f'{", ".join(NPZ_ARRAYS)}')
      try:
        preferences = loaded['preferences']
        get = lambda name: loaded[name] if name in keys else None
        ref_policy = get('ref_policy')
        context_weights = get('context_weights')
        features = get('features')
        context_features = get('context_features')
      except Exception as e:  # noqa: BLE001 - any reader failure is the file's.
        _fail(path, f'cannot be read ({_one_line(e)})')
  else:
    preferences = loaded
  preferences = validate_preferences(path, np.asarray(preferences))
  num_contexts, num_actions = preferences.shape[0], preferences.shape[-1]
  if ref_policy is not None:
    ref_policy = np.asarray(ref_policy)
    shape = ([num_actions] if ref_policy.ndim == 1 else
             [num_contexts, num_actions])
    ref_policy = _validate_distribution(path, 'ref_policy', ref_policy, shape)
  if context_weights is not None:
    context_weights = _validate_distribution(
        path, 'context_weights', np.asarray(context_weights), [num_contexts])
  if context_features is not None and features is None:
    _fail(path, 'context_features given without features')
  if features is not None:
    features = _validate_real(path, 'features', np.asarray(features), 3)
    if list(features.shape[:2]) != [num_contexts, num_actions]:
      _fail(path, f'features must have shape [{num_contexts}, {num_actions}, '
            f'd], got {list(features.shape)}')
    if context_features is None:
      context_features = np.zeros((num_contexts, features.shape[-1]))
    context_features = _validate_real(path, 'context_features',
                                      np.asarray(context_features), 2)
    if context_features.shape[0] != num_contexts:
      _fail(path, f'context_features must have shape [{num_contexts}, d], got'
            f' {list(context_features.shape)}')
  return make_game(preferences, ref_policy=ref_policy,
                   context_weights=context_weights, dtype=dtype,
                   features=features, context_features=context_features)
