"""What the two language-model runs share (the token game and checkpoint
post-training): their settings groups, checks and the transformer policy.

* :class:`SamplingConfig` (the temperature), :class:`SampleLogConfig` (the
  samples written at each evaluation), :class:`SFTConfig` (supervised
  fine-tuning of the reference), :class:`ParallelConfig` (data and model
  parallel splits of each run);
* :func:`compute_dtype`: hyperparameters, log-probabilities and evaluation
  in at least float32, whatever the transformer's dtype;
* :func:`check_language_model`: the checks of these groups, before any
  work;
* :func:`sequence_policy`: the transformer policy, counting the tokens it
  generates.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nash_jax import policies as policies_lib
from nash_jax import sharding as sharding_lib
from nash_jax.errors import ConfigError
from nash_jax.experiment import checks
from nash_jax.policies import sequence
from nash_jax.policies.transformer import init_params, logical_axes
from nash_jax.settings import setting

DTYPES = ('float32', 'float64', 'bfloat16')
# Settings of the exact mode that a language model does not have.
EXACT_ONLY = ('mode', 'inner_tolerance', 'max_inner_steps', 'inner_eta')
# The architecture fields of a TransformerConfig that are not flags (the
# vocabulary comes from the environment or the checkpoint, the dtype from
# --dtype).
NOT_FLAGS = ('vocab_size', 'head_dim', 'norm_eps', 'param_dtype', 'qk_norm',
             'rope_scaling', 'qkv_bias')


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How a language-model policy samples (and scores) responses."""

  temperature: float = setting(1.0, 'Sampling temperature T; the policy is '
                               'softmax(logits / T) in sampling and in '
                               'log-probabilities alike (> 0).')


@dataclasses.dataclass(frozen=True)
class SampleLogConfig:
  """What each evaluation records besides the metrics."""

  num_samples: int = setting(2, 'Responses per prompt generated (and '
                             'decoded into samples.jsonl) at every '
                             'evaluation, per seed.', minimum=0)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised fine-tuning of the reference before post-training
  (:func:`nash_jax.sft.fit`); 0 steps keeps the initial model as
  pi_ref."""

  sft_steps: int = setting(0, 'Adam steps of supervised fine-tuning of the '
                           'reference model on the corpus before '
                           'post-training (0: pi_ref is the initial '
                           'model).', minimum=0)
  sft_batch_size: int = setting(64, 'Corpus responses per SFT step.',
                                minimum=1)
  sft_learning_rate: float = setting(3e-3, 'Adam step size of SFT.')


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
  """How a language-model run spreads over devices besides its seeds
  (:func:`nash_jax.train.seed_mesh`)."""

  data_parallel: int | None = setting(
      None, 'Devices each run\'s per-step batch is split over (data parallel: '
      'generation, scoring and the gradient split over them, parameters '
      'replicated, gradients all-reduced). The devices used (--num_devices, '
      'default all, on every host) form a [devices / N, N] mesh: seeds '
      'over the first axis, the batch over the second. Must divide the '
      'devices used and --batch_size. Default (or 1): off, results '
      'bit-identical to a run without it; N > 1 changes the last bits '
      '(another compiled program, the gradient summed in another order).',
      int)
  model_parallel: int | None = setting(
      None, 'Devices each run\'s transformer parameters are split over '
      '(model parallel, Megatron style: attention heads, key-value heads, '
      'the MLP width and the vocabulary split, everything else replicated; '
      'the optimizer state and anchors split alike; XLA inserts the '
      'collectives). The devices used form a [devices / (D M), D, M] mesh '
      'with D = --data_parallel. Must divide the devices used / D, and '
      '--num_heads, --num_kv_heads, --mlp_dim and the model\'s vocabulary. '
      'Default (or 1): off, results bit-identical to a run without it; '
      'M > 1 changes the last bits.', int)


def compute_dtype(config):
  """The dtype of a language-model run's hyperparameters, environment data
  and evaluation: ``dtype``, but at least float32 (a bfloat16 run keeps
  only its transformer in bfloat16)."""
  return jnp.promote_types(jnp.dtype(config.dtype), jnp.float32)


def data_parallel_of(config) -> int:
  """A run's data-parallel factor: ``data_parallel``, 1 when unset (a
  default of None, so that checkpoints written before the setting existed
  still resume)."""
  value = getattr(config, 'data_parallel', None)
  return 1 if value is None else value


def model_parallel_of(config) -> int:
  """A run's model-parallel factor: ``model_parallel``, 1 when unset."""
  value = getattr(config, 'model_parallel', None)
  return 1 if value is None else value


