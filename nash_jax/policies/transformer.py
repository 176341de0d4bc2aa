"""A small decoder-only transformer in Flax NNX (Llama / Qwen layout).

Shapes: ``B`` batch, ``T`` new tokens, ``S`` key slots (``T`` without a
cache, the cache length with one), ``D`` ``d_model``, ``N`` query heads,
``K`` key-value heads, ``G = N / K`` query heads per key-value head, ``H``
``head_dim``, ``F`` ``mlp_dim``, ``V`` ``vocab_size``. Every matmul is a
``jnp.einsum`` over a named parameter.

The maths, per block (pre-norm residual, Llama: Touvron et al. 2023,
arXiv 2302.13971; Qwen2 arXiv 2407.10671, Qwen3 arXiv 2505.09388)::

  h = x + Attn(RMSNorm(x)),    out = h + SwiGLU(RMSNorm(h))

and ``logits = RMSNorm(out_L) W_head`` with ``W_head = E^T`` (tied to the
input embedding ``E [V, D]``) or a separate ``[D, V]`` matrix.

* RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467):
  ``RMSNorm(x) = g * x / sqrt(mean_d(x_d^2) + eps)``, ``g`` initialized to 1.
* Rotary position embeddings (RoFormer, Su et al., arXiv 2104.09864), in the
  "rotate half" layout of Llama / Qwen / Gemma: for ``i < H/2`` the pair
  ``(z_i, z_{i + H/2})`` of a query or key at position ``p`` is rotated by
  the angle ``p w_i``, ``w_i = theta^(-2i/H)``::

    z'_i       = z_i cos(p w_i) - z_{i+H/2} sin(p w_i)
    z'_{i+H/2} = z_{i+H/2} cos(p w_i) + z_i sin(p w_i)

  so that ``q'_p . k'_s`` depends on ``p - s`` only. ``theta`` is
  ``rope_theta`` (10,000 in RoFormer and Llama 2; 1,000,000 in Qwen3;
  500,000 in Llama 3).
* Llama 3 RoPE scaling (``rope_scaling``, rope type "llama3"; Meta's Llama
  3.1 release, Grattafiori et al. 2024, arXiv 2407.21783): with factor
  ``s``, original context ``C``, wavelength ``lambda_i = 2 pi / w_i``,
  ``lambda_lo = C / low_freq_factor`` and ``lambda_hi = C /
  high_freq_factor``, the frequencies become::

    w'_i = w_i                           if lambda_i < lambda_hi
    w'_i = w_i / s                       if lambda_i > lambda_lo
    w'_i = (1 - a_i) w_i / s + a_i w_i   otherwise, with
    a_i  = (C / lambda_i - low_freq_factor)
           / (high_freq_factor - low_freq_factor)

  (high frequencies kept, low ones interpolated by ``s``, a smooth ramp
  between); every position uses ``w'``.
* QK-norm (``qk_norm``, Qwen3; Dehghani et al. 2023, arXiv 2302.05442):
  each query and key head is RMS-normed over its ``H`` features with a
  learned scale ``[H]`` (one for queries, one for keys, shared by the
  heads) before RoPE: ``q_{t,n} <- RMSNorm(q_{t,n})``.
* Query-key-value biases (``qkv_bias``, Qwen2): ``q = x W_q + b_q`` and
  likewise for ``k`` and ``v`` (no bias on ``W_o``).
* Grouped-query attention (Ainslie et al., arXiv 2305.13245; Vaswani et al.
  2017, arXiv 1706.03762): query head ``n = k G + g`` reads key-value head
  ``k`` (the MHA formula with each key-value head repeated ``G`` times)::

    A[n, t, s] = softmax_s(q'_{t,n} . k'_{s,k} / sqrt(H) + M[t, s])
    o[t, n]    = sum_s A[n, t, s] v_{s,k},   Attn(x) = sum_{n,h} o W_o

  with ``M[t, s] = 0`` where key slot ``s`` is causal (``s <= t`` in slot
  order) and a real token (``key_mask``), ``-inf`` otherwise (the dtype's
  lowest finite value, so a row with no valid key stays finite).
* SwiGLU MLP (Shazeer 2020, arXiv 2002.05202):
  ``SwiGLU(x) = (silu(x W_gate) * (x W_up)) W_down``,
  ``silu(z) = z sigmoid(z)``.

Initialization: projections and the untied head are normal with standard
deviation ``fan_in^-1/2``; the embedding is normal with standard deviation
``D^-1/2`` (so tied logits start with unit scale); norm scales are 1. All
weights are slices of one normal draw (:class:`Normals`). The optional
QK-norm scales are 1 and the optional ``q, k, v`` biases 0, so they draw
nothing and leave the other weights' values unchanged.

Parameters as a plain pytree: :func:`init_params` returns a nested dict of
arrays (optax, ``vmap`` over seeds, orbax, ``jax.tree.map`` all apply), and
:func:`apply` merges it with the module's graph (:func:`graph_def`, built
once per config) inside the traced function. Layout::

  {'embedder': {'embedding': [V, D]},
   'layer_<i>': {'attn_norm': {'scale': [D]},
                 'attn': {'q': {'w': [D, N, H]}, 'k': {'w': [D, K, H]},
                          'v': {'w': [D, K, H]}, 'o': {'w': [N, H, D]},
                          'q_norm': {'scale': [H]},      (qk_norm only)
                          'k_norm': {'scale': [H]}},     (qk_norm only)
                 'mlp_norm': {'scale': [D]},
                 'mlp': {'gate': {'w': [D, F]}, 'up': {'w': [D, F]},
                         'down': {'w': [F, D]}}},      for i < num_layers
   'final_norm': {'scale': [D]},
   'head': {'w': [D, V]}}                             (untied only)

with ``'b': [N, H]`` (``q``) and ``[K, H]`` (``k``, ``v``) beside ``'w'``
under ``qkv_bias``. Each parameter also names its dimensions where its shape
is declared (:func:`logical_axes`: ``vocab``, ``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``norm``), which
:mod:`nash_jax.sharding` maps to device-mesh axes to split the model over
devices (Megatron style).

The key-value cache is functional (:class:`KVCache`: arrays passed in and
returned), so decoding runs inside ``lax.scan``. Activations are computed in
the parameters' dtype; norms, RoPE angles and the attention softmax in at
least float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from nash_jax.errors import ConfigError
from nash_jax.settings import setting

PARAM_DTYPES = ('float32', 'float64', 'bfloat16')
ROPE_TYPES = ('llama3',)

# Logical names of the parameters' dimensions (:func:`logical_axes`; each
# parameter declares its names where its shape is declared, as ``axes``
# metadata of its ``nnx.Param``). :mod:`nash_jax.sharding` maps them to
# device-mesh axes.
VOCAB = 'vocab'          # V, token ids (embedding rows, head columns)
EMBED = 'embed'          # D, the residual stream
HEADS = 'heads'          # N, query heads
KV_HEADS = 'kv_heads'    # K, key-value heads
HEAD_DIM = 'head_dim'    # H, features per head
MLP = 'mlp'              # F, the SwiGLU hidden width
NORM = 'norm'            # the scale of an RMSNorm (D, or H for QK-norm)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (module docstring; hashable, so it can sit in a
  :class:`TransformerConfig`).

  Attributes:
    rope_type: 'llama3' (the only type implemented; others are refused).
    factor: ``s``, the interpolation factor of the low frequencies.
    low_freq_factor: wavelengths above ``C / low_freq_factor`` are divided
      by ``s`` in frequency.
    high_freq_factor: wavelengths below ``C / high_freq_factor`` are kept.
    original_max_position_embeddings: ``C``, the pretraining context.
  """

  rope_type: str = 'llama3'
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of a decoder-only transformer (see the module docstring).

  Attributes:
    vocab_size: ``V``, the number of token ids.
    d_model: ``D``, the residual stream width.
    num_layers: the number of blocks.
    num_heads: ``N``, query heads.
    num_kv_heads: ``K``, key-value heads (GQA; ``N % K == 0``; ``K = N`` is
      multi-head attention, ``K = 1`` multi-query attention).
    head_dim: ``H`` (even, as RoPE rotates pairs); ``None`` for
      ``d_model // num_heads``.
    mlp_dim: ``F``, the SwiGLU hidden width.
    rope_theta: the RoPE base ``theta``.
    tie_embeddings: the output head is the transposed input embedding.
    norm_eps: RMSNorm's ``eps`` (also of the QK-norm).
    param_dtype: 'float32', 'float64' or 'bfloat16'.
    qk_norm: RMSNorm over ``H`` on every query and key head before RoPE,
      with learned scales ``[H]`` (Qwen3).
    rope_scaling: ``None`` (plain RoPE) or a :class:`RopeScaling`.
    qkv_bias: biases on the query, key and value projections (Qwen2).
  """

  vocab_size: int
  d_model: int = setting(32, 'Transformer width D.')
  num_layers: int = setting(2, 'Transformer blocks.')
  num_heads: int = setting(4, 'Query heads.')
  num_kv_heads: int = setting(2, 'Key-value heads (grouped-query '
                              'attention; divides --num_heads).')
  head_dim: int | None = None
  mlp_dim: int = setting(64, 'SwiGLU hidden width.')
  rope_theta: float = setting(10_000.0, 'RoPE base theta.')
  tie_embeddings: bool = setting(True, 'Tie the output head to the input '
                                 'embedding.')
  norm_eps: float = 1e-6
  param_dtype: str = 'float32'
  qk_norm: bool = False
  rope_scaling: RopeScaling | None = None
  qkv_bias: bool = False

  @property
  def head_size(self) -> int:
    """``H``: ``head_dim``, or ``d_model // num_heads`` when unset."""
    if self.head_dim is not None:
      return self.head_dim
    return self.d_model // self.num_heads

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_transformer_config(cfg: TransformerConfig, prefix: str = ''):
  """Raises :class:`ConfigError` (flag ``prefix + field``) for impossible
  values; returns ``cfg``."""

  def check(ok, name, message):
    if not ok:
      raise ConfigError(prefix + name, message)

  for name in ('vocab_size', 'd_model', 'num_layers', 'num_heads',
               'num_kv_heads', 'mlp_dim'):
    value = getattr(cfg, name)
    check(_is_int(value) and value >= 1, name,
          f'must be a positive integer, got {value!r}')
  check(cfg.num_heads % cfg.num_kv_heads == 0, 'num_kv_heads',
        f'must divide num_heads={cfg.num_heads} (grouped-query attention), '
        f'got {cfg.num_kv_heads}')
  if cfg.head_dim is None:
    check(cfg.d_model % cfg.num_heads == 0, 'num_heads',
          f'must divide d_model={cfg.d_model} when head_dim is unset, got '
          f'{cfg.num_heads}')
  else:
    check(_is_int(cfg.head_dim) and cfg.head_dim >= 1, 'head_dim',
          f'must be a positive integer, got {cfg.head_dim!r}')
  check(cfg.head_size % 2 == 0, 'head_dim',
        f'must be even (RoPE rotates pairs), got {cfg.head_size}')
  theta = cfg.rope_theta
  check(isinstance(theta, (int, float)) and not isinstance(theta, bool)
        and math.isfinite(theta) and theta > 0, 'rope_theta',
        f'must be a positive finite number, got {theta!r}')
  eps = cfg.norm_eps
  check(isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0,
        'norm_eps', f'must be a positive finite number, got {eps!r}')
  check(isinstance(cfg.tie_embeddings, bool), 'tie_embeddings',
        f'must be a bool, got {cfg.tie_embeddings!r}')
  check(cfg.param_dtype in PARAM_DTYPES, 'param_dtype',
        f'must be one of {PARAM_DTYPES}, got {cfg.param_dtype!r}')
  check(cfg.param_dtype != 'float64' or jax.config.jax_enable_x64,
        'param_dtype', 'float64 needs jax_enable_x64 (JAX_ENABLE_X64=1)')
  for name in ('qk_norm', 'qkv_bias'):
    check(isinstance(getattr(cfg, name), bool), name,
          f'must be a bool, got {getattr(cfg, name)!r}')
  validate_rope_scaling(cfg.rope_scaling, prefix)
  return cfg


