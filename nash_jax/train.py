"""The trainer: compiled chunks of steps, vmapped over seeds.

``make_chunk_runner`` returns one jitted function that advances every seed by
``chunk_steps`` steps (``lax.scan`` inside ``jit(vmap(...))``, as in PureJaxRL)
and calls the ``evaluate`` function it was handed at the chunk's end, so only
evaluation points ever leave the device. The trainer knows nothing of games,
equilibria or tokens: an algorithm (``init``/``step`` on the environment's
data) and ``evaluate`` come in, metrics rows go out. A Python loop between chunks logs progress (Stoix).

Devices. The padded seed axis is sharded over a 1-D ``('seeds',)`` device
mesh (``shard_map`` inside ``jit``; no ``pmap``), each device mapping over its
own blocks, so the same code runs on one CPU, on N fake CPU devices, on a GPU
or on a TPU slice, and a seed's result does not depend on the device count.

Data parallel. A run with one seed and a large per-step batch (a language
model) would leave all but one device idle. With a 2-D mesh ``('seeds',
'data')`` (:func:`seed_mesh` with ``data_parallel > 1``), ``shard_map`` is
manual over ``'seeds'`` only (``axis_names={'seeds'}``) and automatic over
``'data'``: the runs' arguments (params, optimizer state, anchors) are
replicated over ``'data'``, and the sampled algorithms constrain their
per-step batch (contexts, generated responses, outcomes, reference
log-probabilities; :func:`nash_jax.algorithms.base.shard_batch`) to
``P('data')``, so XLA partitions generation, scoring and the loss over the
batch and all-reduces the gradient. The algorithm code is the same; with
one ``'data'`` device (the default) the constraint is not emitted and the
program is the one without data parallelism. Random numbers are
partitionable threefry (the default), so every device draws the bits the
whole batch would; only the order of the all-reduced sums changes, and
with it the last bits of the results (``tests/test_lm_parallel.py``
measures it).

Model parallel. A model too large for one device splits its parameters
over a third mesh axis, ``('seeds', 'data', 'model')`` (:func:`seed_mesh`
with ``model_parallel > 1``). ``shard_map`` stays manual over ``'seeds'``
only; each step's state is constrained, parameters-shaped subtree by
subtree (parameters, adam's moments, anchors), to the partition specs
that the policy's logical axis names give under
:data:`nash_jax.sharding.RULES` (Megatron style: heads, MLP width and
vocabulary over ``'model'``; :func:`nash_jax.sharding.constrain`), and the
initial or resumed state is placed so (``jax.device_put`` with
:func:`nash_jax.sharding.state_shardings`; the compiled chunks return it
so placed); XLA partitions the matmuls and inserts the collectives.
Policies without logical names (tabular, log-linear, MLP) stay replicated.
The algorithm code is the same; without a ``'model'`` axis nothing is
emitted. As with ``'data'``, only the order of sums changes
(``tests/test_lm_model_parallel.py`` measures it).

Seed blocks. XLA compiles a vmapped program differently for different batch
sizes (fusion, vector tails, FMA contraction), and even a lane's position in
the batch can change the last bit of a reduction; so seed ``i`` of an 8-seed
``vmap`` can differ in the last bits from the same seed run alone. To keep the
promise that a sweep's seed equals its single run bit for bit, seeds run in
blocks of a fixed size ``seed_block``: the compiled call ``vmap``s over one
block and ``lax.map``s over blocks, and seed ``s`` always sits in lane
``s mod seed_block`` (unused lanes are padded with a copy of a real seed and
discarded). Every seed thus runs in the same program, in the same lane,
whatever ``num_seeds`` and ``seed`` are (tests/test_train.py pins this).
The axis always holds at least two blocks per device (XLA compiles an axis
of one block differently), but only the blocks that hold a real seed are
computed (:func:`blocks_to_run`): a single run costs one block. The
trainer takes ``seed_block`` as given; the experiment binaries' default is
:func:`nash_jax.seed_blocks.default_seed_block` (from the backend, the game
kind, the mode and ``n``, never from the number of seeds).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import sharding as sharding_lib
from nash_jax.algorithms.base import DATA_AXIS, Algorithm


def info_template(algorithm: Algorithm, state, env_params):
  """Zeros shaped like the ``info`` dict that ``algorithm.step`` returns."""
  _, info = jax.eval_shape(algorithm.step, state, env_params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), info)


def evaluate_state(evaluate: Callable, hyper, state, env_params, eval_data,
                   info) -> dict:
  """Metrics row of one run: counters, ``evaluate``'s metrics and the last
  step's info."""
  row = {'step': state.step, 'preference_queries': state.preference_queries}
  row.update(evaluate(hyper, state, env_params, eval_data))
  row.update(info)
  return row


