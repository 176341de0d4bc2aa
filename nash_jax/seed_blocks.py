"""The default seed block: how many seeds one ``vmap`` runs together.

The trainer (:mod:`nash_jax.train`) runs seeds in blocks of a fixed size
``seed_block``: one compiled call ``vmap``s over a block and maps over the
blocks, and seed ``s`` always sits in lane ``s mod seed_block``. Seed ``i``
of a sweep is therefore bit-identical to its single run *with the same
block*, whatever the number of seeds; another block compiles another program
(a matrix product of another width, other fusions) and may change the last
bits. So the default block must not depend on the number of seeds: a single
run has to pick the block of the sweep it belongs to. It depends only on
what the run is (backend, game kind and size, mode), through
:func:`default_seed_block`:

* **A shared game** (every seed plays one game: ``--game_seed`` or
  ``--game=file``), exact mode, on a CPU: :data:`CPU_SHARED_BLOCK` (16).
  Within a block the win rates of all its seeds are one ``[n, n] x [n, 16]``
  matrix product per context instead of 16 matrix-vector products, so the
  preferences are read once per 16 seeds (at n >= 1000 with 16 or more
  seeds, 32% to 83% of the machine's matrix-multiply rate was reached in
  two runs; BENCHMARKS.md).
* **Per-seed games** (each seed draws its own game, the default), exact
  mode, on a CPU: :data:`CPU_SMALL_PER_SEED_BLOCK` (16) for games of at
  most :data:`CPU_SMALL_PER_SEED_MAX_CELLS` = 64^2 preferences
  (``X n^2 <= 4096``: ``n <= 64`` with one context), else ``1``. Above
  it, every seed reads its own preferences: a step is a matrix-vector
  product per seed, bound by memory bandwidth, which a wider ``vmap`` does
  not make cheaper (on XLA:CPU a batched matrix-vector product is slower per
  seed than one alone at ``n >= 1000``; at n = 100 and 300 the best blocks,
  2 to 16, gained 1.2x to 1.75x for sweeps and cost lone runs 1.7x to 26x).
  At small ``n`` a step is a few microseconds of per-iteration overhead,
  which a block shares: blocks of 16 ran sweeps of 16 and 256 seeds 1.5x to
  5.3x faster than blocks of 1 at n = 10 to 50 (a block of 1 fell to 0.35x
  of NumPy for 256 seeds at n = 10 in float64), while a lone run costs 3.3x
  to 11x more per step, a few microseconds (BENCHMARKS.md). The bound is on
  ``X n^2``, the work of a step, rather than on ``n``: a run pads its block
  with copies of its games (at least two blocks per device,
  :func:`nash_jax.train.seed_layout`), and a lone run with thousands of
  contexts must not hold 32 copies.
* **Sampled mode** on a CPU: ``1`` (one seed's sampled step is small; blocks
  of 1 were fastest in BENCHMARKS.md, "The sampled step").
* **GPU and TPU**: :data:`ACCELERATOR_BLOCK` (256) for every tabular run,
  so that one block fills the device (BENCHMARKS.md, "On one NVIDIA H200":
  the best block for 256 seeds; 1.5x to 4x slower than 1 or 16 for runs of
  1 or 16 seeds).
* **Language models** (a transformer policy), on every backend: ``1``. One
  seed's step already fills the device with its batch, and a block
  multiplies every activation and the vmapped parameters and optimizer
  state by its width: on an H200 the accelerator block of 256 asked XLA for
  125 GiB for the evaluation of one seed of a 0.6B-parameter model.

The price of a block is paid by runs with fewer seeds than the block: a
single run computes a whole block (its seed and padding copies of it), so
on a CPU a single run with a default block of 16 costs what 16 seeds cost
in a sweep's block: 1.8x to 8.7x the time of a block of 1 (microseconds per
step at small ``n``). No block is best for both a single run and a large
sweep: in BENCHMARKS.md every block is measured for 1, 16 and 256 seeds, and
the smallest worst slowdown any one block has over those rows is 1.5x to
6.8x for shared games and for per-seed games at ``n <= 100``. The default
favours sweeps, which is what the trainer is for, and among them 16-seed
sweeps (a block of 64 would run them below NumPy at ``n = 1000``).
``python -m experiments.benchmark`` measures every block for every row on
the machine it runs on and writes each block's worst slowdown.
"""

from __future__ import annotations

PLATFORMS = ('cpu', 'gpu', 'tpu')
MODES = ('exact', 'sampled')

# Measured on 2 CPU cores (BENCHMARKS.md).
CPU_SHARED_BLOCK = 16
CPU_SMALL_PER_SEED_BLOCK = 16
CPU_SMALL_PER_SEED_MAX_CELLS = 64 ** 2
# Not measured here: a block wide enough to fill an accelerator.
ACCELERATOR_BLOCK = 256


def default_seed_block(platform: str, shared_game: bool,
                       num_actions: int | None = None,
                       mode: str = 'exact',
                       language_model: bool = False,
                       num_contexts: int = 1) -> int:
  """The default ``seed_block`` of a run (see the module docstring).

  Args:
    platform: the JAX backend the seeds run on, ``'cpu'``, ``'gpu'`` or
      ``'tpu'`` (``jax.devices()[0].platform``; ``'cuda'`` and ``'rocm'``
      count as ``'gpu'``).
    shared_game: whether every seed plays the same game.
    num_actions: responses per context ``n``, >= 1 where given (None where
      it is not known, as for a language model; per-seed games then count
      as large).
    mode: ``'exact'`` or ``'sampled'``.
    language_model: the policy is a transformer (1 on every backend).
    num_contexts: contexts ``X`` of each game (>= 1).

  Returns:
    The block, a positive int; never a function of the number of seeds.

  Raises:
    ValueError: an unknown platform or mode, or ``num_actions < 1``.
  """
  platform = {'cuda': 'gpu', 'rocm': 'gpu'}.get(platform, platform)
  if platform not in PLATFORMS:
    raise ValueError(f'unknown platform {platform!r}; expected one of '
                     f'{", ".join(PLATFORMS)}')
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; expected one of '
                     f'{", ".join(MODES)}')
  if num_actions is not None and num_actions < 1:
    raise ValueError(f'num_actions must be >= 1, got {num_actions}')
  if num_contexts < 1:
    raise ValueError(f'num_contexts must be >= 1, got {num_contexts}')
  if language_model:
    return 1
  if platform != 'cpu':
    return ACCELERATOR_BLOCK
  if mode != 'exact':
    return 1
  if shared_game:
    return CPU_SHARED_BLOCK
  if (num_actions is not None and
      num_contexts * num_actions ** 2 <= CPU_SMALL_PER_SEED_MAX_CELLS):
    return CPU_SMALL_PER_SEED_BLOCK
  return 1