def _is_positive(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def validate_rope_scaling(scaling, prefix: str = ''):
  """Raises :class:`ConfigError` (flag ``prefix + 'rope_scaling'``) unless
  ``scaling`` is ``None`` or a usable :class:`RopeScaling`."""
  flag = prefix + 'rope_scaling'
  if scaling is None:
    return
  if not isinstance(scaling, RopeScaling):
    raise ConfigError(flag, f'must be None or a RopeScaling, got '
                      f'{scaling!r}')
  if scaling.rope_type not in ROPE_TYPES:
    raise ConfigError(flag, f'unsupported rope type {scaling.rope_type!r}; '
                      f'supported: {", ".join(ROPE_TYPES)}')
  for name in ('factor', 'low_freq_factor', 'high_freq_factor'):
    value = getattr(scaling, name)
    if not _is_positive(value):
      raise ConfigError(flag, f'{name} must be a positive finite number, '
                        f'got {value!r}')
  if not scaling.high_freq_factor > scaling.low_freq_factor:
    raise ConfigError(flag, f'high_freq_factor ({scaling.high_freq_factor}) '
                      f'must exceed low_freq_factor '
                      f'({scaling.low_freq_factor})')
  context = scaling.original_max_position_embeddings
  if not (_is_int(context) and context >= 1):
    raise ConfigError(flag, f'original_max_position_embeddings must be a '
                      f'positive integer, got {context!r}')


def _wide(dtype) -> jnp.dtype:
  """At least float32: the dtype of norms, RoPE angles and softmaxes."""
  return jnp.promote_types(dtype, jnp.float32)


class Normals:
  """Initial weights as consecutive slices of one standard-normal draw.

  Every random weight of a model comes from a single ``jax.random.normal``
  call, so a jitted :func:`init_params` compiles one threefry kernel however
  many weights the model has (XLA compiles a separate kernel for every
  draw, which dominates the compile time of a per-weight initialization).
  """

  def __init__(self, key: chex.PRNGKey, size: int, dtype):
    self.values = jax.random.normal(key, (size,), _wide(dtype))
    self.used = 0

  def __call__(self, shape, std: float, dtype):
    """The next ``prod(shape)`` values, times ``std``, as ``dtype``."""
    size = math.prod(shape)
    if self.used + size > self.values.shape[0]:
      raise ValueError(f'Normals: {self.values.shape[0]} values drawn, '
                       f'{self.used + size} needed')
    z = self.values[self.used:self.used + size].reshape(shape)
    self.used += size
    return (std * z).astype(dtype)


def num_random_weights(cfg: TransformerConfig) -> int:
  """The number of randomly initialized weights (all but the norm scales)."""
  d, n, k, h, f = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                   cfg.head_size, cfg.mlp_dim)
  per_layer = 2 * d * n * h + 2 * d * k * h + 3 * d * f
  head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
  return cfg.vocab_size * d + cfg.num_layers * per_layer + head


