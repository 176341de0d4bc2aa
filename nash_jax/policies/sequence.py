"""A transformer policy over token sequences (ALGORITHMS.md section 6).

Context data ``x`` is a :class:`~nash_jax.environments.TokenContexts`:
left-padded prompts ``x.tokens [B, P]`` with ``x.mask [B, P]`` (False on the
padding). Token ids: ``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2``, content
``FIRST_CONTENT_ID = 3 .. vocab_size - 1``. A response ``y [B, L]`` (``L =
max_response_length``) is content tokens, then EOS, then PAD; a response of
``L`` content tokens has no EOS (cut at ``L``). Positions are ``cumsum(mask)
- 1`` over the prompt (0 on the padding) and continue through the response.
Every prompt holds at least one real token (BOS), so its last slot is real.

The policy is the tempered distribution over the ``V - 2`` response tokens
(EOS and content; PAD and BOS have probability 0), per token::

  pi(y_t | x, y_<t) = softmax(logits[EOS:] / temperature)[y_t - EOS]

  log pi(y|x) = sum_{t <= first EOS} log pi(y_t | x, y_<t)

so the probabilities of all responses of at most ``L`` tokens (ended by EOS,
or cut at ``L``) sum to 1. ``temperature`` may be a traced scalar.

Nash-MD-PG's opponent (Munos et al. 2024, arXiv 2312.00886) is the per-token
geometric mixture with the reference ``pi_ref``, the same tempered policy at
the reference parameters (run with a second KV cache; an environment's
``ref_log_prob`` must use the same temperature, so that ``init``, which
returns the reference parameters, starts at ``pi_ref``)::

  pi^c(y_t | .) ∝ exp((1 - c) log pi(y_t | .) + c log pi_ref(y_t | .))

normalized at every token (not the sequence-level mixture). Tokens are drawn
from the unnormalized mixed log-probabilities (the inverse CDF does not need
normalization); at ``c = 0`` they are ``1 * log pi + 0 * log pi_ref = log
pi`` exactly, so the samples are bit for bit those of ``pi``.

Precision: the model runs in its parameters' dtype (bfloat16 included:
its matmuls, activations and key-value caches; norms, RoPE and the
attention softmax in float32, :mod:`nash_jax.policies.transformer`); the
log-softmax over the response tokens, the token log-probabilities and their
sums over a response (so every loss built on ``log_prob``), the mixture of
Nash-MD and the sampling uniforms are in at least float32.

Sampling draws each token by inverse CDF with one uniform (as
:func:`nash_jax.distributions.sample_categorical`); the ``[L, B]`` uniforms
of a call are drawn at once from its key, before the decoding loop (one
random-number kernel to compile and run).

Other token ids (a real tokenizer's; :class:`TokenIds`, an optional ``ids``
argument of every function here, defaulting to the ids above): the
response tokens are ``first_response .. V - 1`` less the ``banned`` ids,
a response ends at its first ``eos`` (or any of ``extra_eos``) and is
padded with ``pad``::

  pi(y_t | x, y_<t) = softmax(m(logits[first_response:] / temperature))

with ``m`` setting the banned entries to the dtype's lowest finite value
(probability 0 after the softmax; finite, so that the mixture's ``0 *
log pi_ref`` stays 0). For a Hugging Face model (:func:`full_vocabulary`)
``first_response = 0`` and the distribution is the model's own softmax over
the whole vocabulary, except the padding token where it differs from every
end token (``pad`` then marks "after the end" only, and sampling it would be
ambiguous); where ``pad`` is an end token (Qwen3 base, Llama 3 with no pad)
nothing is banned, and ``log pi`` is exactly the model's log-softmax.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import sharding
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies.core import Policy
from nash_jax.policies.transformer import (
  TransformerConfig,
  apply,
  init_cache,
  init_params,
  logical_axes,
  validate_transformer_config,
)

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
FIRST_CONTENT_ID = 3

__all__ = ['PAD_ID', 'BOS_ID', 'EOS_ID', 'FIRST_CONTENT_ID', 'TokenIds',
           'SYNTHETIC_IDS', 'full_vocabulary', 'generate', 'init_params',
           'inverse_cdf', 'log_prob', 'make_sequence_policy',
           'prompt_positions', 'response_mask', 'response_log_probs',
           'teacher_forced_logits', 'token_log_probs', 'validate_token_ids']


# Set while XLA's cost analysis counts FLOPs (:func:`counting_flops`): the
# token loop of :func:`generate` is then unrolled, since the cost analysis
# counts a loop body once whatever its trip count.
COUNTING = []


@contextlib.contextmanager
def counting_flops():
  """While active, functions traced here unroll :func:`generate`'s token
  loop (the same computation; only its HLO is larger), so that
  ``jax.jit(f).lower(...).cost_analysis()`` counts every token."""
  COUNTING.append(True)
  try:
    yield
  finally:
    COUNTING.pop()


def _is_id(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """The special token ids of a policy (hashable: a static argument).

  Attributes:
    pad: written after the end of a response (and never sampled).
    eos: the end token (its probability is the factor that ends ``y``).
    first_response: the response tokens are ``first_response .. V - 1``
      (less ``banned``); log-probabilities are indexed from it.
    banned: ids ``>= first_response`` with probability 0 (masked).
    extra_eos: more end tokens (Llama 3 Instruct ends at ``<|eot_id|>`` or
      ``<|end_of_text|>``); a response ends at the first of any.
  """

  pad: int = PAD_ID
  eos: int = EOS_ID
  first_response: int = EOS_ID
  banned: tuple[int, ...] = ()
  extra_eos: tuple[int, ...] = ()

  @property
  def end_ids(self) -> tuple[int, ...]:
    """Every end token: ``(eos,) + extra_eos``."""
    return (self.eos,) + tuple(self.extra_eos)


# PAD 0, BOS 1, EOS 2, responses over EOS and the content tokens.
SYNTHETIC_IDS = TokenIds()


def full_vocabulary(eos: int, pad: int | None = None,
                    extra_eos: tuple[int, ...] = ()) -> TokenIds:
  """Ids of a pretrained model's policy: responses over the whole vocabulary
  (``first_response = 0``), ending at ``eos`` or ``extra_eos``, padded with
  ``pad`` (``eos`` when ``None``), which is banned unless it is an end
  token."""
  pad = eos if pad is None else pad
  extra_eos = tuple(i for i in extra_eos if i != eos)
  banned = () if pad in (eos,) + extra_eos else (pad,)
  return TokenIds(pad=pad, eos=eos, first_response=0, banned=banned,
                  extra_eos=extra_eos)


def validate_token_ids(ids: TokenIds, vocab_size: int, flag='token_ids'):
  """Raises :class:`ConfigError` (naming ``flag``) unless every id is in
  ``[0, vocab_size)``, ``eos``, ``extra_eos`` and ``banned`` are response
  tokens (``>= first_response``), no end token is banned and a response
  token is left besides the end tokens; returns ``ids``."""
  if not isinstance(ids, TokenIds):
    raise ConfigError(flag, f'must be a TokenIds, got {ids!r}')
  for name in ('pad', 'eos', 'first_response'):
    value = getattr(ids, name)
    if not (_is_id(value) and value < vocab_size):
      raise ConfigError(flag, f'{name} must be a token id in [0, '
                        f'{vocab_size}), got {value!r}')
  for name in ('banned', 'extra_eos'):
    values = getattr(ids, name)
    if not (isinstance(values, tuple) and all(
        _is_id(v) and ids.first_response <= v < vocab_size for v in values)):
      raise ConfigError(flag, f'{name} must be a tuple of token ids in '
                        f'[first_response={ids.first_response}, '
                        f'{vocab_size}), got {values!r}')
  if ids.eos < ids.first_response:
    raise ConfigError(flag, f'eos={ids.eos} is below first_response='
                      f'{ids.first_response} (it could never be sampled)')
  ended = set(ids.end_ids) & set(ids.banned)
  if ended:
    raise ConfigError(flag, f'end tokens {sorted(ended)} are banned')
  allowed = vocab_size - ids.first_response - len(set(ids.banned))
  if allowed <= len(set(ids.end_ids)):
    raise ConfigError(flag, f'no response token is left besides the end '
                      f'tokens (vocab_size={vocab_size}, first_response='
                      f'{ids.first_response}, banned={list(ids.banned)})')
  return ids


def _is_end(y, ids: TokenIds):
  """``y`` is an end token (``y == eos`` alone for the default ids)."""
  is_end = y == ids.eos
  for extra in ids.extra_eos:
    is_end = is_end | (y == extra)
  return is_end


def _dtype(params) -> jnp.dtype:
  """The compute dtype of the log-probabilities (at least float32)."""
  dtype = params['embedder']['embedding'].dtype
  return jnp.promote_types(dtype, jnp.float32)


def prompt_positions(mask: chex.Array) -> chex.Array:
  """``[B, P]`` int32 positions ``cumsum(mask) - 1``, 0 on the left padding."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def response_mask(y: chex.Array, ids: TokenIds = SYNTHETIC_IDS) -> chex.Array:
  """``[B, L]`` bool: True on the tokens up to and including the first EOS
  (every token of a response without EOS); with ``ids``, the first of its
  end tokens."""
  is_eos = _is_end(y, ids).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


