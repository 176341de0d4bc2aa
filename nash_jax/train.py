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
``seed_block = 1`` (the default) wastes little on padding and on 2 CPU cores
runs at 0.76x to 1.12x of a full ``vmap`` except for tiny games with many
seeds (0.34x at n = 10, 256 seeds; BENCHMARKS.md); on a GPU or TPU use a
large block (e.g. 256) so that the device is filled.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.algorithms.base import Algorithm


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


def run_chunk(algorithm: Algorithm, evaluate: Callable, hyper,
              chunk_steps: int, state, env_params, eval_data):
  """``chunk_steps`` steps of one run, then its metrics row."""
  info0 = info_template(algorithm, state, env_params)

  def body(carry, _):
    state, _ = carry
    return algorithm.step(state, env_params), None

  (state, info), _ = jax.lax.scan(body, (state, info0), None,
                                  length=chunk_steps)
  return state, evaluate_state(evaluate, hyper, state, env_params, eval_data,
                               info)


def _map_blocks(fn: Callable, blocks, num_blocks):
  """``lax.map(fn, blocks)`` with a trip count XLA cannot see.

  XLA removes a while loop whose static trip count is 1, and simplifies a
  slice of an axis of length 1, either of which changes the fusion of the
  body. Reading the trip count from a runtime argument, fencing the body with
  optimization barriers and always mapping over at least two blocks (see
  :func:`seed_layout`) keeps one compiled body for every number of blocks.
  """
  first = jax.tree.map(lambda x: x[0], blocks)
  out_shape = jax.eval_shape(fn, first)
  size = jax.tree.leaves(blocks)[0].shape[0]
  out = jax.tree.map(lambda s: jnp.zeros((size,) + s.shape, s.dtype),
                     out_shape)

  def body(i, out):
    block = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(
        x, i, keepdims=False), blocks)
    result = jax.lax.optimization_barrier(
        fn(jax.lax.optimization_barrier(block)))
    return jax.tree.map(lambda o, r: jax.lax.dynamic_update_index_in_dim(
        o, r, i, 0), out, result)
  return jax.lax.fori_loop(0, num_blocks, body, out)


def seed_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh ``('seeds',)`` over the first ``num_devices`` devices (all by
  default; across every host after ``jax.distributed.initialize``)."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ('seeds',))


