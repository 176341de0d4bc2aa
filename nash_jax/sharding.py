"""Parameters sharded over a device mesh by logical axis names (model
parallel).

A policy names the dimensions of its parameters with logical names (what a
dimension *is*: ``'vocab'``, ``'embed'``, ``'heads'``, ``'kv_heads'``,
``'head_dim'``, ``'mlp'``, ``'norm'``; :func:`nash_jax.policies.transformer.
logical_axes`); a rules table says which device-mesh axis, if any, splits
each name (the split of Flax's ``logical_axis_rules`` and T5X/MaxText's
partitioning). Names become a ``PartitionSpec`` per parameter
(:func:`spec_of`), and ``NamedSharding``\\ s on a concrete mesh.

The default :data:`RULES` are Megatron-LM's tensor parallelism (Shoeybi et
al. 2019, arXiv 1909.08053) over a ``'model'`` mesh axis: the query, key and
value projections are split by heads and the output projection by its input
heads, SwiGLU's gate and up projections by their output columns (``'mlp'``)
and its down projection by its input rows, the embedding and an untied head
by vocabulary; the residual width, head features and norm scales are
replicated. A block's matmuls then need one all-reduce of the ``[B, T, D]``
activations after attention and one after the MLP (and their transposes in
the backward pass), which XLA inserts from the constraints: nothing here
issues a collective.

The trainer (:mod:`nash_jax.train`) constrains every parameters-shaped part
of a run's state (parameters, optimizer moments, anchors) with
:func:`constrain` inside each step, and places the state with
:func:`state_shardings`; other policies (tabular, log-linear, MLP) have no
logical names and stay replicated. With no ``'model'`` axis in the mesh, or
one of size 1, nothing is emitted: the program is the one without model
parallelism, bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

# The device-mesh axis parameters are split over (model parallelism;
# :func:`nash_jax.train.seed_mesh`).
MODEL_AXIS = 'model'

# Logical axis name -> mesh axis (``None``: replicated). Megatron style: the
# heads, key-value heads, MLP hidden width and vocabulary are split over
# 'model'; a name missing from the rules is an error (a typo would otherwise
# silently replicate a parameter).
RULES: tuple[tuple[str, str | None], ...] = (
    ('vocab', MODEL_AXIS),
    ('embed', None),
    ('heads', MODEL_AXIS),
    ('kv_heads', MODEL_AXIS),
    ('head_dim', None),
    ('mlp', MODEL_AXIS),
    ('norm', None),
)

P = jax.sharding.PartitionSpec


def is_axes(x) -> bool:
  """Whether ``x`` is one parameter's logical axes: a tuple of names (or
  ``None`` for an unnamed, replicated dimension). The ``is_leaf`` of every
  map over a pytree of logical axes (whose tuples would otherwise be
  nodes)."""
  return isinstance(x, tuple) and all(
      a is None or isinstance(a, str) for a in x)


def mesh_rules(mesh, rules: Sequence = RULES) -> tuple:
  """``rules`` with every mesh axis that ``mesh`` (a concrete or abstract
  mesh) lacks, or has with one device, replaced by ``None`` (replicated):
  the rules that split something on this mesh."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes)) if not (
      mesh.empty) else {}
  return tuple((name, axis if sizes.get(axis, 1) > 1 else None)
               for name, axis in rules)


def spec_of(axes: tuple, rules: Sequence = RULES,
            leading: tuple = ()) -> jax.sharding.PartitionSpec:
  """The ``PartitionSpec`` of one parameter from its logical ``axes``:
  ``P(*leading, rule(axes[0]), rule(axes[1]), ...)``, trailing ``None``\\ s
  kept (``leading``: mesh axes of extra leading dimensions, e.g.
  ``('seeds',)`` for a batch of runs).

  Raises:
    ValueError: a name the rules do not know, or one mesh axis splitting two
      dimensions of the parameter.
  """
  table = dict(rules)
  unknown = [a for a in axes if a is not None and a not in table]
  if unknown:
    raise ValueError(f'logical axes {unknown} are not in the sharding rules '
                     f'({", ".join(table)})')
  mesh_axes = [None if a is None else table[a] for a in axes]
  used = [m for m in mesh_axes if m is not None]
  if len(used) != len(set(used)):
    raise ValueError(f'logical axes {axes} map two dimensions to one mesh '
                     f'axis: {mesh_axes}')
  return P(*leading, *mesh_axes)


def param_specs(logical: Any, rules: Sequence = RULES,
                leading: tuple = ()) -> Any:
  """A ``PartitionSpec`` per parameter: :func:`spec_of` over a pytree of
  logical axes (the params' structure, ``PartitionSpec`` leaves)."""
  return jax.tree.map(lambda axes: spec_of(axes, rules, leading), logical,
                      is_leaf=is_axes)


