"""Post-training a Hugging Face checkpoint with NLHF (``experiments.
post_train``; issue 10, items 1 and 6).

Settings in, result files out, as for the token game, with the same
algorithms, trainer, checkpoints and result writers:

* :class:`PostTrainConfig`, :func:`validate_post_train`: every setting
  checked, and every file read (the checkpoint, the tokenizer, the prompt
  file, the judge, its template, the SFT corpus), before any work;
* :func:`run_post_train`: the reference is the checkpoint (after SFT on
  ``--sft_data`` if asked), every seed starts there, the sampled algorithm
  trains the policy against the text environment
  (:mod:`nash_jax.environments.text`) whose preference queries the judge
  answers, and every evaluation estimates by sampling the win rate against
  ``pi_ref`` under the judge and ``KL(pi || pi_ref)``
  (:func:`nash_jax.evaluation.sampled_evaluator`);
* :func:`write_post_train_results`: ``config.json``, ``metrics.csv``,
  ``samples.jsonl`` (decoded text), ``oracle.json``, ``reference.json``
  (with SFT), ``final_model/seed_<s>/`` (a Hugging Face checkpoint of each
  seed's policy, in the source's layout and stored dtype),
  ``manifest.json`` and ``summary.json`` (last).

The judge (:func:`nash_jax.preference_models.make_judge`): a language
model of the same tokenizer (``--judge_dir``, default the policy's own
checkpoint) asked with a template which of two responses is better; the
probability is its next-token softmax over the two answer tokens, averaged
over both orders. With no other ground truth for text, the judge is both
the training oracle and the evaluation's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import evaluation, preference_models, sft
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.environments import text as text_lib
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.experiment.config import (
  _EXACT_ONLY,
  LM_DTYPES,
  LM_SWEEPABLE,
  OracleConfig,
  ParallelConfig,
  RunConfig,
  SampleLogConfig,
  SamplingConfig,
  SFTConfig,
  _check_dtype,
  _check_int_sizes,
  _check_outputs,
  _check_seed,
  _positive_int,
  _resolved,
  check_data_parallel,
  check_model_parallel,
  lm_compute_dtype,
  resolve_algorithm,
  resolve_seed_block,
)
from nash_jax.experiment.inputs import lm_policy, seed_keys
from nash_jax.experiment.results import (
  Results,
  atomic_write,
  write_json,
  write_results,
)
from nash_jax.experiment.run import run_cost, train_recorded
from nash_jax.policies import hf, sequence
from nash_jax.settings import compose, group_of, setting

# The default judge prompt (text; encoded with the judge's tokenizer). An
# instruct judge usually does better with its chat template: write the
# segments in a --judge_template file.
DEFAULT_TEMPLATE = {
    'prefix': 'You compare two responses to a prompt.\n\nPrompt:\n',
    'marker_first': '\n\nResponse A:\n',
    'marker_second': '\n\nResponse B:\n',
    'suffix': '\n\nWhich response is better, A or B?\nAnswer:',
    'answer_first': ' A',
    'answer_second': ' B',
}
TEMPLATE_FIELDS = tuple(DEFAULT_TEMPLATE)
# The online algorithms; the reward-based baselines need a reward model or
# listed responses that a text environment does not have.
ALGORITHMS = ('online_ipo', 'self_play_pg', 'nash_prox', 'approx_nash_mp',
              'nash_md_pg', 'dpo', 'offline_ipo')


# bt_rlhf's reward fit, which no algorithm here runs.
_REWARD_FIT = ('reward_steps', 'reward_learning_rate')


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """The checkpoint post-trained, its prompts and its judge."""

  model_dir: str | None = setting(
      None, 'Hugging Face model directory (config.json, *.safetensors, '
      'tokenizer.json) of a Qwen3, Llama or Qwen2 decoder: the reference '
      'pi_ref and every seed\'s starting point. Required.', str)
  prompts: str | None = setting(
      None, 'JSONL prompt file: one object per line with a "prompt" text '
      'field, tokenized as is with the checkpoint\'s tokenizer (apply an '
      'instruct model\'s chat template in the file). Required.', str)
  max_prompt_length: int | None = setting(
      None, 'Padded prompt width in tokens (default: the longest prompt); '
      'a longer prompt is refused.', int)
  max_length: int = setting(32, 'New tokens per response (maximum); a '
                            'response that does not end by then is cut.')
  judge_dir: str | None = setting(
      None, 'Hugging Face model directory of the judge, a causal LM with the '
      'same tokenizer (default: --model_dir, the policy\'s own checkpoint '
      'judging).', str)
  judge_template: str | None = setting(
      None, 'JSON file of the judge prompt\'s text segments: ' +
      ', '.join(TEMPLATE_FIELDS) + ' (the answers must be one token each). '
      'Default: a plain English template asking for " A" or " B".', str)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """Supervised fine-tuning of the checkpoint on a text corpus before
  post-training (item 1: a sensible, non-uniform pi_ref)."""

  sft_data: str | None = setting(
      None, 'JSONL corpus: one object per line with "prompt" and "response" '
      'text fields. With --sft_steps > 0 the checkpoint is fine-tuned on it '
      '(responses end with the end token, cut at --max_length) and becomes '
      'pi_ref.', str)


PostTrainConfig = compose(
    'PostTrainConfig', (CheckpointConfig, OracleConfig,
                        (AlgorithmConfig, _EXACT_ONLY + _REWARD_FIT),
                        SamplingConfig,
                        (SFTConfig, ('corpus_stop', 'corpus_topic')),
                        CorpusConfig, SampleLogConfig, RunConfig,
                        ParallelConfig),
    """Every setting of ``experiments.post_train``: the flat composition of
    :class:`CheckpointConfig`, :class:`~nash_jax.experiment.config.
    OracleConfig`, :class:`~nash_jax.algorithms.AlgorithmConfig` (sampled
    mode), :class:`~nash_jax.experiment.config.SamplingConfig`, the SFT
    settings, :class:`CorpusConfig`, :class:`~nash_jax.experiment.config.
    SampleLogConfig`, :class:`~nash_jax.experiment.config.RunConfig` and
    :class:`~nash_jax.experiment.config.ParallelConfig`.""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     '__module__': __name__},
    defaults={'mode': 'sampled', 'algorithm': 'nash_prox', 'num_steps': 200,
              'eval_every': 50, 'dtype': 'float32', 'num_seeds': 1,
              'batch_size': 8, 'num_samples': 4,
              'output_dir': 'results/post_train', 'checkpoint_every': 100,
              'sft_batch_size': 8, 'sft_learning_rate': 1e-5})