class Einsum(nnx.Module):
  """``jnp.einsum(spec, x, w)`` with a parameter ``w``, initialized normal
  with standard deviation ``fan_in^-1/2``; plus a bias ``b`` over the last
  ``len(bias_axes)`` dimensions of ``w`` (initialized to 0) when
  ``bias_axes`` is given. ``axes``: the logical names of ``w``'s
  dimensions (:func:`logical_axes`)."""

  def __init__(self, spec: str, shape, axes, fan_in: int, dtype,
               normals: Normals, bias_axes=None):
    assert len(axes) == len(shape), (axes, shape)
    self.spec = spec
    self.w = nnx.Param(normals(shape, fan_in**-0.5, dtype), axes=axes)
    self.has_bias = bias_axes is not None
    if self.has_bias:
      bias_shape = tuple(shape[len(shape) - len(bias_axes):])
      self.b = nnx.Param(jnp.zeros(bias_shape, dtype), axes=bias_axes)

  def __call__(self, x):
    y = jnp.einsum(self.spec, x, self.w[...])
    if self.has_bias:
      b = self.b[...]
      y = y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)
    return y


def rms_norm(x, scale, eps):
  """``scale * x / sqrt(mean(x^2) + eps)`` over the last axis of ``x``."""
  wide = x.astype(_wide(x.dtype))
  inv = jax.lax.rsqrt(jnp.mean(wide * wide, axis=-1, keepdims=True) + eps)
  scale = scale.reshape((1,) * (x.ndim - 1) + scale.shape)
  return (wide * inv).astype(x.dtype) * scale


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale ``[dim]``."""

  def __init__(self, dim: int, eps: float, dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), dtype), axes=(NORM,))

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


def rope_frequencies(head_dim: int, theta, dtype,
                     scaling: RopeScaling | None = None):
  """``[H/2]``: the RoPE frequencies ``w_i = theta^(-2i/H)`` in ``dtype``,
  rescaled by ``scaling`` (Llama 3's ``w'_i``, module docstring) when
  given."""
  exponent = jnp.arange(head_dim // 2, dtype=dtype) * (2.0 / head_dim)
  freq = jnp.asarray(theta, dtype) ** -exponent
  if scaling is None:
    return freq
  validate_rope_scaling(scaling)
  s = scaling.factor
  context = scaling.original_max_position_embeddings
  wavelength = 2 * math.pi / freq
  long = wavelength > context / scaling.low_freq_factor
  short = wavelength < context / scaling.high_freq_factor
  ramp = ((context / wavelength - scaling.low_freq_factor)
          / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - ramp) * freq / s + ramp * freq
  return jnp.where(long, freq / s, jnp.where(short, freq, smoothed))


def rope_tables(positions, head_dim: int, theta, dtype,
                scaling: RopeScaling | None = None):
  """``(cos, sin)`` of the RoPE angles ``p w_i``, ``w_i = theta^(-2i/H)``
  (:func:`rope_frequencies`).

  Args:
    positions: ``[B, T]`` integer positions ``p``.
    head_dim: ``H`` (even).
    theta: the base.
    dtype: the activations' dtype (the angles are at least float32).
    scaling: ``None`` or a :class:`RopeScaling` of the frequencies.

  Returns:
    ``cos, sin``: ``[B, T, 1, H/2]`` each (a singleton heads axis).
  """
  chex.assert_rank(positions, 2)
  wide = _wide(dtype)
  freq = rope_frequencies(head_dim, theta, wide, scaling)         # [H/2]
  angle = positions.astype(wide)[:, :, None, None] * freq[None, None, None]
  return jnp.cos(angle), jnp.sin(angle)


def rotate(z, tables):
  """RoPE ("rotate half" layout): ``(z_i, z_{i+H/2})`` rotated by the
  angles of ``tables = rope_tables(...)``; ``z`` is ``[B, T, heads, H]``."""
  cos, sin = tables
  half = z.shape[-1] // 2
  first = z[..., :half].astype(cos.dtype)
  second = z[..., half:].astype(cos.dtype)
  out = jnp.concatenate([first * cos - second * sin,
                         second * cos + first * sin], axis=-1)
  return out.astype(z.dtype)


def apply_rope(z, positions, theta, scaling: RopeScaling | None = None):
  """Rotary position embedding of ``z [B, T, heads, H]`` at ``positions
  [B, T]`` with base ``theta`` (and frequency ``scaling``; module
  docstring)."""
  chex.assert_rank(z, 4)
  return rotate(z, rope_tables(positions, z.shape[-1], theta, z.dtype,
                               scaling))


def attend(q, k, v, mask):
  """Grouped-query attention weights applied to values.

  Args:
    q: ``[B, T, N, H]`` queries (RoPE applied).
    k: ``[B, S, K, H]`` keys (RoPE applied), ``N % K == 0``.
    v: ``[B, S, K, H]`` values.
    mask: ``[B, T, S]`` bool, True where query ``t`` may read key ``s``.

  Returns:
    ``[B, T, N, H]``: ``sum_s softmax_s(q.k / sqrt(H)) v`` with query head
    ``n = k G + g`` reading key-value head ``k``. A query with no readable
    key (a padding slot) gets a finite average that nothing reads.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, n // kv_heads, h)
  scores = jnp.einsum('btkgh,bskh->bkgts', q, k).astype(_wide(q.dtype))
  scores = scores * h**-0.5
  scores = jnp.where(mask[:, None, None], scores,
                     jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bskh->btkgh', weights, v)
  return out.reshape(b, t, n, h)


class Attention(nnx.Module):
  """GQA self-attention with RoPE, optional QK-norm and ``q, k, v`` biases
  and an optional functional cache."""

  def __init__(self, cfg: TransformerConfig, normals: Normals):
    d, n, k, h, dtype = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                         cfg.head_size, cfg.dtype)
    bias = cfg.qkv_bias
    # Megatron layout (module docstring): q, k, v split by heads, o by its
    # input heads.
    self.q = Einsum('btd,dnh->btnh', (d, n, h), (EMBED, HEADS, HEAD_DIM), d,
                    dtype, normals, (HEADS, HEAD_DIM) if bias else None)
    self.k = Einsum('bsd,dkh->bskh', (d, k, h), (EMBED, KV_HEADS, HEAD_DIM),
                    d, dtype, normals, (KV_HEADS, HEAD_DIM) if bias else None)
    self.v = Einsum('bsd,dkh->bskh', (d, k, h), (EMBED, KV_HEADS, HEAD_DIM),
                    d, dtype, normals, (KV_HEADS, HEAD_DIM) if bias else None)
    self.o = Einsum('btnh,nhd->btd', (n, h, d), (HEADS, HEAD_DIM, EMBED),
                    n * h, dtype, normals)
    self.qk_norm = cfg.qk_norm
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.norm_eps, dtype)
      self.k_norm = RMSNorm(h, cfg.norm_eps, dtype)

  def __call__(self, x, rope, mask, kv=None, index=None):
    """``x [B, T, D]``, ``rope``: :func:`rope_tables` of the tokens'
    positions, ``mask [B, T, S]``; ``kv``: the cached ``(k, v)``
    ``[B, S, K, H]`` each, written at slots ``index .. index + T - 1``.
    Returns ``([B, T, D], (k, v))``."""
    q, k = self.q(x), self.k(x)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = rotate(q, rope), rotate(k, rope)
    v = self.v(x)
    if kv is not None:
      zero = jnp.zeros((), index.dtype)
      start = (zero, index, zero, zero)
      k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start)
      v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start)
    return self.o(attend(q, k, v, mask)), (k, v)