def constrain_state(algorithm: Algorithm, state):
  """``state`` with its parameters-shaped parts constrained to the policy's
  shardings on the mesh in context (:func:`nash_jax.sharding.constrain`; a
  no-op without a ``'model'`` axis)."""
  return sharding_lib.constrain(state, logical_axes_of(algorithm))


def logical_axes_of(algorithm: Algorithm):
  """The logical axis names of the algorithm's policy's parameters
  (``Policy.logical_axes``), or ``None`` (replicated)."""
  axes = algorithm.policy.logical_axes
  return None if axes is None else axes()


def run_chunk(algorithm: Algorithm, evaluate: Callable, hyper,
              chunk_steps: int, state, env_params, eval_data):
  """``chunk_steps`` steps of one run, then its metrics row."""
  info0 = info_template(algorithm, state, env_params)

  def body(carry, _):
    state, _ = carry
    state, info = algorithm.step(constrain_state(algorithm, state),
                                 env_params)
    return (constrain_state(algorithm, state), info), None

  (state, info), _ = jax.lax.scan(body, (state, info0), None,
                                  length=chunk_steps)
  return state, evaluate_state(evaluate, hyper, state, env_params, eval_data,
                               info)


def _map_blocks(fn: Callable, args, num_blocks, seed_block: int):
  """``lax.map`` of ``fn`` over blocks of ``seed_block`` rows of ``args``
  (each with a leading axis of whole blocks), with a trip count XLA cannot
  see.

  XLA removes a while loop whose static trip count is 1, and simplifies a
  slice of an axis of length 1, either of which changes the fusion of the
  body. Reading the trip count from a runtime argument, fencing the body with
  optimization barriers and always mapping over at least two blocks (see
  :func:`seed_layout`) keeps one compiled body for every number of blocks.
  Blocks are sliced from the arguments as they are (no reshape into
  ``[blocks, seed_block, ...]``, whose layout XLA copies every call: for
  per-seed games a copy of every game per chunk).
  """
  first = jax.tree.map(lambda x: x[:seed_block], args)
  out_shape = jax.eval_shape(fn, first)
  size = jax.tree.leaves(args)[0].shape[0]
  out = jax.tree.map(lambda s: jnp.zeros((size,) + s.shape[1:], s.dtype),
                     out_shape)

  def body(i, out):
    start = i * seed_block
    block = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(
        x, start, seed_block), args)
    result = jax.lax.optimization_barrier(
        fn(jax.lax.optimization_barrier(block)))
    return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(
        o, r, start, 0), out, result)
  return jax.lax.fori_loop(0, num_blocks, body, out)


def seed_mesh(num_devices: int | None = None, data_parallel: int = 1,
              model_parallel: int = 1) -> jax.sharding.Mesh:
  """The device mesh of a run, over the first ``num_devices`` devices (all
  by default; across every host after ``jax.distributed.initialize``, in
  ``jax.devices()`` order, so that a ``'data'`` group is ``data_parallel``
  consecutive devices, on one host when it has that many, and a ``'model'``
  group ``model_parallel`` consecutive devices).

  ``data_parallel = model_parallel = 1``: a 1-D mesh ``('seeds',)``.
  ``model_parallel = 1``: a 2-D mesh ``('seeds', 'data')`` of shape
  ``[num_devices / data_parallel, data_parallel]``: the seed axis is split
  over ``'seeds'`` as before, and each run's per-step batch over ``'data'``
  (module docstring). ``model_parallel > 1``: a 3-D mesh ``('seeds',
  'data', 'model')`` of shape ``[num_devices / (data_parallel *
  model_parallel), data_parallel, model_parallel]``, each run's parameters
  split over ``'model'`` as well.

  Raises:
    ValueError: a factor below 1, or ``data_parallel * model_parallel``
      does not divide the number of devices.
  """
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  if data_parallel == 1 and model_parallel == 1:
    return jax.sharding.Mesh(np.array(devices), ('seeds',))
  group = data_parallel * model_parallel
  if data_parallel < 1 or model_parallel < 1 or len(devices) % group:
    raise ValueError(f'data_parallel={data_parallel} x model_parallel='
                     f'{model_parallel} does not divide the {len(devices)} '
                     'devices')
  if model_parallel == 1:
    return jax.sharding.Mesh(
        np.array(devices).reshape(-1, data_parallel), ('seeds', DATA_AXIS))
  return jax.sharding.Mesh(
      np.array(devices).reshape(-1, data_parallel, model_parallel),
      ('seeds', DATA_AXIS, sharding_lib.MODEL_AXIS))