@dataclasses.dataclass(frozen=True)
class Judge:
  """The judge read from disk (hashable by identity where it matters)."""

  config: Any
  params: Any = dataclasses.field(compare=False, hash=False, repr=False)
  template: preference_models.JudgeTemplate = None
  model_dir: str = ''


@dataclasses.dataclass
class Loaded:
  """What :func:`validate_post_train` read: the policy's architecture,
  reference parameters and token ids, the tokenizer, the prompts (texts
  and encoded), the judge and the SFT corpus (encoded, or None)."""

  tconfig: Any
  params: Any
  info: Any
  tokenizer: Any
  prompt_texts: list
  contexts: TokenContexts
  judge: Judge
  corpus: tuple | None = None


def _read_template(path, tokenizer):
  """The judge template from a JSON file (or the default), encoded."""
  fields = dict(DEFAULT_TEMPLATE)
  if path is not None:
    try:
      with open(path, encoding='utf-8') as f:
        given = json.load(f)
    except FileNotFoundError:
      raise ConfigError('judge_template', f'{path}: no such file') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ConfigError('judge_template', f'{path}: cannot be read as JSON '
                        f'({str(e).splitlines()[0]})') from None
    if not isinstance(given, dict):
      raise ConfigError('judge_template', f'{path}: must be a JSON object '
                        f'with the fields {", ".join(TEMPLATE_FIELDS)}')
    unknown = sorted(set(given) - set(TEMPLATE_FIELDS))
    if unknown:
      raise ConfigError('judge_template', f'{path}: unknown fields '
                        f'{", ".join(unknown)}; expected '
                        f'{", ".join(TEMPLATE_FIELDS)}')
    for k, v in given.items():
      if not isinstance(v, str):
        raise ConfigError('judge_template', f'{path}: "{k}" must be a '
                          f'string, got {type(v).__name__}')
    fields.update(given)
  where = path or 'the default template'

  def ids(name):
    return tuple(tokenizer.encode(fields[name],
                                  add_special_tokens=False).ids)

  answers = []
  for name in ('answer_first', 'answer_second'):
    encoded = ids(name)
    if len(encoded) != 1:
      raise ConfigError('judge_template', f'{where}: {name} '
                        f'{fields[name]!r} is {len(encoded)} tokens of the '
                        f'judge\'s tokenizer; it must be exactly one')
    answers.append(encoded[0])
  if answers[0] == answers[1]:
    raise ConfigError('judge_template', f'{where}: answer_first and '
                      f'answer_second are the same token ({answers[0]})')
  return preference_models.JudgeTemplate(
      ids('prefix'), ids('marker_first'), ids('marker_second'),
      ids('suffix'), answers[0], answers[1])