class SwiGLU(nnx.Module):
  """``(silu(x W_gate) * (x W_up)) W_down``."""

  def __init__(self, cfg: TransformerConfig, normals: Normals):
    d, f, dtype = cfg.d_model, cfg.mlp_dim, cfg.dtype
    self.gate = Einsum('btd,df->btf', (d, f), (EMBED, MLP), d, dtype, normals)
    self.up = Einsum('btd,df->btf', (d, f), (EMBED, MLP), d, dtype, normals)
    self.down = Einsum('btf,fd->btd', (f, d), (MLP, EMBED), f, dtype, normals)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """``h = x + Attn(RMSNorm(x))``, ``out = h + SwiGLU(RMSNorm(h))``."""

  def __init__(self, cfg: TransformerConfig, normals: Normals):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.dtype)
    self.attn = Attention(cfg, normals)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.dtype)
    self.mlp = SwiGLU(cfg, normals)

  def __call__(self, x, rope, mask, kv=None, index=None):
    a, kv = self.attn(self.attn_norm(x), rope, mask, kv, index)
    h = x + a
    return h + self.mlp(self.mlp_norm(h)), kv


class Embedder(nnx.Module):
  """Token embedding ``E [V, D]``; ``decode`` is the tied head ``x E^T``."""

  def __init__(self, cfg: TransformerConfig, normals: Normals):
    shape = (cfg.vocab_size, cfg.d_model)
    self.embedding = nnx.Param(normals(shape, cfg.d_model**-0.5, cfg.dtype),
                               axes=(VOCAB, EMBED))

  def encode(self, tokens):
    return jnp.take(self.embedding[...], tokens, axis=0)

  def decode(self, x):
    return jnp.einsum('btd,vd->btv', x, self.embedding[...])