def _devices(config) -> tuple[int, str]:
  devices = (jax.device_count() if config.num_devices is None
             else config.num_devices)
  source = ('--num_devices' if config.num_devices is not None else
            'all the devices JAX sees')
  return devices, source


def check_data_parallel(config) -> None:
  """Refuses a ``data_parallel`` that the devices or the batch cannot
  split.

  Raises:
    ConfigError: naming ``--data_parallel``.
  """
  n = data_parallel_of(config)
  if n < 1:
    raise ConfigError('data_parallel', f'must be >= 1, got {n}')
  devices, source = _devices(config)
  if n > devices or devices % n:
    raise ConfigError('data_parallel', f'must divide the {devices} devices '
                      f'the run uses ({source}), got {n}')
  if config.batch_size % n:
    raise ConfigError('data_parallel', f'must divide --batch_size='
                      f'{config.batch_size} (each device takes an equal '
                      f'share of the batch), got {n}')


def check_model_parallel(config, tconfig, from_file: bool = False) -> None:
  """Refuses a ``model_parallel`` that the devices (after
  ``data_parallel``) or the transformer's split dimensions cannot divide
  (:data:`nash_jax.sharding.RULES`: heads, key-value heads, MLP width,
  vocabulary). Call after :func:`check_data_parallel`.

  ``tconfig``: the transformer's architecture; ``from_file``: it is a
  checkpoint's (the message names its config.json fields, not flags).

  Raises:
    ConfigError: naming ``--model_parallel``.
  """
  m = model_parallel_of(config)
  if m < 1:
    raise ConfigError('model_parallel', f'must be >= 1, got {m}')
  if m == 1:
    return
  d = data_parallel_of(config)
  devices, source = _devices(config)
  if m > devices // d or (devices // d) % m:
    raise ConfigError('model_parallel', f'must divide the {devices} devices '
                      f'the run uses ({source}) / --data_parallel={d} = '
                      f'{devices // d}, got {m}')
  shapes = jax.eval_shape(lambda key: init_params(key, tconfig),
                          jax.random.PRNGKey(0))
  flags = {'heads': 'num_heads', 'kv_heads': 'num_kv_heads',
           'mlp': 'mlp_dim', 'vocab': 'vocab_size'}
  found = sharding_lib.indivisible(shapes, logical_axes(tconfig),
                                   {sharding_lib.MODEL_AXIS: m})
  if found:
    def named(name, size):
      if from_file:
        return f'{name} {size} (the checkpoint\'s config.json)'
      if name == 'vocab':
        return (f'the model\'s vocabulary (--vocab_size={config.vocab_size} '
                f'content tokens + PAD, BOS, EOS = {size})')
      return f'--{flags.get(name, name)}={size}'
    what = ', '.join(named(name, size) for name, size, _, _ in found)
    raise ConfigError('model_parallel', f'must divide every dimension it '
                      f'splits over {sharding_lib.MODEL_AXIS!r} (heads, '
                      f'key-value heads, MLP width, vocabulary): {what}; got '
                      f'{m}')


def check_language_model(config):
  """The checks of the shared language-model settings (temperature, the
  outcome kind, SFT's step size, the data-parallel split); returns
  ``config`` with a parallel factor of 1 written as unset (as a run
  without it, so that checkpoints match) and the cosine schedule's default
  length.

  Raises:
    ConfigError: naming the flag.
  """
  checks.check_positive_number(config, 'temperature')
  checks.check_outcome(config)
  checks.check_positive_number(config, 'sft_learning_rate')
  checks.check_outputs(config)
  check_data_parallel(config)
  if config.data_parallel == 1:
    config = config.replace(data_parallel=None)
  if config.schedule == 'cosine' and config.decay_steps is None:
    config = config.replace(decay_steps=config.num_steps)
  return config


def sequence_policy(tconfig, max_length: int, temperature,
                    ids: sequence.TokenIds | None = None
                    ) -> policies_lib.Policy:
  """The transformer policy (``temperature`` may be traced) with the special
  token ids ``ids`` (``None``: the synthetic ones), counting the tokens it
  generates (every sampled token through the end token) for the cost."""
  policy = sequence.make_sequence_policy(tconfig, max_length, temperature,
                                         ids)
  mask_ids = sequence.SYNTHETIC_IDS if ids is None else ids
  return policy._replace(num_tokens=lambda y: jnp.sum(
      sequence.response_mask(y, mask_ids), dtype=jnp.int32))


def split_hyper(hyper: dict) -> tuple[dict, object]:
  """``(algorithm's runtime values, temperature)`` of a language-model
  run's runtime values (the temperature is the policy's)."""
  return ({k: v for k, v in hyper.items() if k != 'temperature'},
          hyper['temperature'])