def _check_template_ids(template, vocab_size: int, path) -> None:
  """Refuses a template whose token ids the judge's vocabulary lacks."""
  used = (list(template.prefix + template.marker_first +
               template.marker_second + template.suffix) +
          [template.answer_first, template.answer_second])
  if max(used) >= vocab_size:
    raise ConfigError('judge_template', f'{path or "the default template"}: '
                      f'encodes to token ids beyond the judge\'s vocabulary '
                      f'({vocab_size})')


def _read_corpus(path, tokenizer, ids: sequence.TokenIds, max_length: int,
                 add_special_tokens: bool = True):
  """``(contexts, responses [C, L], report)`` of a JSONL corpus of
  prompt/response texts; responses end with the end token and are cut at
  ``max_length`` tokens."""
  prompts = hf.read_prompts(path, 'sft_data', 'prompt')
  responses = hf.read_prompts(path, 'sft_data', 'response')
  try:
    contexts = hf.encode_prompts(tokenizer, prompts, ids.pad,
                                 add_special_tokens=add_special_tokens,
                                 source=str(path))
  except ConfigError as e:  # It names --prompts; the file is the corpus.
    raise ConfigError('sft_data', str(e).split(': ', 1)[1]) from None
  y = np.full((len(responses), max_length), ids.pad, np.int32)
  cut = 0
  for i, enc in enumerate(tokenizer.encode_batch(responses,
                                                 add_special_tokens=False)):
    row = list(enc.ids) + [ids.eos]
    if len(row) > max_length:
      cut += 1
      row = row[:max_length]
    y[i, :len(row)] = row
  report = {'sft_data': str(path), 'corpus_size': len(responses),
            'responses_cut_at_max_length': cut}
  return contexts, jnp.asarray(y), report