class KVCache(NamedTuple):
  """A functional key-value cache (a pytree of arrays).

  Attributes:
    k: per layer, ``[B, S, K, H]`` keys (RoPE applied).
    v: per layer, ``[B, S, K, H]`` values.
    index: int32 scalar, the slot where the next tokens are written.
  """

  k: tuple
  v: tuple
  index: chex.Array


def init_cache(cfg: TransformerConfig, batch_size: int, length: int,
               dtype=None) -> KVCache:
  """An empty cache of ``length`` slots (``dtype`` defaults to the params')."""
  dtype = cfg.dtype if dtype is None else dtype
  shape = (batch_size, length, cfg.num_kv_heads, cfg.head_size)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(zeros, zeros, jnp.zeros((), jnp.int32))


def attention_mask(key_mask, index, num_queries: int):
  """``[B, T, S]``: query slot ``index + t`` may read key slot ``s`` iff
  ``s <= index + t`` (causal) and ``key_mask[:, s]`` (a real token)."""
  query_slots = index + jnp.arange(num_queries, dtype=jnp.int32)
  key_slots = jnp.arange(key_mask.shape[1], dtype=jnp.int32)
  causal = key_slots[None, :] <= query_slots[:, None]               # [T, S]
  return causal[None] & key_mask[:, None, :]


