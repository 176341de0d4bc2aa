"""The token game's prompts ``[BOS, topic_x, fillers...]`` and the topic
read back from prompt tokens (see :mod:`nash_jax.environments.tokens`).
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np

from nash_jax.environments.tokens.spec import TokenEnvSpec, check_spec
from nash_jax.environments.tokens.vocabulary import BOS, FIRST_CONTENT


def prompt_topics(num_prompts: int, vocab_size: int) -> np.ndarray:
  """``topic_x = 3 + (x mod V)``, ``[X]`` int32."""
  return (FIRST_CONTENT + np.arange(num_prompts) % vocab_size).astype(
      np.int32)


def make_prompts(spec: TokenEnvSpec) -> tuple[np.ndarray, np.ndarray]:
  """The prompts ``[BOS, topic_x, fillers...]``: tokens ``[X, P]`` int32
  (left-padded; all prompts have length ``P`` here) and mask ``[X, P]``
  bool. Fillers are uniform content tokens from ``default_rng(seed)``."""
  check_spec(spec)
  num, length = spec.num_prompts, spec.prompt_length
  rng = np.random.default_rng(spec.seed)
  fillers = FIRST_CONTENT + rng.integers(0, spec.vocab_size,
                                         (num, length - 2))
  tokens = np.concatenate([
      np.full((num, 1), BOS), prompt_topics(num, spec.vocab_size)[:, None],
      fillers], axis=1).astype(np.int32)
  return tokens, np.ones((num, length), bool)


def prompt_topic(tokens: chex.Array, mask: chex.Array) -> chex.Array:
  """The topic of left-padded prompts: the token right after ``BOS`` (the
  first unmasked token), ``[B]`` int32 from ``tokens, mask [B, P]``."""
  chex.assert_equal_shape([tokens, mask])
  start = jnp.argmax(mask, axis=-1)
  return jnp.take_along_axis(tokens, (start + 1)[..., None], axis=-1)[..., 0]