def validate_post_train(config) -> tuple[Any, Loaded]:
  """Checks every setting and reads every input file before any work.

  Returns:
    ``(config, loaded)``: the resolved config (the algorithm's defaults
    filled in) and the :class:`Loaded` inputs.

  Raises:
    ConfigError: one line naming the flag (and the file).
  """
  _check_int_sizes(config)
  if config.algorithm not in ALGORITHMS:
    raise ConfigError('algorithm', f'{config.algorithm!r} does not run on a '
                      f'checkpoint; expected one of {", ".join(ALGORITHMS)}')
  _check_dtype(config, LM_DTYPES)
  for flag in ('model_dir', 'prompts'):
    if not getattr(config, flag):
      raise ConfigError(flag, 'is required')
  for flag, minimum in (('num_steps', 1), ('eval_every', 1), ('num_seeds', 1),
                        ('seed_block', 1), ('checkpoint_every', 0),
                        ('keep_checkpoints', 1), ('num_samples', 1),
                        ('max_length', 1), ('max_prompt_length', 1),
                        ('sft_steps', 0), ('sft_batch_size', 1)):
    if getattr(config, flag) is not None:
      _positive_int(config, flag, minimum)
  _check_seed(config)
  if not (math.isfinite(config.temperature) and config.temperature > 0):
    raise ConfigError('temperature', f'must be a finite number > 0, got '
                      f'{config.temperature}')
  if config.oracle not in text_lib.ORACLES:
    raise ConfigError('oracle', f'unknown oracle {config.oracle!r}; expected '
                      f'one of {", ".join(text_lib.ORACLES)}')
  if not (math.isfinite(config.sft_learning_rate)
          and config.sft_learning_rate > 0):
    raise ConfigError('sft_learning_rate', f'must be a finite number > 0, '
                      f'got {config.sft_learning_rate}')
  if config.sft_steps and not config.sft_data:
    raise ConfigError('sft_steps', 'needs --sft_data (the corpus to '
                      'fine-tune the checkpoint on)')
  _check_outputs(config)
  check_data_parallel(config)
  if config.data_parallel == 1:
    config = config.replace(data_parallel=None)
  if config.schedule == 'cosine' and config.decay_steps is None:
    config = config.replace(decay_steps=config.num_steps)
  # The model parallel factor against the checkpoint's architecture
  # (config.json only).
  check_model_parallel(config, hf.checkpoint_config(config.model_dir))
  if config.model_parallel == 1:
    config = config.replace(model_parallel=None)
  # Files, the small ones first, so that a bad prompt file, template or
  # corpus is refused before gigabytes of weights are read.
  prompt_texts = hf.read_prompts(config.prompts, 'prompts')
  tokenizer = hf.load_tokenizer(config.model_dir)
  if config.max_prompt_length is not None:
    for i, enc in enumerate(tokenizer.encode_batch(prompt_texts)):
      if len(enc.ids) > config.max_prompt_length:
        raise ConfigError('prompts', f'{config.prompts}: prompt {i} has '
                          f'{len(enc.ids)} tokens, more than '
                          f'--max_prompt_length={config.max_prompt_length}')
  same_judge = config.judge_dir is None or (
      Path(config.judge_dir).resolve() == Path(config.model_dir).resolve())
  judge_tokenizer = tokenizer
  if not same_judge:
    judge_tokenizer = hf.load_tokenizer(config.judge_dir, 'judge_dir')
    if judge_tokenizer.get_vocab(with_added_tokens=True) != \
        tokenizer.get_vocab(with_added_tokens=True):
      raise ConfigError('judge_dir', f'{config.judge_dir}: its tokenizer '
                        f'differs from --model_dir\'s; the judge reads the '
                        f'policy\'s token ids, so both must share one')
  template = _read_template(config.judge_template, judge_tokenizer)
  if config.sft_data:
    hf.read_prompts(config.sft_data, 'sft_data', 'prompt')
    hf.read_prompts(config.sft_data, 'sft_data', 'response')
  tconfig, params, info = hf.load_checkpoint(config.model_dir, config.dtype)
  ids = info.token_ids
  contexts = hf.encode_prompts(tokenizer, prompt_texts, ids.pad,
                               config.max_prompt_length,
                               source=config.prompts)
  if same_judge:
    judge = Judge(tconfig, params, template, str(config.model_dir))
  else:
    jconfig, jparams, _ = hf.load_checkpoint(config.judge_dir, config.dtype,
                                             'judge_dir')
    judge = Judge(jconfig, jparams, template, str(config.judge_dir))
  _check_template_ids(template, judge.config.vocab_size,
                      config.judge_template)
  corpus = None
  if config.sft_data:
    corpus = _read_corpus(config.sft_data, tokenizer, ids, config.max_length)
  alg_config = resolve_algorithm(config, len(prompt_texts), 1,
                                 'transformer')
  config = resolve_seed_block(config, True, None, language_model=True)
  config = _resolved(config, alg_config, ('eta', 'learning_rate',
                                          'inner_steps', 'optimizer'))
  return config, Loaded(tconfig, params, info, tokenizer, prompt_texts,
                        contexts, judge, corpus)


# --------------------------------------------------------------------- run