class Transformer(nnx.Module):
  """The decoder: embedding, ``num_layers`` blocks, final RMSNorm, head.

  ``rngs.params()`` seeds one :class:`Normals` draw for every weight.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.num_layers = cfg.num_layers
    self.tie_embeddings = cfg.tie_embeddings
    self.head_dim = cfg.head_size
    self.rope_theta = cfg.rope_theta
    self.rope_scaling = cfg.rope_scaling
    normals = Normals(rngs.params(), num_random_weights(cfg), cfg.dtype)
    self.embedder = Embedder(cfg, normals)
    for i in range(cfg.num_layers):
      setattr(self, f'layer_{i}', Block(cfg, normals))
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.dtype)
    if not cfg.tie_embeddings:
      self.head = Einsum('btd,dv->btv', (cfg.d_model, cfg.vocab_size),
                         (EMBED, VOCAB), cfg.d_model, cfg.dtype, normals)
    assert normals.used == normals.values.shape[0]

  def __call__(self, tokens, positions, key_mask, cache: KVCache | None = None):
    """Logits of the next token at every input slot: :meth:`hidden`, then
    the head. Arguments and cache as :meth:`hidden`; returns ``(logits
    [B, T, V], cache)``."""
    x, cache = self.hidden(tokens, positions, key_mask, cache)
    logits = self.embedder.decode(x) if self.tie_embeddings else self.head(x)
    return logits, cache

  def hidden(self, tokens, positions, key_mask,
             cache: KVCache | None = None):
    """The final-normed hidden state at every input slot (what the head
    reads; a scalar head of a reward or preference model reads it too).

    Args:
      tokens: ``[B, T]`` int token ids.
      positions: ``[B, T]`` int RoPE positions.
      key_mask: ``[B, S]`` bool, True on real tokens: ``S = T`` without a
        cache; with one, ``S`` is its length (slots not yet written are
        never read: they are in the causal future).
      cache: ``None``, or a :class:`KVCache` whose slots
        ``cache.index .. cache.index + T - 1`` receive these tokens.

    Returns:
      ``(hidden [B, T, D], cache)``: the updated cache (index advanced by
      ``T``), or ``None`` without one.
    """
    chex.assert_rank([tokens, positions, key_mask], 2)
    chex.assert_equal_shape([tokens, positions])
    num_new = tokens.shape[1]
    if cache is None:
      chex.assert_axis_dimension(key_mask, 1, num_new)
      index = jnp.zeros((), jnp.int32)
    else:
      chex.assert_axis_dimension(key_mask, 1, cache.k[0].shape[1])
      index = cache.index
    mask = attention_mask(key_mask, index, num_new)
    x = self.embedder.encode(tokens)
    rope = rope_tables(positions, self.head_dim, self.rope_theta, x.dtype,
                       self.rope_scaling)
    keys, values = [], []
    for i in range(self.num_layers):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      x, (k, v) = getattr(self, f'layer_{i}')(x, rope, mask, kv, index)
      keys.append(k)
      values.append(v)
    x = self.final_norm(x)
    if cache is None:
      return x, None
    return x, KVCache(tuple(keys), tuple(values), index + num_new)


@functools.lru_cache(maxsize=64)
def graph_def(cfg: TransformerConfig) -> nnx.GraphDef:
  """The module's static graph for ``cfg`` (built once, without arrays)."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(abstract)[0]