def seed_devices(mesh: jax.sharding.Mesh) -> int:
  """The number of devices the seed axis is split over (``'seeds'``)."""
  return mesh.shape['seeds']


def blocked_vmap(fn: Callable, seed_block: int, shared: tuple[bool, ...],
                 mesh: jax.sharding.Mesh):
  """``vmap(fn)`` over a leading seed axis, in blocks, sharded over devices.

  Args:
    fn: a per-seed function of positional arguments.
    seed_block: seeds per ``vmap``.
    shared: per argument, True when it has no seed axis (replicated).
    mesh: a ``('seeds',)``, ``('seeds', 'data')`` or ``('seeds', 'data',
      'model')`` mesh (:func:`seed_mesh`); the seed axis is split evenly
      over ``'seeds'`` and each device maps over its own blocks. ``fn`` is
      manual over ``'seeds'`` only: over ``'data'`` and ``'model'`` XLA
      partitions it (automatic sharding, from the ``'data'`` constraints
      that :func:`nash_jax.algorithms.base.shard_batch` puts on the batch
      and the ``'model'`` ones of :func:`constrain_state` on the state).

  Returns:
    A function ``run(num_blocks, *args)`` (seed axis first on the unshared
    arguments, whose length is ``devices * num_blocks * seed_block``;
    ``num_blocks``, the blocks per device, a traced int32); see the module
    docstring.
  """
  in_axes = tuple(None if s else 0 for s in shared)
  seeds = jax.sharding.PartitionSpec('seeds')
  replicated = jax.sharding.PartitionSpec()

  def local(num_blocks, *args):
    mapped = [a for a, s in zip(args, shared) if not s]

    def one_block(block_args):
      it = iter(block_args)
      full = [a if s else next(it) for a, s in zip(args, shared)]
      return jax.vmap(fn, in_axes=in_axes)(*full)

    return _map_blocks(one_block, mapped, num_blocks, seed_block)

  specs = (replicated,) + tuple(replicated if s else seeds for s in shared)
  # Manual over 'seeds' only; any other mesh axis ('data', 'model') stays
  # automatic.
  # A 1-D mesh keeps the fully manual call it always had.
  manual = {} if mesh.axis_names == ('seeds',) else {
      'axis_names': frozenset({'seeds'})}
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=seeds,
                       check_vma=False, **manual)


def sharing(shared) -> tuple[bool, bool]:
  """``(env_params shared, eval_data shared)`` from a bool (both) or a
  pair."""
  if isinstance(shared, (tuple, list)):
    env, data = shared
    return bool(env), bool(data)
  return bool(shared), bool(shared)


@functools.lru_cache(maxsize=64)
def make_chunk_runner(make: Callable, evaluate: Callable, chunk_steps: int,
                      shared, seed_block: int,
                      mesh: jax.sharding.Mesh) -> Callable:
  """The jitted, seed-blocked :func:`run_chunk`; the environment data and
  the evaluation data are each shared by every run or per run (``shared``:
  a bool for both, or a pair, see :func:`train`).

  ``make(hyper) -> Algorithm`` builds each run's algorithm from its
  hyperparameters (traced scalars). Cached, so that repeated runs with the
  same ``make`` and ``evaluate`` reuse the compiled function.
  """
  def fn(hyper, state, env_params, eval_data):
    return run_chunk(make(hyper), evaluate, hyper, chunk_steps, state,
                     env_params, eval_data)
  return jax.jit(blocked_vmap(fn, seed_block, (False, False) + sharing(
      shared), mesh))


@functools.lru_cache(maxsize=64)
def make_initializer(make: Callable, evaluate: Callable, shared,
                     seed_block: int, mesh: jax.sharding.Mesh):
  """The jitted, seed-blocked ``init`` with the step-0 metrics row."""
  def init(hyper, key, env_params, eval_data):
    algorithm = make(hyper)
    state = constrain_state(algorithm, algorithm.init(key, env_params))
    info0 = info_template(algorithm, state, env_params)
    return state, evaluate_state(evaluate, hyper, state, env_params,
                                 eval_data, info0)
  return jax.jit(blocked_vmap(init, seed_block,
                              (False, False) + sharing(shared), mesh))


