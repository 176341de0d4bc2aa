r"""Speed of one online IPO step of the transformer policy on the token
environment, and of TRL's ``OnlineDPOTrainer`` (IPO loss) on the same model.

  python -m experiments.benchmark_lm                       # the full table
  python -m experiments.benchmark_lm --sizes=2x128 --dtypes=float32 --trl=off

One step (``nash_jax.algorithms.sampled``, ``online_ipo``): ``--batch_size``
prompts of ``--prompt_length`` tokens are drawn, two responses of at most
``--max_length`` new tokens are generated for each (one prefill and a
``lax.scan`` over the tokens with key-value caches), the reference model
scores both (teacher-forced log-probabilities), the annotator oracle labels
each pair, and adam takes one step on the IPO loss (forward and backward of
both responses). For every size in ``--sizes`` (``LAYERSxD_MODEL``; heads of
``--head_dim``, multi-head attention, SwiGLU of ``--mlp_ratio * d_model``,
tied embeddings, a ``--vocab_size`` model vocabulary) and every dtype in
``--dtypes`` (the parameters' and activations' dtype) it prints one JSON line:

* ``step_s``: seconds per step in the steady state. ``--steps`` (``K``)
  steps run in one compiled ``lax.scan`` chunk, as the trainer runs them;
  after compilation (``compile_s``) and a warm-up call, one call (``K``
  steps) and two calls (``2K``) are timed, best of ``--repeats`` each, and
  ``step_s = (t(2K) - t(K)) / K``, so that the fixed cost of a call cancels.
* ``tokens_per_s``: GENERATED tokens per second counted at the maximum
  length, ``2 * batch_size * max_length / step_s`` (also under the explicit
  name ``generated_tokens_per_s``; ``tokens_counted`` says so). Our
  generation always runs all ``max_length`` positions (a fixed-length scan);
  ``counted_tokens_per_s`` counts only the tokens through each response's
  first EOS (``mean_response_tokens`` per response).
* the split: ``generate_s`` (both responses, prompts drawn), ``score_s``
  (the reference's log-probabilities of both), ``oracle_s`` (the labels) and
  ``update_s`` (forward, backward and the optax step), each part jitted
  alone on the same shapes and timed the same way (``K`` iterations in one
  scan, ``t(2K) - t(K)``; scoring, oracle and update read a fixed batch of
  full-length responses, :func:`fixed_batch`); ``parts_sum_s`` is their
  sum, and ``generate_frac``, ``score_frac``, ``oracle_frac``,
  ``update_frac`` their shares of it. The parts are timed apart, so their
  sum need not equal ``step_s`` (XLA fuses across them in the step).
* FLOPs: ``flops_per_step`` from XLA's cost analysis of the step
  (lowered under :func:`nash_jax.policies.sequence.counting_flops`, which
  unrolls the token loop: the cost analysis counts a loop body once), the
  same for each part, ``achieved_flops_per_s = flops_per_step / step_s``,
  and its fraction of the machine's float32 matmul rate
  (``matmul_f32_flops_per_s``: a jitted ``--matmul_size`` square matmul,
  measured in the same run; the bfloat16 rate beside it, and
  ``fraction_of_same_dtype_matmul``).
* ``params_finite_after_chunk``: whether the parameters are still finite
  after ``K`` steps (a step that diverges costs the same, but its counted
  tokens are not those of a working policy).
* ``loadavg_before``/``loadavg_after``: ``/proc/loadavg`` around the
  configuration (other processes on the machine slow every number here).

The environment is the token game of :mod:`nash_jax.environments.tokens`
with ``V = --vocab_size - 3`` content tokens (the annotators read content
tokens, so the oracle works for any ``V`` and length) and ``--num_prompts``
prompts. Its responses cannot be listed at these sizes (``253^16`` of them
at the defaults), so the environment's data is built without the listing
(:func:`env_params`): the step never reads the listed responses or
``log pi_ref`` over them, which only the exact metrics use.

TRL (``--trl=auto``, the default: when ``torch``, ``transformers`` and
``trl`` import): the same binary then runs TRL's ``OnlineDPOTrainer`` with
``loss_type="ipo"`` (``trl.experimental.online_dpo`` in current TRL) on a
Hugging Face model of the same architecture and size (``--trl_model=llama``:
``LlamaForCausalLM``, the same RMSNorm / RoPE / SwiGLU / tied-embedding
decoder; or ``gpt2``), built offline from a config with a word-level
tokenizer of the same vocabulary, the same batch (``--batch_size`` prompts,
two completions each), prompt and generation lengths, the same dtype (the
model's weights in that dtype, as ours) and a cheap reward function reading
the completion's tokens in place of the annotators. Its steady-state step
time is the mean over ``--trl_steps`` steps after ``--trl_warmup`` (the
trainer's own loop, timed by a callback at each step's end); generation,
reference scoring and the reward are timed by wrapping the trainer's
``_generate``, its ``_forward`` when called with the reference model, and
its reward computation; the update (policy forward, backward, AdamW) is
the rest. TRL's own default ``gradient_checkpointing=True`` would also
generate without a key-value cache; it is off here
(``--trl_gradient_checkpointing``), as in our step. TRL runs once per
``--trl_threads`` torch thread count and the fastest is reported (on a
shared 2-core machine one thread can be many times faster than two). TRL
runs on the device class ours runs on: on CUDA when JAX's default backend
is a GPU (and torch sees one; ``trl_device``), else on the CPU. The
line gains ``trl_*`` fields and ``ratio_vs_trl`` (our tokens per second
over TRL's, both counted at the maximum length). Without TRL one JSON line
says the comparison was skipped and why.

Every line is one JSON object (``record``: ``machine``, ``config``,
``trl_skipped``, ``summary``); they are also written to ``--output``
(JSON lines). Bad flags stop before any work with one ``error: --flag:
...`` line and exit status 2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments import common
from nash_jax import rules
from nash_jax.algorithms import AlgorithmConfig, make_algorithm
from nash_jax.algorithms.base import make_optimizer
from nash_jax.algorithms.sampled import Batch
from nash_jax.environments import tokens as tokens_lib
from nash_jax.policies import sequence, transformer
from nash_jax.tasks.language_model import sequence_policy
from nash_jax.tasks.token_game import environment as token_environment

DTYPES = ('float32', 'bfloat16')
TRL_MODES = ('auto', 'on', 'off')
TRL_MODELS = ('llama', 'gpt2')

flags.DEFINE_list('sizes', ['2x128', '4x256'], 'Model sizes LAYERSxD_MODEL.')
flags.DEFINE_list('dtypes', list(DTYPES), 'Parameter and activation dtypes: '
                  'float32, bfloat16.')
flags.DEFINE_integer('head_dim', 32, 'Features per attention head (heads = '
                     'd_model / head_dim, multi-head attention).')
flags.DEFINE_integer('mlp_ratio', 4, 'SwiGLU hidden width / d_model.')
flags.DEFINE_integer('vocab_size', 256, 'Model vocabulary: PAD, BOS, EOS and '
                     'vocab_size - 3 content tokens.')
flags.DEFINE_integer('batch_size', 32, 'Prompts per step (two responses '
                     'each, one comparison).')
flags.DEFINE_integer('prompt_length', 8, 'Tokens per prompt (BOS, topic, '
                     'fillers).')
flags.DEFINE_integer('max_length', 16, 'New tokens per response (maximum).')
flags.DEFINE_integer('num_prompts', 64, 'Distinct prompts to draw from.')
flags.DEFINE_integer('steps', 8, 'Steps K per compiled chunk (K and 2K '
                     'steps are timed).')
flags.DEFINE_integer('repeats', 3, 'Timings of each of K and 2K steps (the '
                     'best is kept).')
flags.DEFINE_float('beta', 0.1, 'IPO beta.')
flags.DEFINE_float('learning_rate', 1e-4, 'adam step size.')
flags.DEFINE_integer('matmul_size', 1024, 'm of the m x m matmul rate.')
flags.DEFINE_enum('trl', 'auto', TRL_MODES, 'TRL comparison: auto (when '
                  'torch and trl import), on (refuse to start without '
                  'them), off.')
flags.DEFINE_enum('trl_model', 'llama', TRL_MODELS, 'Hugging Face '
                  'architecture of the TRL run: llama (the same as ours) '
                  'or gpt2.')
flags.DEFINE_integer('trl_steps', 8, 'TRL steps timed (after warm-up).')
flags.DEFINE_integer('trl_warmup', 2, 'TRL steps before timing.')
flags.DEFINE_bool('trl_gradient_checkpointing', False, 'TRL\'s default '
                  '(true) recomputes activations in the backward pass and '
                  'generates without a key-value cache; false (the '
                  'default here) matches our step.')
flags.DEFINE_list('trl_threads', ['1', '0'], 'torch intra-op thread '
                  'counts to run TRL with (0: torch\'s default, the '
                  'cores); the fastest is reported.')
flags.DEFINE_string('output', 'results/benchmark_lm.jsonl', 'JSON-lines '
                    'output (every printed line).')

TRL_MISSING = None  # Set by _trl_status.
TORCH_DEFAULT_THREADS = None  # torch's own thread count, read once.


# ------------------------------------------------------------------ flags


def parse_size(text: str) -> tuple[int, int]:
  """``'2x128' -> (2, 128)``; raises ValueError."""
  layers, sep, d_model = text.strip().lower().partition('x')
  if not sep:
    raise ValueError(text)
  return int(layers), int(d_model)


def _trl_status() -> str | None:
  """None when torch, transformers, datasets and trl can be imported
  (found, not imported: importing torch takes seconds), else why not."""
  missing = [m for m in ('torch', 'transformers', 'datasets', 'trl')
             if importlib.util.find_spec(m) is None]
  if missing:
    return f'{", ".join(missing)} not installed (pip install torch trl)'
  return None


def validate_flags():
  """Every refusal before any work: one ``error: --flag: ...`` line."""
  f = flags.FLAGS
  sizes = []
  for text in f.sizes:
    try:
      layers, d_model = parse_size(text)
    except ValueError:
      common.fail(f'--sizes: expected LAYERSxD_MODEL (e.g. 2x128), got '
                  f'{text!r}')
    if layers < 1 or d_model < 1:
      common.fail(f'--sizes: layers and d_model must be >= 1, got {text!r}')
    sizes.append((layers, d_model))
  if not sizes:
    common.fail('--sizes: give at least one size')
  for flag, minimum in (('head_dim', 2), ('mlp_ratio', 1), ('vocab_size', 4),
                        ('batch_size', 1), ('prompt_length', 2),
                        ('max_length', 1), ('num_prompts', 1), ('steps', 1),
                        ('repeats', 1), ('matmul_size', 16), ('trl_steps', 1),
                        ('trl_warmup', 0)):
    if f[flag].value < minimum:
      common.fail(f'--{flag}: must be >= {minimum}, got {f[flag].value}')
  if f.head_dim % 2:
    common.fail(f'--head_dim: must be even (RoPE rotates pairs), got '
                f'{f.head_dim}')
  for layers, d_model in sizes:
    if d_model % f.head_dim:
      common.fail(f'--sizes: d_model={d_model} is not a multiple of '
                  f'--head_dim={f.head_dim}')
  if not f.dtypes:
    common.fail('--dtypes: give at least one dtype')
  for dtype in f.dtypes:
    if dtype not in DTYPES:
      common.fail(f'--dtypes: unknown dtype {dtype!r}; expected one of '
                  f'{", ".join(DTYPES)}')
  try:
    threads = [int(t) for t in f.trl_threads]
  except ValueError:
    common.fail(f'--trl_threads: must be comma-separated integers, got '
                f'{",".join(f.trl_threads)}')
  if not threads or min(threads) < 0:
    common.fail(f'--trl_threads: must be integers >= 0 (0: torch\'s '
                f'default), got {",".join(f.trl_threads)}')
  if not (np.isfinite(f.beta) and f.beta > 0):
    common.fail(f'--beta: must be a finite number > 0, got {f.beta}')
  if not (np.isfinite(f.learning_rate) and f.learning_rate > 0):
    common.fail(f'--learning_rate: must be a finite number > 0, got '
                f'{f.learning_rate}')
  common.check_output_file(f.output)
  global TRL_MISSING
  TRL_MISSING = None if f.trl == 'off' else _trl_status()
  if f.trl == 'on' and TRL_MISSING:
    common.fail(f'--trl: on, but {TRL_MISSING}')
  return sizes


# ---------------------------------------------------------------- machine


def matmul_rate(dtype: str, size: int, repeats: int) -> float:
  """FLOP/s of a jitted ``size x size`` matmul (``2 size^3`` FLOPs), best
  of ``repeats`` timings of enough calls to take about 0.2 s."""
  return common.jax_matmul_rate(dtype, size, 0.2, repeats)


# ----------------------------------------------------------- environment


def token_spec(vocab_size: int, max_length: int, num_prompts: int,
               prompt_length: int) -> tokens_lib.TokenEnvSpec:
  """The token game with ``vocab_size - 3`` content tokens. Its
  ``max_responses`` is the exact (huge) number of responses, so that the
  listing check passes; nothing here lists them."""
  content = vocab_size - tokens_lib.NUM_SPECIAL
  return tokens_lib.TokenEnvSpec(
      vocab_size=content, max_length=max_length, num_prompts=num_prompts,
      prompt_length=prompt_length,
      max_responses=tokens_lib.num_responses(content, max_length))


def env_params(spec: tokens_lib.TokenEnvSpec, reference):
  """The environment's data for the step only: prompts, the annotators and
  the reference model. ``token_env_params`` would list every response (and
  score them all with the reference) for the exact metrics, impossible at
  these sizes; the step reads neither, so ``responses`` is one placeholder
  response and ``ref_log_policy`` a ``[X, 1]`` zero (not a distribution over
  responses: only the exact metrics would read it)."""
  prompts, mask = tokens_lib.make_prompts(spec)
  weights = np.asarray(spec.annotator_weights, np.float64)
  num_x = spec.num_prompts
  placeholder = tokens_lib.make_response([], spec.max_length)[None]
  return tokens_lib.TokenEnvParams(
      prompts=jnp.asarray(prompts), prompt_mask=jnp.asarray(mask),
      context_weights=jnp.full((num_x,), 1.0 / num_x, jnp.float32),
      responses=jnp.asarray(placeholder),
      sharpness=jnp.asarray(spec.sharpness, jnp.float32),
      annotator_weights=jnp.asarray(weights / weights.sum(), jnp.float32),
      ref_log_policy=jnp.zeros((num_x, 1), jnp.float32), reference=reference)


def model_config(layers: int, d_model: int, dtype: str
                 ) -> transformer.TransformerConfig:
  f = flags.FLAGS
  heads = d_model // f.head_dim
  return transformer.TransformerConfig(
      vocab_size=f.vocab_size, d_model=d_model, num_layers=layers,
      num_heads=heads, num_kv_heads=heads, mlp_dim=f.mlp_ratio * d_model,
      tie_embeddings=True, param_dtype=dtype)


# ---------------------------------------------------------------- timing


def time_chunk(body, carry, args, steps: int, repeats: int):
  """Steady-state seconds per iteration of ``body(carry, *args) -> carry``
  run ``steps`` times in one jitted ``lax.scan``: after compilation and a
  warm-up call, the best of ``repeats`` timings of one call (``K``
  iterations) and of two chained calls (``2K``); returns ``((t2 - t1) / K,
  compile seconds, the carry after one call, FLOPs)``. The FLOPs are XLA's
  cost analysis of the chunk, which counts the scan's body once: one
  iteration's FLOPs where the body has no loop of its own (where it has,
  as generation does, see :func:`flops_of`)."""

  def chunk(carry, *args):
    return jax.lax.scan(lambda c, _: (body(c, *args), None), carry, None,
                        length=steps)[0]

  start = time.perf_counter()
  lowered = jax.jit(chunk).lower(carry, *args)
  flops = _flops(lowered)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  once = compiled(carry, *args)
  jax.block_until_ready(once)
  one = common.best_time(lambda: jax.block_until_ready(compiled(carry, *args)), repeats)
  two = common.best_time(lambda: jax.block_until_ready(
      compiled(compiled(carry, *args), *args)), repeats)
  return max(two - one, 1e-9) / steps, compile_s, once, flops


def flops_of(fn, *args) -> float:
  """XLA's FLOP count of ``fn(*args)``, with generate's token loop
  unrolled so that every token counts (a fresh jit: traces are cached per
  function object)."""
  with sequence.counting_flops():
    return _flops(jax.jit(lambda *a: fn(*a)).lower(*args))


def _flops(lowered) -> float:
  """``flops`` of a lowered computation's cost analysis (NaN if none)."""
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def fixed_batch(env, env_data, batch: int, length: int) -> Batch:
  """The inputs of the scoring, oracle and update parts: prompts drawn as
  the step draws them, and full-length responses of uniform content tokens
  (what the step's samples look like: at these sizes hardly any response
  ends before ``length``; the parts' cost does not depend on the token
  values), labels and reference log-probabilities drawn at random (their
  values do not change the cost either). Built without compiling the
  generation a second time."""
  rng = np.random.default_rng(0)
  x = env.contexts(env_data, jax.random.PRNGKey(2), batch)
  y, y_prime = (jnp.asarray(rng.integers(
      tokens_lib.FIRST_CONTENT, flags.FLAGS.vocab_size, (batch, length)),
      jnp.int32) for _ in range(2))
  return Batch(contexts=x, responses=y, opponents=y_prime,
               outcomes=jnp.asarray(rng.integers(0, 2, batch), jnp.float32),
               log_ref=jnp.asarray(-length * rng.random(batch), jnp.float32),
               log_ref_opponent=jnp.asarray(-length * rng.random(batch),
                                            jnp.float32))