@functools.lru_cache(maxsize=64)
def _logical_axes(cfg: TransformerConfig) -> tuple:
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  return tuple((path, variable.axes) for path, variable in nnx.iter_graph(
      abstract) if isinstance(variable, nnx.Param))


def logical_axes(cfg: TransformerConfig) -> dict:
  """The logical axis names of every parameter, a nested dict with the
  layout of :func:`init_params` whose leaves are tuples of names, one per
  dimension (``VOCAB``, ``EMBED``, ``HEADS``, ``KV_HEADS``, ``HEAD_DIM``,
  ``MLP``, ``NORM``)::

    embedding [V, D]: (vocab, embed)     head.w [D, V]: (embed, vocab)
    q.w [D, N, H]: (embed, heads, head_dim)       q.b: (heads, head_dim)
    k.w, v.w [D, K, H]: (embed, kv_heads, head_dim)
    o.w [N, H, D]: (heads, head_dim, embed)
    gate.w, up.w [D, F]: (embed, mlp)    down.w [F, D]: (mlp, embed)
    every norm scale: (norm,)

  Each parameter declares its names beside its shape (the ``axes``
  metadata of its ``nnx.Param``), so the two cannot drift apart; the
  names say what a dimension is, :mod:`nash_jax.sharding`'s rules say
  which device-mesh axis (if any) splits it. Mind that a pytree of tuples
  has the tuples' strings as leaves: map over it with
  ``is_leaf=nash_jax.sharding.is_axes``.
  """
  tree = {}
  for path, axes in _logical_axes(cfg):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(axes)
  return tree


def init_params(key: chex.PRNGKey, cfg: TransformerConfig) -> dict:
  """Fresh random parameters as a nested dict of arrays (module docstring's
  layout); traceable, so ``vmap`` over keys gives a seed axis."""
  module = Transformer(cfg, rngs=nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.split(module)[1])


def module(cfg: TransformerConfig, params: dict) -> Transformer:
  """The :class:`Transformer` with these parameters (graph and params
  merged; inside traced code the module holds the tracers)."""
  return nnx.merge(graph_def(cfg), params)


def apply(cfg: TransformerConfig, params: dict, tokens, positions, key_mask,
          cache: KVCache | None = None):
  """:meth:`Transformer.__call__` as a pure function of ``params``."""
  return module(cfg, params)(tokens, positions, key_mask, cache)


def hidden_states(cfg: TransformerConfig, params: dict, tokens, positions,
                  key_mask, cache: KVCache | None = None):
  """:meth:`Transformer.hidden` as a pure function of ``params``: ``(hidden
  [B, T, D], cache)``."""
  return module(cfg, params).hidden(tokens, positions, key_mask, cache)