def _params_matcher(logical: Any, extra_rank: int):
  """``is_params(node)``: whether a pytree node has the structure of the
  params that ``logical`` names, each leaf of its parameter's rank plus
  ``extra_rank``."""
  treedef = jax.tree.structure(logical, is_leaf=is_axes)
  ranks = [len(a) + extra_rank for a in jax.tree.leaves(logical,
                                                         is_leaf=is_axes)]

  def is_params(node) -> bool:
    leaves, structure = jax.tree.flatten(node)
    return structure == treedef and all(
        jnp.ndim(x) == r for x, r in zip(leaves, ranks))
  return is_params


def state_specs(tree: Any, logical: Any | None, rules: Sequence = RULES,
                leading: tuple = ()) -> Any:
  """A ``PartitionSpec`` for every leaf of ``tree`` (a run's state, or a
  batch of runs' states with ``len(leading)`` leading dimensions): each
  subtree with the params' structure and ranks (the params, adam's ``mu``
  and ``nu``, anchors) gets :func:`param_specs`, every other leaf (step
  counters, keys, scalar optimizer state) ``P(*leading)``. ``logical``:
  the policy's logical axes, or ``None`` (all ``P(*leading)``)."""
  if logical is None:
    return jax.tree.map(lambda _: P(*leading), tree)
  is_params = _params_matcher(logical, len(leading))
  specs = param_specs(logical, rules, leading)
  return jax.tree.map(lambda node: specs if is_params(node) else
                      P(*leading), tree, is_leaf=is_params)


def state_shardings(tree: Any, logical: Any | None,
                    mesh: jax.sharding.Mesh, rules: Sequence = RULES,
                    leading: tuple = ()) -> Any:
  """:func:`state_specs` as ``NamedSharding``\\ s on ``mesh`` (rules for
  axes the mesh lacks replicate, :func:`mesh_rules`): the placement of a
  state with ``jax.device_put`` or ``jax.make_array_from_callback``."""
  specs = state_specs(tree, logical, mesh_rules(mesh, rules), leading)
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def splits(mesh, rules: Sequence = RULES) -> bool:
  """Whether any rule splits something over ``mesh`` (a mesh axis the rules
  name has more than one device there)."""
  return any(axis is not None for _, axis in mesh_rules(mesh, rules))


def constrain(tree: Any, logical: Any | None,
              rules: Sequence = RULES) -> Any:
  """``tree`` with each params-shaped subtree (as :func:`state_specs`)
  constrained to its specs on the device mesh in context
  (``jax.lax.with_sharding_constraint``, so that XLA keeps those arrays
  split and inserts the collectives); every other leaf is untouched. A
  no-op that emits nothing without logical axes, without a mesh, or when
  the mesh has no axis the rules split over with more than one device.
  Under ``vmap`` the mapped dimension is left unconstrained."""
  mesh = jax.sharding.get_abstract_mesh()
  if logical is None or mesh.empty or not splits(mesh, rules):
    return tree
  is_params = _params_matcher(logical, 0)
  specs = param_specs(logical, mesh_rules(mesh, rules))
  return jax.tree.map(
      lambda node: jax.lax.with_sharding_constraint(node, specs)
      if is_params(node) else node, tree, is_leaf=is_params)


def take_last(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x[..., index]`` row by row: ``take_along_axis(x, index[..., None],
  -1)[..., 0]`` for ``x [..., n]`` and integer ``index [...]``.

  On a mesh whose ``'model'`` axis has more than one device the same values
  come from a masked sum, ``sum(where(k == index, x, 0), -1)`` (exact: one
  term is ``x[..., index]``, every other is 0). XLA's partitioner (JAX
  0.10.2) aborts (``Check failed`` in ``ExpandDeviceGroupsWithIota``) on a
  gather from an operand split over both ``'data'`` and ``'model'`` inside a
  ``shard_map`` manual over ``'seeds'`` when all three axes have several
  devices: the log-probabilities picked from vocabulary-split logits. The
  masked sum partitions as a reduction (the vocabulary-parallel
  cross-entropy of Megatron-LM). Elsewhere the gather is kept, so that
  programs without model parallelism are unchanged."""
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or MODEL_AXIS not in mesh.axis_names
      or mesh.shape[MODEL_AXIS] == 1):
    return jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]
  hit = jnp.arange(x.shape[-1], dtype=index.dtype) == index[..., None]
  return jnp.sum(jnp.where(hit, x, jnp.zeros((), x.dtype)), axis=-1)


def indivisible(shapes: Any, logical: Any, sizes: dict[str, int],
                rules: Sequence = RULES) -> list[tuple[str, int, str, int]]:
  """The dimensions a rule would split unevenly: ``(logical name, size,
  mesh axis, devices)`` for every parameter dimension whose mesh axis has
  ``sizes[axis]`` devices that do not divide it (each pair once).
  ``shapes``: the params (or ``jax.eval_shape`` of them)."""
  table = dict(rules)
  found = []

  def check(axes, x):
    for name, size in zip(axes, jnp.shape(x)):
      axis = table.get(name)
      devices = sizes.get(axis, 1) if axis is not None else 1
      entry = (name, size, axis, devices)
      if size % devices and entry not in found:
        found.append(entry)
  jax.tree.map(check, logical, shapes, is_leaf=is_axes)
  return found