def token_log_probs(logits: chex.Array, temperature,
                    ids: TokenIds = SYNTHETIC_IDS) -> chex.Array:
  """``[..., V - 2]``: ``log_softmax(logits[..., EOS:] / temperature)``, the
  distribution over the response tokens (index ``i`` is token
  ``EOS_ID + i``). With ``ids``: ``[..., V - first_response]``, index ``i``
  is token ``first_response + i``, banned tokens at the lowest finite
  value (module docstring)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  logits = logits[..., ids.first_response:].astype(dtype)
  logits = logits / jnp.asarray(temperature, dtype)
  if ids.banned:
    banned = np.zeros(logits.shape[-1], bool)
    banned[np.asarray(ids.banned) - ids.first_response] = True
    logits = jnp.where(banned, jnp.finfo(dtype).min, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def teacher_forced_logits(config: TransformerConfig, params, x: TokenContexts,
                          y: chex.Array,
                          ids: TokenIds = SYNTHETIC_IDS) -> chex.Array:
  """``[B, L, V]``: the logits of response token ``t`` given ``x`` and
  ``y_<t``, from one forward over ``concat(prompt, y[:, :-1])`` (the last
  token predicts nothing). Tokens after the first EOS are masked as keys;
  their own rows are meaningless."""
  chex.assert_rank([x.tokens, y], 2)
  length = y.shape[1]
  positions = prompt_positions(x.mask)
  offsets = jnp.arange(1, length, dtype=jnp.int32)[None, :]
  tokens = jnp.concatenate([x.tokens, y[:, :-1]], axis=1)
  positions = jnp.concatenate([positions, positions[:, -1:] + offsets], 1)
  key_mask = jnp.concatenate([x.mask, response_mask(y, ids)[:, :-1]], axis=1)
  logits, _ = apply(config, params, tokens.astype(jnp.int32), positions,
                    key_mask)
  return logits[:, x.tokens.shape[1] - 1:]


def response_log_probs(config: TransformerConfig, params, x: TokenContexts,
                       y: chex.Array, temperature=1.0,
                       ids: TokenIds = SYNTHETIC_IDS) -> chex.Array:
  """``[B, L]``: ``log pi(y_t | x, y_<t)`` on the response tokens, 0 after
  the first EOS."""
  lp = token_log_probs(teacher_forced_logits(config, params, x, y, ids),
                       temperature, ids)
  index = jnp.clip(y - ids.first_response, 0, lp.shape[-1] - 1)
  picked = sharding.take_last(lp, index)
  return jnp.where(response_mask(y, ids), picked, 0.0)


def log_prob(config: TransformerConfig, params, x: TokenContexts,
             y: chex.Array, temperature=1.0,
             ids: TokenIds = SYNTHETIC_IDS) -> chex.Array:
  """``[B]``: ``log pi(y|x)``, the sum of the response tokens'
  log-probabilities through the first EOS (differentiable in ``params``)."""
  return jnp.sum(response_log_probs(config, params, x, y, temperature, ids),
                 -1)


def inverse_cdf(log_probs: chex.Array, u: chex.Array) -> chex.Array:
  """``[B]`` int32 draws from ``[B, n]`` unnormalized log-probabilities:
  ``y = #{k : F(k) <= u F(n - 1)}`` with the cumulative sums ``F`` of
  ``exp(log_probs)`` and uniforms ``u [B, 1]`` in ``[0, 1)``."""
  cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
  index = jnp.sum(cdf <= u * cdf[..., -1:], axis=-1)
  return jnp.minimum(index, log_probs.shape[-1] - 1).astype(jnp.int32)


def _prefill(config, params, x: TokenContexts, length: int):
  """Runs the prompt through a fresh cache of ``P + length - 1`` slots (the
  last response token is never fed back). Returns the next-token logits
  ``[B, V]`` and the cache."""
  batch, prompt_length = x.tokens.shape
  dtype = params['embedder']['embedding'].dtype
  cache = init_cache(config, batch, prompt_length + length - 1, dtype)
  key_mask = jnp.concatenate(
      [x.mask, jnp.ones((batch, length - 1), bool)], axis=1)
  logits, cache = apply(config, params, x.tokens.astype(jnp.int32),
                        prompt_positions(x.mask), key_mask, cache)
  return logits[:, -1], cache, key_mask


def generate(key: chex.PRNGKey, params, x: TokenContexts,
             max_response_length: int, config: TransformerConfig,
             temperature=1.0, mixture=0.0, reference=None,
             ids: TokenIds = SYNTHETIC_IDS):
  """Samples one response per prompt inside the caller's ``jit``.

  One prefill pass over the prompt, then ``lax.scan`` over the response
  tokens with a key-value cache (and a second one for ``reference`` when
  given). Token ``t`` is drawn by inverse CDF from ``pi`` or, with
  ``reference``, from ``pi^c ∝ pi^{1-c} pi_ref^c`` (module docstring); after
  the first EOS every token is PAD (and is fed back, unread).

  Args:
    key: PRNG key (of the ``[L, B]`` uniforms of the inverse CDF).
    params: the policy's parameters.
    x: ``TokenContexts`` with ``tokens [B, P]`` and ``mask [B, P]``.
    max_response_length: ``L`` (static).
    config: the transformer's architecture.
    temperature: scalar (may be traced).
    mixture: ``c`` (may be traced); used only with ``reference``.
    reference: the reference parameters, or ``None`` for ``pi`` itself.
    ids: the special token ids (:class:`TokenIds`; static).

  Returns:
    ``(y [B, L] int32, token_log_probs [B, L], response_mask [B, L])``: the
    tokens, their log-probabilities under the distribution they were drawn
    from (0 after the first EOS) and the mask of tokens through the first
    EOS.
  """
  chex.assert_rank([x.tokens, x.mask], 2)
  length = max_response_length
  batch = x.tokens.shape[0]
  dtype = _dtype(params)
  c = jnp.asarray(mixture, dtype)
  logits, cache, key_mask = _prefill(config, params, x, length)
  ref_logits, ref_cache = None, None
  if reference is not None:
    ref_logits, ref_cache, _ = _prefill(config, reference, x, length)
  last_position = prompt_positions(x.mask)[:, -1]

  def draw(u, logits, ref_logits, done):
    """One token per row, its log-probability, validity and the new done."""
    mixed = token_log_probs(logits, temperature, ids)
    if reference is not None:
      mixed = (1 - c) * mixed + c * token_log_probs(ref_logits, temperature,
                                                    ids)
    index = inverse_cdf(mixed, u)
    picked = sharding.take_last(mixed, index)
    if reference is not None:
      picked = picked - jax.nn.logsumexp(mixed, axis=-1)
    token = jnp.where(done, ids.pad, index + ids.first_response).astype(
        jnp.int32)
    return (token, jnp.where(done, 0.0, picked).astype(dtype), ~done,
            done | _is_end(token, ids))

  def feed(p, token, position, cache):
    logits, cache = apply(config, p, token[:, None], position[:, None],
                          key_mask, cache)
    return logits[:, 0], cache

  def step(carry, inputs):
    logits, cache, ref_logits, ref_cache, done = carry
    u, t = inputs
    token, picked, valid, done = draw(u, logits, ref_logits, done)
    position = last_position + 1 + t
    logits, cache = feed(params, token, position, cache)
    if reference is not None:
      ref_logits, ref_cache = feed(reference, token, position, ref_cache)
    return (logits, cache, ref_logits, ref_cache, done), (token, picked, valid)

  uniforms = jax.random.uniform(key, (length, batch, 1), dtype)
  done = jnp.zeros((batch,), bool)
  carry = (logits, cache, ref_logits, ref_cache, done)
  steps = jnp.arange(length - 1, dtype=jnp.int32)
  carry, (tokens, picked, valid) = jax.lax.scan(
      step, carry, (uniforms[:-1], steps), unroll=bool(COUNTING))
  logits, _, ref_logits, _, done = carry
  last = draw(uniforms[-1], logits, ref_logits, done)[:3]
  tokens, picked, valid = (
      jnp.concatenate([a.T, b[:, None]], axis=1)
      for a, b in zip((tokens, picked, valid), last))
  return tokens, picked, valid


def make_sequence_policy(config: TransformerConfig, max_response_length: int,
                         temperature=1.0, ids: TokenIds | None = None
                         ) -> Policy:
  """The transformer :class:`Policy` over responses of at most
  ``max_response_length`` tokens (name 'transformer'; ``log_probs`` is
  ``None``: the environment lists responses and calls ``log_prob``), with
  the special token ids ``ids`` (``None``: :data:`SYNTHETIC_IDS`).

  ``init(key, x, reference)`` returns ``reference`` when given (the policy
  starts at ``pi_ref``), else :func:`init_params`; ``sample(key, params, x,
  mixture=0., reference=None) -> y [B, L]``; ``log_prob(params, x, y) ->
  [B]``; ``logical_axes()``: the parameters' logical axis names
  (:func:`~nash_jax.policies.transformer.logical_axes`, for model
  parallelism). Raises :class:`ConfigError` for impossible settings.
  """
  validate_transformer_config(config)
  if ids is None:
    ids = SYNTHETIC_IDS
    if config.vocab_size <= FIRST_CONTENT_ID:
      raise ConfigError('vocab_size', f'must exceed {FIRST_CONTENT_ID} '
                        f'(PAD, BOS, EOS and at least one content token), '
                        f'got {config.vocab_size}')
  validate_token_ids(ids, config.vocab_size)
  if (not isinstance(max_response_length, int)
      or isinstance(max_response_length, bool) or max_response_length < 1):
    raise ConfigError('max_response_length', f'must be a positive integer, '
                      f'got {max_response_length!r}')
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ConfigError('temperature', f'must be positive, got {temperature!r}')

  def init(key, x, reference=None):
    del x
    if reference is not None:
      return reference
    return init_params(key, config)

  def sample(key, params, x, mixture=0.0, reference=None):
    return generate(key, params, x, max_response_length, config, temperature,
                    mixture, reference, ids)[0]

  def policy_log_prob(params, x, y):
    chex.assert_axis_dimension(y, 1, max_response_length)
    return log_prob(config, params, x, y, temperature, ids)

  return Policy('transformer', init, sample, policy_log_prob, None,
                logical_axes=functools.partial(logical_axes, config))