def bench_ours(layers: int, d_model: int, dtype: str, matmul: dict) -> dict:
  """One configuration's JSON record (without TRL's fields)."""
  f = flags.FLAGS
  batch, length = f.batch_size, f.max_length
  tconfig = model_config(layers, d_model, dtype)
  spec = token_spec(f.vocab_size, length, f.num_prompts, f.prompt_length)
  reference = transformer.init_params(jax.random.PRNGKey(0), tconfig)
  env_data = env_params(spec, reference)
  policy = sequence_policy(tconfig, length, 1.0)
  env = token_environment(spec, 'bernoulli', tconfig, 1.0)
  config = AlgorithmConfig(beta=f.beta, mode='sampled', batch_size=batch,
                           learning_rate=f.learning_rate, optimizer='adam')
  algorithm = make_algorithm('online_ipo', config, policy, env)
  state = algorithm.init(jax.random.PRNGKey(1), env_data)
  num_params = sum(int(np.prod(p.shape))
                   for p in jax.tree.leaves(state.params))
  record = {'record': 'config', 'framework': 'nash_jax',
            'layers': layers, 'd_model': d_model, 'dtype': dtype,
            'num_heads': tconfig.num_heads, 'head_dim': tconfig.head_size,
            'mlp_dim': tconfig.mlp_dim, 'vocab_size': f.vocab_size,
            'params': num_params, 'batch_prompts': batch,
            'responses_per_prompt': 2, 'prompt_length': f.prompt_length,
            'new_tokens': length, 'steps_per_chunk': f.steps,
            'loadavg_before': common.loadavg()}

  # The full step, K of them per compiled chunk.
  step_body = lambda s, e: algorithm.step(s, e)[0]
  step_s, compile_s, after, _ = time_chunk(step_body, state, (env_data,),
                                           f.steps, f.repeats)
  counted = int(after.generated_tokens - state.generated_tokens)
  finite = all(np.isfinite(np.asarray(p, np.float32)).all()
               for p in jax.tree.leaves(after.params))
  max_tokens = 2 * batch * length
  mean_len = counted / (2 * batch * f.steps)

  # The parts, each alone on the same shapes.
  params = state.params
  fixed = fixed_batch(env, env_data, batch, length)
  optimizer = make_optimizer(config)

  def generate(carry, params, e):
    key, acc = carry
    key, kx, ky, kp = jax.random.split(key, 4)
    x = env.contexts(e, kx, batch)
    y = policy.sample(ky, params, x, 0.0, None)
    y_prime = policy.sample(kp, params, x, 0.0, None)
    return key, acc + jnp.sum(y) + jnp.sum(y_prime)

  def score(carry, y, y_prime, e):
    key, acc = carry
    key, kx = jax.random.split(key)
    x = env.contexts(e, kx, batch)
    total = (env.ref_log_prob(e, x, y) + env.ref_log_prob(e, x, y_prime))
    return key, acc + jnp.sum(total)

  def oracle(carry, y, y_prime, e):
    key, acc = carry
    key, kx, ko = jax.random.split(key, 3)
    x = env.contexts(e, kx, batch)
    return key, acc + jnp.sum(env.outcomes(e, ko, x, y, y_prime))

  def loss_fn(params, b):
    log_y = policy.log_prob(params, b.contexts, b.responses)
    log_y_prime = policy.log_prob(params, b.contexts, b.opponents)
    return jnp.mean(rules.online_ipo_sample_loss(
        log_y, log_y_prime, b.log_ref, b.log_ref_opponent, b.outcomes,
        f.beta))

  def update(carry, b):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, b)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  key_carry = (jax.random.PRNGKey(3), jnp.zeros((), jnp.float32))
  parts = {
      'generate': (generate, key_carry, (params, env_data)),
      'score': (score, key_carry,
                (fixed.responses, fixed.opponents, env_data)),
      'oracle': (oracle, key_carry,
                 (fixed.responses, fixed.opponents, env_data)),
      'update': (update, (params, state.opt_state), (fixed,)),
  }
  times, part_flops = {}, {}
  for name, (body, carry, args) in parts.items():
    times[name], _, _, part_flops[name] = time_chunk(body, carry, args,
                                                     f.steps, f.repeats)
  # Generation loops over tokens: counted again with the loop unrolled.
  part_flops['generate'] = flops_of(generate, key_carry, params, env_data)
  total = sum(times.values())
  step_flops = flops_of(step_body, state, env_data)
  achieved = step_flops / step_s
  record.update({
      'step_s': step_s, 'tokens_per_s': max_tokens / step_s,
      'generated_tokens_per_s': max_tokens / step_s,
      'tokens_counted': 'max_length: 2 * batch_prompts * new_tokens per '
                        'step (generation always runs every position)',
      'counted_tokens_per_s': counted / f.steps / step_s,
      'mean_response_tokens': mean_len,
      'params_finite_after_chunk': finite,
      'compile_s': compile_s,
      **{f'{name}_s': t for name, t in times.items()},
      'parts_sum_s': total,
      **{f'{name}_frac': times[name] / total
         for name in ('generate', 'score', 'oracle', 'update')},
      'flops_per_step': step_flops,
      **{f'{name}_flops': part_flops[name] for name in part_flops},
      'achieved_flops_per_s': achieved,
      'matmul_f32_flops_per_s': matmul['float32'],
      'matmul_bf16_flops_per_s': matmul['bfloat16'],
      'fraction_of_f32_matmul': achieved / matmul['float32'],
      'fraction_of_same_dtype_matmul': achieved / matmul[dtype],
  })
  return record