@functools.lru_cache(maxsize=16)
def _maker(name: str, structure, tconfig, max_length: int, ids, oracle_fn,
           oracle: str):
  """``make(hyper) -> Algorithm`` (cached per structure, so the trainer's
  compiled functions are reused)."""

  def make(hyper):
    temperature = hyper['temperature']
    return algorithms_lib.make_algorithm(
        name, structure.replace(**{k: v for k, v in hyper.items()
                                   if k != 'temperature'}),
        lm_policy(tconfig, max_length, temperature, ids),
        _environment(tconfig, ids, oracle_fn, oracle, temperature))
  return make


def _environment(tconfig, ids, oracle_fn, oracle, temperature):
  return text_lib.make_text_environment(
      lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y, temperature,
                                          ids), oracle_fn, oracle)


@functools.lru_cache(maxsize=16)
def _env_of(tconfig, ids, oracle_fn, oracle):
  return lambda hyper: _environment(tconfig, ids, oracle_fn, oracle,
                                    hyper['temperature'])


@dataclasses.dataclass
class PostTrainResults(Results):
  """A post-training run: :class:`Results` less the listed distributions
  (``final_policy`` and ``equilibrium`` are ``None``), plus the final
  parameters of every seed, what was loaded and the reports."""

  final_params: Any = None
  loaded: Loaded | None = None
  reference_report: dict | None = None
  oracle_report: dict | None = None


def _fine_tune(config, loaded: Loaded, log):
  """The reference: the checkpoint, or after ``sft_steps`` of SFT on the
  corpus (:func:`nash_jax.sft.fit`, batches drawn uniformly with
  replacement). Returns ``(params, report)``."""
  if not config.sft_steps:
    return loaded.params, None
  contexts, responses, report = loaded.corpus
  ids, tconfig = loaded.info.token_ids, loaded.tconfig
  size = responses.shape[0]
  log(f'[{config.algorithm}] supervised fine-tuning of the checkpoint: '
      f'{config.sft_steps} steps of {config.sft_batch_size} of '
      f'{size} corpus responses')

  def sample(key, batch_size):
    index = jax.random.randint(key, (batch_size,), 0, size)
    x = jax.tree.map(lambda a: a[index], contexts)
    return x, responses[index]

  log_prob = lambda p, x, y: sequence.log_prob(tconfig, p, x, y,
                                               config.temperature, ids)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  tuned, losses = sft.fit(key, log_prob, loaded.params, sample,
                          config.sft_steps, config.sft_batch_size,
                          config.sft_learning_rate)
  report = {**report, 'sft_steps': config.sft_steps,
            'sft_batch_size': config.sft_batch_size,
            'sft_learning_rate': config.sft_learning_rate,
            'loss': sft.loss_curve(losses)}
  log(f'[{config.algorithm}] SFT: mean negative log-likelihood '
      f'{report["loss"][0][1]:.4f} -> {report["loss"][-1][1]:.4f}')
  return tuned, report


