"""The named response styles of the token game's Condorcet cycle,
``terse > on_topic > diverse > terse`` for every prompt, and their
preference probabilities (see :mod:`nash_jax.environments.tokens`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from nash_jax.environments.tokens.environment import (
  TokenEnvParams,
  contexts_at,
  preference_probability,
)
from nash_jax.environments.tokens.prompts import prompt_topics
from nash_jax.environments.tokens.spec import TokenEnvSpec
from nash_jax.environments.tokens.vocabulary import (
  FIRST_CONTENT,
  make_response,
)
from nash_jax.errors import ConfigError


class Style(NamedTuple):
  """A named response style: ``build(spec, prompt) -> [L]`` int32."""

  description: str
  build: Callable[[TokenEnvSpec, int], np.ndarray]


def _style_tokens(spec: TokenEnvSpec, prompt: int):
  if spec.vocab_size < 4 or spec.max_length < 4:
    raise ConfigError('vocab_size' if spec.vocab_size < 4 else 'max_length',
                      'the Condorcet styles need vocab_size >= 4 and '
                      f'max_length >= 4, got {spec.vocab_size} and '
                      f'{spec.max_length}')
  topic = int(prompt_topics(spec.num_prompts, spec.vocab_size)[prompt])
  content = FIRST_CONTENT + np.arange(spec.vocab_size)
  return topic, [int(c) for c in content if c != topic]


def _terse(spec, prompt):
  _, off = _style_tokens(spec, prompt)
  return make_response([off[0]], spec.max_length)


def _on_topic(spec, prompt):
  topic, _ = _style_tokens(spec, prompt)
  return make_response([topic] * 3, spec.max_length)


def _diverse(spec, prompt):
  topic, off = _style_tokens(spec, prompt)
  return make_response([topic] + off[:3], spec.max_length)


# Each style beats the next, and the last beats the first (for every prompt,
# at the default sharpness): terse > on_topic > diverse > terse.
CONDORCET_STYLES: dict[str, Style] = {
    'terse': Style('one off-topic token [a]: short, a little breadth, '
                   'no topic', _terse),
    'on_topic': Style('the topic three times [t, t, t]: on topic, '
                      'repetitive', _on_topic),
    'diverse': Style('the topic then three off-topic tokens [t, a, b, c]: '
                     'broad, long', _diverse),
}


def condorcet_cycle_probabilities(env_params: TokenEnvParams,
                                  spec: TokenEnvSpec) -> np.ndarray:
  """``[X, 3]``: ``P(terse > on_topic)``, ``P(on_topic > diverse)``,
  ``P(diverse > terse)`` per prompt (all ``> 1/2``: a Condorcet cycle)."""
  styles = np.stack([np.stack([style.build(spec, x)
                               for style in CONDORCET_STYLES.values()])
                     for x in range(env_params.num_contexts)])  # [X, 3, L]
  num_x = env_params.num_contexts
  index = jnp.repeat(jnp.arange(num_x), 3)
  flat = lambda a: jnp.asarray(a.reshape(num_x * 3, -1))
  prob = preference_probability(env_params, contexts_at(env_params, index),
                                flat(styles),
                                flat(np.roll(styles, -1, axis=1)))
  return np.asarray(prob).reshape(num_x, 3)