def blocked_vmap(fn: Callable, seed_block: int, shared: tuple[bool, ...],
                 mesh: jax.sharding.Mesh):
  """``vmap(fn)`` over a leading seed axis, in blocks, sharded over devices.

  Args:
    fn: a per-seed function of positional arguments.
    seed_block: seeds per ``vmap``.
    shared: per argument, True when it has no seed axis (replicated).
    mesh: a 1-D ``('seeds',)`` mesh; the seed axis is split evenly over it
      and each device maps over its own blocks.

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
    num = next(jax.tree.leaves(a)[0].shape[0]
               for a, s in zip(args, shared) if not s)
    split = lambda x: x.reshape((num // seed_block, seed_block) + x.shape[1:])
    mapped = [jax.tree.map(split, a) for a, s in zip(args, shared) if not s]

    def one_block(block_args):
      it = iter(block_args)
      full = [a if s else next(it) for a, s in zip(args, shared)]
      return jax.vmap(fn, in_axes=in_axes)(*full)

    out = _map_blocks(one_block, mapped, num_blocks)
    return jax.tree.map(lambda x: x.reshape((num,) + x.shape[2:]), out)

  specs = (replicated,) + tuple(replicated if s else seeds for s in shared)
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=seeds,
                       check_vma=False)


@functools.lru_cache(maxsize=64)
def make_chunk_runner(make: Callable, evaluate: Callable, chunk_steps: int,
                      shared: bool, seed_block: int,
                      mesh: jax.sharding.Mesh) -> Callable:
  """The jitted, seed-blocked :func:`run_chunk`; the environment data are
  shared by every run or per run.

  ``make(hyper) -> Algorithm`` builds each run's algorithm from its
  hyperparameters (traced scalars). Cached, so that repeated runs with the
  same ``make`` and ``evaluate`` reuse the compiled function.
  """
  def fn(hyper, state, env_params, eval_data):
    return run_chunk(make(hyper), evaluate, hyper, chunk_steps, state,
                     env_params, eval_data)
  return jax.jit(blocked_vmap(fn, seed_block, (False, False, shared, shared),
                              mesh))


@functools.lru_cache(maxsize=64)
def make_initializer(make: Callable, evaluate: Callable, shared: bool,
                     seed_block: int, mesh: jax.sharding.Mesh):
  """The jitted, seed-blocked ``init`` with the step-0 metrics row."""
  def init(hyper, key, env_params, eval_data):
    algorithm = make(hyper)
    state = algorithm.init(key, env_params)
    info0 = info_template(algorithm, state, env_params)
    return state, evaluate_state(evaluate, hyper, state, env_params,
                                 eval_data, info0)
  return jax.jit(blocked_vmap(init, seed_block,
                              (False, False, shared, shared), mesh))


def seed_layout(first_seed: int, num_seeds: int, seed_block: int,
                num_devices: int = 1):
  """Where each seed runs: ``(gather, positions)``.

  The padded seed axis holds ``num_devices`` equal shares of whole blocks;
  position ``p`` holds seed ``base + p`` with
  ``base = first_seed - first_seed mod seed_block``, so seed ``s`` is in lane
  ``s mod seed_block``. ``gather[p]`` is the index (into the ``num_seeds``
  real seeds) whose data fills position ``p`` (padding copies seed 0);
  ``positions[i]`` is where real seed ``i`` sits. Every device gets at least
  two blocks (a single run computes one padding block too), because XLA
  compiles a map over one block differently.
  """
  offset = first_seed % seed_block
  blocks = -(-(offset + num_seeds) // seed_block)
  per_device = max(2, -(-blocks // num_devices))
  padded = per_device * num_devices * seed_block
  gather = np.clip(np.arange(padded) - offset, 0, num_seeds - 1)
  gather[:offset] = 0
  positions = np.arange(num_seeds) + offset
  return gather, positions


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
      (``shared``) or with a leading ``[S]`` axis.
    eval_data: what ``evaluate`` reads besides the state (e.g. the exact
      equilibrium), shared or per run like ``env_params``.
    hyper: per-run hyperparameters, a dict of ``[S]`` arrays.
    num_steps: steps per seed.
    eval_every: steps between evaluations (the last chunk may be shorter).
    shared: whether ``env_params`` and ``eval_data`` are shared by all runs.
    first_seed: the seed number of ``keys[0]`` (seeds are consecutive); it
      fixes each seed's lane.
    seed_block: seeds per vmapped block (see the module docstring); results
      are bit-identical across seed counts for a fixed ``seed_block``.
    mesh: the ``('seeds',)`` device mesh (default: all devices); results do
      not depend on the number of devices.
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
  num_devices = mesh.devices.size
  gather, positions = seed_layout(first_seed, keys.shape[0], seed_block,
                                  num_devices)
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      'seeds'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  pad = lambda tree: jax.tree.map(
      lambda x: to_devices(np.asarray(x)[gather], sharded), tree)
  unpad = lambda tree: jax.tree.map(lambda x: np.asarray(x)[positions],
                                    to_host(tree))
  hyper = pad(hyper)
  keys = pad(keys)
  if shared:
    env_params, eval_data = jax.tree.map(
        lambda x: to_devices(np.asarray(x), replicated),
        (env_params, eval_data))
  else:
    env_params, eval_data = pad((env_params, eval_data))
  num_blocks = jnp.int32(len(gather) // (seed_block * num_devices))
  if resume is None:
    init = make_initializer(make, evaluate, shared, seed_block, mesh)
    state, row = init(num_blocks, hyper, keys, env_params, eval_data)
    rows = [unpad(row)]
    done = 0
    if on_eval:
      on_eval(rows[-1])
  else:
    host_state, rows, done = resume
    state, rows = pad(host_state), list(rows)
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