def run_post_train(config, loaded: Loaded,
                   log: Callable[[str], None] = print) -> PostTrainResults:
  """Runs a validated config (:func:`validate_post_train`): every seed in
  one compiled call per evaluation chunk, checkpointed and resumable like
  every run. Returns the :class:`PostTrainResults`."""
  start = time.time()
  if jax.process_index() != 0:
    log = lambda line: None
  ids, tconfig, judge = loaded.info.token_ids, loaded.tconfig, loaded.judge
  log(f'[{config.algorithm}] {loaded.info.model_type} checkpoint '
      f'{config.model_dir}: {tconfig.num_layers} layers, d={tconfig.d_model}, '
      f'vocabulary {tconfig.vocab_size}; {len(loaded.prompt_texts)} prompts; '
      f'judge {judge.model_dir}')
  reference, reference_report = _fine_tune(config, loaded, log)
  oracle = preference_models.make_judge(judge.config, judge.template,
                                        eos_id=ids.eos, pad_id=ids.pad)
  dtype = lm_compute_dtype(config)
  # The judge's parameters travel in the environment data (arguments of the
  # compiled step, not constants); a judge that is the checkpoint itself
  # shares its buffers with the loaded weights.
  env_params = text_lib.text_env_params(loaded.contexts, reference,
                                        judge.params, dtype)
  structure = config.algorithm_config().replace(
      **{k: 'swept' for k in LM_SWEEPABLE if k != 'temperature'
         and getattr(config, k) is not None})
  make = _maker(config.algorithm, structure, tconfig, config.max_length, ids,
                oracle.probability, config.oracle)
  env_of = _env_of(tconfig, ids, oracle.probability, config.oracle)
  evaluate = evaluation.sampled_evaluator(make, env_of, oracle.probability,
                                          config.num_samples, ids)
  hyper = {k: np.repeat(np.asarray(getattr(config, k), dtype),
                        config.num_seeds)
           for k in LM_SWEEPABLE if getattr(config, k) is not None}
  _, run_keys = seed_keys(config)
  state, rows = train_recorded(
      config, make, evaluate, run_keys, env_params, None, hyper,
      shared=True, output_dir=config.output_dir,
      checkpoint_config=dataclasses.asdict(config),
      checkpoint_every=config.checkpoint_every, stream=True, log=log,
      start=start)
  wall = time.time() - start
  cost = run_cost(make, hyper, state, env_params, True, config.num_steps,
                  wall)
  oracle_report = {
      'oracle': 'judge', 'judge_dir': judge.model_dir,
      'template_file': config.judge_template,
      'template_ids': judge.template._asdict(),
      'outcome': config.oracle}
  return PostTrainResults(config, rows, None, None, wall, cost,
                          final_params=state.params, loaded=loaded,
                          reference_report=reference_report,
                          oracle_report=oracle_report)


# ------------------------------------------------------------------ results


def sample_records(results: PostTrainResults):
  """One ``samples.jsonl`` record per evaluation, seed and sample: the
  step, seed, prompt (index and text), the response decoded by the
  tokenizer, its length in tokens (through the end token), whether it
  ended, and its log-probability under the policy and under pi_ref."""
  config, loaded = results.config, results.loaded
  ids = loaded.info.token_ids
  for row in results.rows:
    step = int(row['step'][0])
    for i in range(config.num_seeds):
      ys = np.asarray(row['samples'][i])
      texts = hf.decode_responses(loaded.tokenizer, ys, ids)
      mask = np.asarray(sequence.response_mask(jnp.asarray(ys), ids))
      for j, y in enumerate(ys):
        x = j // config.num_samples
        yield {'step': step, 'seed': config.seed + i, 'prompt_index': x,
               'prompt': loaded.prompt_texts[x], 'response': texts[j],
               'length': int(mask[j].sum()),
               'eos': bool(np.isin(y, ids.end_ids).any()),
               'log_prob': float(row['sample_log_prob'][i][j]),
               'ref_log_prob': float(row['sample_ref_log_prob'][i][j])}


def write_post_train_results(results: PostTrainResults,
                             output_dir: str | None = None) -> None:
  """Writes the files of :func:`~nash_jax.experiment.results.write_results`
  (no ``final_policy.npy`` / ``equilibrium.npy``: nothing is listed) and
  samples.jsonl, oracle.json, reference.json (after SFT) and
  ``final_model/seed_<s>/``, each seed's policy as a Hugging Face
  checkpoint in the source's stored dtype (tokenizer and generation config
  copied), loadable by :func:`nash_jax.policies.hf.load_checkpoint` and by
  transformers."""
  loaded = results.loaded

  def write_jsonl(tmp):
    with open(tmp, 'w') as f:
      for record in sample_records(results):
        f.write(json.dumps(record) + '\n')

  def extra(join):
    atomic_write(join('samples.jsonl'), write_jsonl)
    write_json(join('oracle.json'), results.oracle_report)
    if results.reference_report is not None:
      write_json(join('reference.json'), results.reference_report)
    for i in range(results.config.num_seeds):
      params = jax.tree.map(lambda a, i=i: np.asarray(a[i]),
                            results.final_params)
      hf.save_checkpoint(
          os.path.join(join('final_model'), f'seed_{results.config.seed + i}'),
          loaded.tconfig, params, loaded.info.model_dir,
          dtype=loaded.info.stored_dtype, overwrite=True,
          flag='output_dir')

  write_results(results, output_dir, extra)
