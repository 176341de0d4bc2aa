"""Hugging Face tensor names and shapes <-> the params pytree of
:mod:`nash_jax.policies.transformer`.

The key map (torch ``Linear`` weights are ``[out, in]``; ``N`` query heads,
``K`` key-value heads of ``H`` features, ``D`` model width, ``F`` MLP
width, ``V`` vocabulary; ``.T`` a transpose)::

  model.embed_tokens.weight [V, D]          embedder/embedding [V, D]
  model.layers.{i}.input_layernorm.weight   layer_{i}/attn_norm/scale
  ...self_attn.q_proj.weight [N H, D]       layer_{i}/attn/q/w = W.T -> [D, N, H]
  ...self_attn.{k,v}_proj.weight [K H, D]   layer_{i}/attn/{k,v}/w  [D, K, H]
  ...self_attn.{q,k,v}_proj.bias            layer_{i}/attn/{q,k,v}/b [N|K, H]
  ...self_attn.o_proj.weight [D, N H]       layer_{i}/attn/o/w = W.T -> [N, H, D]
  ...self_attn.{q,k}_norm.weight [H]        layer_{i}/attn/{q,k}_norm/scale
  ...post_attention_layernorm.weight        layer_{i}/mlp_norm/scale
  ...mlp.{gate,up}_proj.weight [F, D]       layer_{i}/mlp/{gate,up}/w = W.T
  ...mlp.down_proj.weight [D, F]            layer_{i}/mlp/down/w = W.T
  model.norm.weight                         final_norm/scale
  lm_head.weight [V, D]                     head/w = W.T   (untied only)

The flattening ``N H`` is head-major (``reshape``), as transformers' ``view(
..., -1, head_dim)``; query head ``n`` reads key-value head ``n // (N/K)``
in both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.policies.transformer import TransformerConfig


def hf_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor of the Hugging Face checkpoint of ``config`` and its
  shape (``lm_head.weight`` only when untied)."""
  d, n, k, h, f, v = (config.d_model, config.num_heads, config.num_kv_heads,
                      config.head_size, config.mlp_dim, config.vocab_size)
  shapes = {'model.embed_tokens.weight': (v, d), 'model.norm.weight': (d,)}
  for i in range(config.num_layers):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'input_layernorm.weight': (d,),
        p + 'post_attention_layernorm.weight': (d,),
        p + 'self_attn.q_proj.weight': (n * h, d),
        p + 'self_attn.k_proj.weight': (k * h, d),
        p + 'self_attn.v_proj.weight': (k * h, d),
        p + 'self_attn.o_proj.weight': (d, n * h),
        p + 'mlp.gate_proj.weight': (f, d),
        p + 'mlp.up_proj.weight': (f, d),
        p + 'mlp.down_proj.weight': (d, f)})
    if config.qk_norm:
      shapes[p + 'self_attn.q_norm.weight'] = (h,)
      shapes[p + 'self_attn.k_norm.weight'] = (h,)
    if config.qkv_bias:
      shapes[p + 'self_attn.q_proj.bias'] = (n * h,)
      shapes[p + 'self_attn.k_proj.bias'] = (k * h,)
      shapes[p + 'self_attn.v_proj.bias'] = (k * h,)
  if not config.tie_embeddings:
    shapes['lm_head.weight'] = (v, d)
  return shapes