# ------------------------------------------------------------------- TRL


def _prompt_texts(spec: tokens_lib.TokenEnvSpec, count: int) -> list[str]:
  """``count`` prompts (the environment's, cycled) as text of the
  word-level tokenizer: ``<s> t<id> t<id> ...``."""
  prompts, _ = tokens_lib.make_prompts(spec)
  texts = [' '.join(['<s>'] + [f't{int(i)}' for i in row[1:]])
           for row in prompts]
  return [texts[i % len(texts)] for i in range(count)]


def _trl_tokenizer(vocab_size: int):
  """A word-level Hugging Face tokenizer of ``vocab_size`` ids: ``<pad>``
  0, ``<s>`` 1, ``</s>`` 2 and ``t3 .. t<V-1>`` (built offline)."""
  import tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {'<pad>': 0, '<s>': 1, '</s>': 2}
  vocab.update({f't{i}': i for i in range(3, vocab_size)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, '<pad>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix='##', cleanup=False)
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>',
                                 bos_token='<s>', eos_token='</s>')


def _trl_model(layers: int, d_model: int, dtype: str):
  """A randomly initialized Hugging Face causal LM of our size: Llama (the
  same architecture as ours: RMSNorm, RoPE, multi-head attention, SwiGLU of
  ``mlp_ratio * d_model``, tied embeddings) or GPT-2 (its GELU MLP of the
  same width), in ``dtype``."""
  import torch
  import transformers
  f = flags.FLAGS
  heads = d_model // f.head_dim
  positions = f.prompt_length + f.max_length + 8
  if f.trl_model == 'llama':
    config = transformers.LlamaConfig(
        vocab_size=f.vocab_size, hidden_size=d_model,
        intermediate_size=f.mlp_ratio * d_model, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=f.head_dim, max_position_embeddings=positions,
        rms_norm_eps=1e-6, rope_theta=10_000.0, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)
  else:
    config = transformers.GPT2Config(
        vocab_size=f.vocab_size, n_positions=positions, n_embd=d_model,
        n_layer=layers, n_head=heads, n_inner=f.mlp_ratio * d_model,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)
    model = transformers.GPT2LMHeadModel(config)
  model.generation_config.pad_token_id = 0
  model.generation_config.eos_token_id = 2
  model.generation_config.bos_token_id = 1
  return model.to({'float32': torch.float32,
                   'bfloat16': torch.bfloat16}[dtype])


def _trl_on_gpu() -> bool:
  """TRL runs on the device class ours runs on: CUDA when JAX's default
  backend is a GPU and torch sees one, else the CPU."""
  import torch
  return jax.default_backend() == 'gpu' and torch.cuda.is_available()


def _topic_reward(prompts, completions, completion_ids, **kwargs):
  """The reward stand-in (cheap, like the annotators): topic mentions, minus
  a tenth of the length, plus a tenth of the distinct other tokens."""
  del completions, kwargs
  rewards = []
  for prompt, ids in zip(prompts, completion_ids):
    topic = int(prompt.split()[1][1:])
    ids = [i for i in ids if i >= tokens_lib.FIRST_CONTENT]
    rewards.append(ids.count(topic) - 0.1 * len(ids) +
                   0.1 * len(set(ids) - {topic}))
  return rewards


def trl_run(layers: int, d_model: int, dtype: str, threads: int) -> dict:
  """One timed ``OnlineDPOTrainer.train()`` (``loss_type='ipo'``) on our
  size, batch, lengths and dtype with ``threads`` torch threads: its
  steady-state step and parts (seconds), tokens counted through EOS and
  the parameter count."""
  import tempfile

  os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
  import datasets
  import torch
  import transformers
  from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
  f = flags.FLAGS
  warnings.filterwarnings('ignore', category=FutureWarning)
  transformers.logging.set_verbosity_error()
  datasets.disable_progress_bars()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  batch, length = f.batch_size, f.max_length
  total_steps = f.trl_warmup + f.trl_steps
  spec = token_spec(f.vocab_size, length, f.num_prompts, f.prompt_length)
  data = datasets.Dataset.from_dict(
      {'prompt': _prompt_texts(spec, batch * total_steps)})
  model = _trl_model(layers, d_model, dtype)
  tokenizer = _trl_tokenizer(f.vocab_size)
  ends, parts, counted = [], {'generate': [], 'score': [], 'oracle': []}, []

  class StepClock(transformers.TrainerCallback):

    def on_train_begin(self, args, state, control, **kwargs):
      ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      ends.append(time.perf_counter())

  with tempfile.TemporaryDirectory() as out_dir:
    args = OnlineDPOConfig(
        output_dir=out_dir, loss_type='ipo', beta=[f.beta],
        learning_rate=f.learning_rate, per_device_train_batch_size=batch,
        max_steps=total_steps, max_new_tokens=length,
        max_length=f.prompt_length + length, temperature=1.0, top_k=0,
        top_p=1.0, logging_steps=10 ** 9, save_strategy='no',
        report_to='none', use_cpu=not _trl_on_gpu(), seed=0, bf16=False, fp16=False,
        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type=(
            'constant'), warmup_steps=0, weight_decay=0.0,
        gradient_checkpointing=f.trl_gradient_checkpointing)
    trainer = OnlineDPOTrainer(
        model=model, reward_funcs=_topic_reward, args=args,
        train_dataset=data, processing_class=tokenizer,
        callbacks=[StepClock()])

    def timed(name, fn, pick=None):
      def wrapper(*a, **k):
        start = time.perf_counter()
        result = fn(*a, **k)
        key = name if pick is None else pick(*a)
        if key:
          parts[key].append(time.perf_counter() - start)
        if name == 'generate':
          counted.append(int(result[3].sum()))
        return result
      return wrapper

    trainer._generate = timed('generate', trainer._generate)
    trainer._forward = timed(
        'forward', trainer._forward,
        lambda model, *a: 'score' if model is trainer.ref_model else None)
    trainer._calculate_rewards_from_functions = timed(
        'oracle', trainer._calculate_rewards_from_functions)
    with contextlib.redirect_stdout(sys.stderr):  # Its summary dict.
      trainer.train()
  warm = f.trl_warmup
  # ends[0] is the start of training, ends[i] the end of step i.
  step_s = (ends[-1] - ends[warm]) / f.trl_steps
  mean = {k: float(np.mean(v[warm:])) for k, v in parts.items()}
  return {'threads': threads, 'step_s': step_s, **mean,
          'update': step_s - sum(mean.values()),
          'counted': float(np.mean(counted[warm:])),
          'params': sum(p.numel() for p in trainer.model.parameters())}


def trl_bench(layers: int, d_model: int, dtype: str, ours: dict) -> dict:
  """TRL's fields (``trl_*``) and ``ratio_vs_trl`` for one configuration:
  the fastest of the runs with each of ``--trl_threads``."""
  import torch
  import transformers
  f = flags.FLAGS
  global TORCH_DEFAULT_THREADS
  if TORCH_DEFAULT_THREADS is None:  # Before any set_num_threads.
    TORCH_DEFAULT_THREADS = torch.get_num_threads()
  runs = []
  for threads in f.trl_threads:
    runs.append(trl_run(layers, d_model, dtype,
                        int(threads) or TORCH_DEFAULT_THREADS))
  best = min(runs, key=lambda r: r['step_s'])
  step_s = best['step_s']
  max_tokens = 2 * f.batch_size * f.max_length
  trl_tokens = max_tokens / step_s
  return {
      'trl_impl': 'trl.experimental.online_dpo.OnlineDPOTrainer '
                  'loss_type=ipo',
      'trl_version': _version('trl'), 'torch_version': torch.__version__,
      'transformers_version': transformers.__version__,
      'trl_model': f.trl_model, 'trl_params': best['params'],
      'trl_device': 'cuda' if _trl_on_gpu() else 'cpu',
      'trl_gradient_checkpointing': f.trl_gradient_checkpointing,
      'trl_torch_threads': best['threads'],
      'trl_tokens_per_s_by_threads': {
          str(r['threads']): max_tokens / r['step_s'] for r in runs},
      'trl_steps_timed': f.trl_steps, 'trl_step_s': step_s,
      'trl_tokens_per_s': trl_tokens,
      'trl_counted_tokens_per_s': best['counted'] / step_s,
      'trl_generate_s': best['generate'], 'trl_score_s': best['score'],
      'trl_oracle_s': best['oracle'], 'trl_update_s': best['update'],
      **{f'trl_{k}_frac': best[k] / step_s
         for k in ('generate', 'score', 'oracle', 'update')},
      'ratio_vs_trl': ours['tokens_per_s'] / trl_tokens,
  }


def _version(name: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return 'unknown'


# ------------------------------------------------------------------ main


def emit(record: dict, out) -> None:
  line = json.dumps(record)
  print(line, flush=True)
  out.write(line + '\n')
  out.flush()


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  sizes = validate_flags()
  common.quiet_logs()
  f = flags.FLAGS
  start_load = common.loadavg()
  os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
  device = jax.devices()[0]
  matmul = {d: matmul_rate(d, f.matmul_size, f.repeats) for d in DTYPES}
  trl = None
  with open(f.output, 'w') as out:
    emit({'record': 'machine', 'device': f'{device.platform} '
          f'{device.device_kind}', 'cpu_count': os.cpu_count(),
          'machine': platform.machine(), 'jax': jax.__version__,
          'matmul_size': f.matmul_size,
          'matmul_f32_flops_per_s': matmul['float32'],
          'matmul_bf16_flops_per_s': matmul['bfloat16'],
          'loadavg_start': start_load}, out)
    if f.trl != 'off' and TRL_MISSING is None:
      trl = trl_bench
    if f.trl == 'off':
      emit({'record': 'trl_skipped', 'reason': '--trl=off'}, out)
    elif TRL_MISSING:
      emit({'record': 'trl_skipped', 'reason': TRL_MISSING}, out)
    rows = []
    for layers, d_model in sizes:
      for dtype in f.dtypes:
        record = bench_ours(layers, d_model, dtype, matmul)
        if trl is not None:
          record.update(trl(layers, d_model, dtype, record))
        record['loadavg_after'] = common.loadavg()
        rows.append(record)
        emit(record, out)
    emit({'record': 'summary', 'loadavg_start': start_load,
          'loadavg_end': common.loadavg(),
          'tokens_per_s': {f'{r["layers"]}x{r["d_model"]} {r["dtype"]}':
                           r['tokens_per_s'] for r in rows},
          'ratio_vs_trl': {f'{r["layers"]}x{r["d_model"]} {r["dtype"]}':
                           r.get('ratio_vs_trl') for r in rows}}, out)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