def _block_counts(first_seed: int, num_seeds: int, seed_block: int,
                  num_devices: int, group_size: int | None):
  """``(groups, seeds per group, offset, blocks per group, blocks, blocks
  per device)`` of the layout of :func:`seed_layout`."""
  size = num_seeds if group_size is None else group_size
  if size < 1 or num_seeds % size:
    raise ValueError(f'{num_seeds} runs are not whole groups of {size}')
  groups = num_seeds // size
  offset = first_seed % seed_block
  group_blocks = -(-(offset + size) // seed_block)
  blocks = groups * group_blocks
  per_device = max(2, -(-blocks // num_devices))
  return groups, size, offset, group_blocks, blocks, per_device


def seed_layout(first_seed: int, num_seeds: int, seed_block: int,
                num_devices: int = 1, group_size: int | None = None):
  """Where each seed runs: ``(gather, positions)``.

  The padded seed axis holds ``num_devices`` equal shares of whole blocks;
  position ``p`` holds seed ``base + p`` with
  ``base = first_seed - first_seed mod seed_block``, so seed ``s`` is in lane
  ``s mod seed_block``. ``gather[p]`` is the index (into the ``num_seeds``
  real seeds) whose data fills position ``p`` (padding copies seed 0);
  ``positions[i]`` is where real seed ``i`` sits. Every device gets at least
  two blocks, because XLA compiles a map over an axis of one block
  differently; padding blocks are not computed (:func:`blocks_to_run`).

  With ``group_size``, the runs are groups of ``group_size`` runs each of
  seeds ``first_seed, first_seed + 1, ...`` (the cells of a hyperparameter
  sweep): every group starts on a block of its own, so that each seed sits
  in lane ``s mod seed_block`` in every group, as in its single run
  (padding copies a run of the group).
  """
  groups, size, offset, group_blocks, _, per_device = _block_counts(
      first_seed, num_seeds, seed_block, num_devices, group_size)
  padded = per_device * num_devices * seed_block
  span = group_blocks * seed_block
  p = np.arange(padded)
  group = np.minimum(p // span, groups - 1)
  gather = group * size + np.clip(p - group * span - offset, 0, size - 1)
  positions = (np.arange(num_seeds) // size * span + offset +
               np.arange(num_seeds) % size)
  return gather, positions


def blocks_to_run(first_seed: int, num_seeds: int, seed_block: int,
                  num_devices: int = 1, group_size: int | None = None) -> int:
  """Blocks each device computes: those of the :func:`seed_layout` that
  hold a real seed (on the device with the most of them), not the padding
  blocks after them. The trip count of the map over blocks is a runtime
  value, so skipping those blocks runs the same compiled program (every
  real seed's bits unchanged) and a single run, or a sweep of exactly one
  block, computes one block instead of two."""
  *_, blocks, per_device = _block_counts(first_seed, num_seeds, seed_block,
                                         num_devices, group_size)
  return min(blocks, per_device)


def to_devices(array: np.ndarray, sharding) -> jax.Array:
  """A global array from a host array that every process holds in full
  (works across hosts, unlike ``device_put`` of a NumPy array)."""
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])


def to_host(tree):
  """Fetches a (possibly multi-host sharded) pytree as NumPy arrays."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def train(make: Callable, evaluate: Callable, keys, env_params, eval_data, *,
          hyper: dict, num_steps: int, eval_every: int, shared: bool,
          first_seed: int = 0, seed_block: int = 1,
          group_size: int | None = None,
          mesh: jax.sharding.Mesh | None = None,
          on_eval: Callable[[dict], None] | None = None,
          until: Callable[[dict], bool] | None = None,
          resume: tuple | None = None,
          on_chunk: Callable | None = None):
  """Runs every seed for ``num_steps`` steps, evaluating every ``eval_every``.

  Args:
    make: ``make(hyper) -> Algorithm``, a run's algorithm from its
      hyperparameters (traced scalars: runs with different step sizes,
      ``beta`` or ``eta`` share one compiled call, a sweep). Its ``init`` and
      ``step`` receive ``env_params``.
    evaluate: ``evaluate(hyper, state, env_params, eval_data) -> dict`` of
      scalar metrics of one run (the trainer knows nothing else of what it
      trains; see :mod:`nash_jax.evaluation`).
    keys: ``[S]`` PRNG keys, one per seed (or run).
    env_params: the environment's data (a pytree), shared by every run
      or with a leading ``[S]`` axis (see ``shared``).
    eval_data: what ``evaluate`` reads besides the state (e.g. the exact
      equilibrium), shared or per run (see ``shared``).
    hyper: per-run hyperparameters, a dict of ``[S]`` arrays.
    num_steps: steps per seed.
    eval_every: steps between evaluations (the last chunk may be shorter).
    shared: whether ``env_params`` and ``eval_data`` are shared by all runs;
      or a pair ``(env_params shared, eval_data shared)`` (a hyperparameter
      sweep on one game: the game shared, each cell's equilibrium per run).
    first_seed: the seed number of ``keys[0]`` (seeds are consecutive); it
      fixes each seed's lane.
    seed_block: seeds per vmapped block (see the module docstring); results
      are bit-identical across seed counts for a fixed ``seed_block``.
    group_size: the runs are groups of this many consecutive seeds from
      ``first_seed`` (the cells of a sweep; default: one group), each laid
      out from a block of its own so that every seed keeps its lane
      (:func:`seed_layout`): a cell's seed is bit-identical to its single
      run with the same ``seed_block`` and sharing.
    mesh: the device mesh (default: all devices, ``('seeds',)``); results
      do not depend on the number of devices along ``'seeds'``. With a
      ``'data'`` axis (:func:`seed_mesh`'s ``data_parallel``) each run's
      batch is split over it and its gradients are all-reduced, which
      changes the last bits (the order of the sums), not the algorithm.
      With a ``'model'`` axis (``model_parallel``) the parameters, their
      optimizer state and anchors are split over it as the policy's logical
      axis names say (:mod:`nash_jax.sharding`; module docstring).
    on_eval: called with each host-side metrics row dict (arrays ``[S]``).
    until: optional stopping rule, called with each row; the run ends after
      the first evaluation where it returns True (e.g. a query budget).
    resume: ``(state, rows, done)`` as handed to ``on_chunk``: continue a run
      from a checkpoint instead of initializing (bit-identical to never
      having stopped; the device count may differ).
    on_chunk: called after each chunk as ``on_chunk(get_state, rows, done)``
      where ``get_state()`` fetches the host copy of the real seeds' state
      (only when called, e.g. to write a checkpoint).

  Returns:
    ``(final_state, rows)``: the final batched state and the list of
    evaluation rows (step 0 first), each a dict of ``[S]`` NumPy arrays.
  """
  mesh = mesh or seed_mesh()
  num_devices = seed_devices(mesh)
  num_runs = keys.shape[0]
  gather, positions = seed_layout(first_seed, num_runs, seed_block,
                                  num_devices, group_size)
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      'seeds'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  pad = lambda tree: jax.tree.map(
      lambda x: to_devices(np.asarray(x)[gather], sharded), tree)
  # Model parallel: where each leaf of a (padded) state lives, its
  # parameters-shaped parts split over 'model' (module docstring).
  place = None
  if sharding_lib.splits(mesh):
    axes = logical_axes_of(make({k: np.asarray(v)[0]
                                 for k, v in hyper.items()}))
    place = lambda tree: sharding_lib.state_shardings(tree, axes, mesh,
                                                      leading=('seeds',))
  unpad = lambda tree: jax.tree.map(lambda x: np.asarray(x)[positions],
                                    to_host(tree))
  hyper = pad(hyper)
  keys = pad(keys)
  shared = sharing(shared)
  env_params, eval_data = (
      jax.tree.map(lambda x: to_devices(np.asarray(x), replicated), tree)
      if is_shared else pad(tree)
      for tree, is_shared in zip((env_params, eval_data), shared))
  num_blocks = jnp.int32(blocks_to_run(first_seed, num_runs, seed_block,
                                       num_devices, group_size))
  if resume is None:
    init = make_initializer(make, evaluate, shared, seed_block, mesh)
    state, row = init(num_blocks, hyper, keys, env_params, eval_data)
    if place is not None:
      state = jax.device_put(state, place(state))
    rows = [unpad(row)]
    done = 0
    if on_eval:
      on_eval(rows[-1])
  else:
    host_state, rows, done = resume
    rows = list(rows)
    if place is None:
      state = pad(host_state)
    else:
      state = jax.tree.map(
          lambda x, where: to_devices(np.asarray(x)[gather], where),
          host_state, place(host_state))
    if until is not None and until(rows[-1]):
      done = num_steps  # The resumed run had already stopped.
  while done < num_steps:
    # Evaluations stay on multiples of eval_every, also after a resume from
    # the end of a shorter run.
    chunk = min(eval_every - done % eval_every, num_steps - done)
    runner = make_chunk_runner(make, evaluate, chunk, shared, seed_block,
                               mesh)
    state, row = runner(num_blocks, hyper, state, env_params, eval_data)
    rows.append(unpad(row))
    done += chunk
    if on_eval:
      on_eval(rows[-1])
    if on_chunk:
      on_chunk(lambda: unpad(state), rows, done)
    if until is not None and until(rows[-1]):
      break
  return unpad(state), rows