def _key_map(config: TransformerConfig):
  """``(hf_name, path in params, to_ours, to_hf)`` for every tensor, with
  numpy functions between the two layouts."""
  d, n, k, h = (config.d_model, config.num_heads, config.num_kv_heads,
                config.head_size)
  same = (lambda a: a, lambda a: a)
  transpose = (lambda a: a.T, lambda a: a.T)

  def heads(count):                    # [count H, D] <-> [D, count, H]
    return (lambda a: a.T.reshape(d, count, h),
            lambda a: a.reshape(d, count * h).T)

  def bias(count):                     # [count H] <-> [count, H]
    return (lambda a: a.reshape(count, h), lambda a: a.reshape(count * h))

  out = (lambda a: a.T.reshape(n, h, d),           # [D, N H] <-> [N, H, D]
         lambda a: a.reshape(n * h, d).T)
  rows = [('model.embed_tokens.weight', ('embedder', 'embedding'), same),
          ('model.norm.weight', ('final_norm', 'scale'), same)]
  for i in range(config.num_layers):
    p, q = f'model.layers.{i}.', f'layer_{i}'
    rows += [
        (p + 'input_layernorm.weight', (q, 'attn_norm', 'scale'), same),
        (p + 'post_attention_layernorm.weight', (q, 'mlp_norm', 'scale'),
         same),
        (p + 'self_attn.q_proj.weight', (q, 'attn', 'q', 'w'), heads(n)),
        (p + 'self_attn.k_proj.weight', (q, 'attn', 'k', 'w'), heads(k)),
        (p + 'self_attn.v_proj.weight', (q, 'attn', 'v', 'w'), heads(k)),
        (p + 'self_attn.o_proj.weight', (q, 'attn', 'o', 'w'), out),
        (p + 'mlp.gate_proj.weight', (q, 'mlp', 'gate', 'w'), transpose),
        (p + 'mlp.up_proj.weight', (q, 'mlp', 'up', 'w'), transpose),
        (p + 'mlp.down_proj.weight', (q, 'mlp', 'down', 'w'), transpose)]
    if config.qk_norm:
      rows += [(p + 'self_attn.q_norm.weight', (q, 'attn', 'q_norm', 'scale'),
                same),
               (p + 'self_attn.k_norm.weight', (q, 'attn', 'k_norm', 'scale'),
                same)]
    if config.qkv_bias:
      rows += [(p + 'self_attn.q_proj.bias', (q, 'attn', 'q', 'b'), bias(n)),
               (p + 'self_attn.k_proj.bias', (q, 'attn', 'k', 'b'), bias(k)),
               (p + 'self_attn.v_proj.bias', (q, 'attn', 'v', 'b'), bias(k))]
  if not config.tie_embeddings:
    rows.append(('lm_head.weight', ('head', 'w'), transpose))
  return [(name, path, fns[0], fns[1]) for name, path, fns in rows]


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def params_from_hf(config: TransformerConfig, tensors) -> dict:
  """Our params pytree (jax arrays in ``config.param_dtype``) from
  Hugging Face tensors by name (numpy arrays, any float dtype; extra names
  such as a tied ``lm_head.weight`` are ignored). Raises ``KeyError`` for a
  missing name; shapes are checked by
  :func:`~nash_jax.hf.checkpoint.load_checkpoint`."""
  dtype = np.dtype(jnp.dtype(config.param_dtype))
  params = {}
  for name, path, to_ours, _ in _key_map(config):
    value = np.asarray(tensors[name])
    if value.dtype != dtype:
      value = value.astype(dtype)
    _set(params, path, jnp.asarray(np.ascontiguousarray(to_ours(value))))
  return params


def params_to_hf(config: TransformerConfig, params, dtype=None
                 ) -> dict[str, np.ndarray]:
  """Hugging Face tensors by name (contiguous numpy arrays in ``dtype``,
  default the params') from our params pytree; the inverse of
  :func:`params_from_hf`."""
  tensors = {}
  for name, path, _, to_hf in _key_map(config):
    value = np.asarray(jax.device_get(_get(params, path)))
    if dtype is not None and value.dtype != np.dtype(jnp.dtype(dtype)):
      value = value.astype(jnp.dtype(dtype))
    tensors[name] = np.ascontiguousarray(to_hf(value))
  return tensors


def tensor_order(name: str):
  """Sort key of tensor names, numbers compared as numbers:
  ``model.layers.2`` before ``model.layers.10``."""
  return [int(t) if t.isdigit() else t for t in name.split('.')]
