"""Post-training a Hugging Face checkpoint (``experiments.post_train``).

The reference pi_ref is the checkpoint (after SFT on ``--sft_data`` if
asked); every seed starts there, the sampled algorithm trains the policy
against the text environment (:mod:`nash_jax.environments.text`) whose
preference queries the judge answers, and every evaluation estimates by
sampling the win rate against ``pi_ref`` under the judge and
``KL(pi || pi_ref)`` (:func:`nash_jax.evaluation.sampled_evaluator`).
Validation reads every input file (the checkpoint, the tokenizer, the
prompt file, the judge, its template, the SFT corpus) before any work.

Files: ``config.json``, ``metrics.csv``, ``samples.jsonl`` (decoded text),
``oracle.json``, ``reference.json`` (with SFT), ``final_model/seed_<s>/``
(a Hugging Face checkpoint of each seed's policy, in the source's layout
and stored dtype), ``manifest.json`` and ``summary.json`` (last).

The judge (:func:`nash_jax.oracles.make_judge`): a language model of the
same tokenizer (``--judge_dir``, default the policy's own checkpoint)
asked with a template which of two responses is better; the probability is
its next-token softmax over the two answer tokens, averaged over both
orders. With no other ground truth for text, the judge is both the
training oracle and the evaluation's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import evaluation, hf, oracles, sft
from nash_jax import io as io_lib
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.environments import text as text_lib
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.experiment import checks
from nash_jax.experiment import run as experiment_run
from nash_jax.experiment.results import (
  Results,
  write_results,
  write_samples,
)
from nash_jax.experiment.run import run_cost, seed_keys, static_settings
from nash_jax.experiment.task import OutcomeConfig, RunConfig, RunPlan, Task
from nash_jax.policies import sequence
from nash_jax.settings import compose, group_of, setting
from nash_jax.tasks import language_model as lm
from nash_jax.tasks import oracles as oracles_registry

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
      'a longer prompt is refused.', int, minimum=1)
  max_length: int = setting(32, 'New tokens per response (maximum); a '
                            'response that does not end by then is cut.',
                            minimum=1)
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
  post-training (a sensible, non-uniform pi_ref)."""

  sft_data: str | None = setting(
      None, 'JSONL corpus: one object per line with "prompt" and "response" '
      'text fields. With --sft_steps > 0 the checkpoint is fine-tuned on it '
      '(responses end with the end token, cut at --max_length) and becomes '
      'pi_ref.', str)


PostTrainConfig = compose(
    'PostTrainConfig', (CheckpointConfig, OutcomeConfig,
                        (AlgorithmConfig, lm.EXACT_ONLY + _REWARD_FIT),
                        lm.SamplingConfig, lm.SFTConfig, CorpusConfig,
                        lm.SampleLogConfig, RunConfig, lm.ParallelConfig),
    """Every setting of ``experiments.post_train``: the flat composition of
    :class:`CheckpointConfig`, the outcome kind,
    :class:`~nash_jax.algorithms.AlgorithmConfig` (sampled mode), the
    temperature, the SFT settings, :class:`CorpusConfig`, the samples, the
    run and its parallel splits.""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     '__module__': __name__},
    defaults={'mode': 'sampled', 'algorithm': 'nash_prox', 'num_steps': 200,
              'eval_every': 50, 'dtype': 'float32', 'num_seeds': 1,
              'batch_size': 8, 'num_samples': 4,
              'output_dir': 'results/post_train', 'checkpoint_every': 100,
              'sft_batch_size': 8, 'sft_learning_rate': 1e-5},
    minimums={'num_samples': 1})


@dataclasses.dataclass(frozen=True)
class Judge:
  """The judge read from disk (hashable by identity where it matters)."""

  config: Any
  params: Any = dataclasses.field(compare=False, hash=False, repr=False)
  template: oracles.JudgeTemplate = None
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
  return oracles.JudgeTemplate(
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


def _read_corpus_texts(path) -> tuple[list, list]:
  """``(prompts, responses)``: the texts of a JSONL corpus (refused with
  one line naming ``--sft_data``)."""
  return hf.read_fields(path, 'sft_data', ('prompt', 'response'))


def _encode_corpus(path, texts, tokenizer, ids: sequence.TokenIds,
                   max_length: int, add_special_tokens: bool = True):
  """``(contexts, responses [C, L], report)`` of a corpus' texts
  (:func:`_read_corpus_texts`); responses end with the end token and are
  cut at ``max_length`` tokens."""
  prompts, responses = texts
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


def validate(config) -> tuple[Any, Loaded]:
  """The checks of a checkpoint run (after the kit's shared ones); reads
  every input file before any work.

  Returns:
    ``(config, loaded)``: the resolved config (the algorithm's defaults
    filled in) and the :class:`Loaded` inputs.

  Raises:
    ConfigError: one line naming the flag (and the file).
  """
  for flag in ('model_dir', 'prompts'):
    if not getattr(config, flag):
      raise ConfigError(flag, 'is required')
  config = lm.check_language_model(config)
  if config.sft_steps and not config.sft_data:
    raise ConfigError('sft_steps', 'needs --sft_data (the corpus to '
                      'fine-tune the checkpoint on)')
  # The model parallel factor against the checkpoint's architecture
  # (config.json only).
  checkpoint = hf.open_checkpoint(config.model_dir)
  lm.check_model_parallel(config, checkpoint.config, from_file=True)
  if config.model_parallel == 1:
    config = config.replace(model_parallel=None)
  # Files, the small ones first, so that a bad prompt file, template or
  # corpus is refused before gigabytes of weights are read.
  prompt_texts = hf.read_prompts(config.prompts, 'prompts')
  tokenizer = checkpoint.tokenizer
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
    judge_checkpoint = hf.open_checkpoint(config.judge_dir, 'judge_dir')
    judge_tokenizer = judge_checkpoint.tokenizer
    if judge_tokenizer.get_vocab(with_added_tokens=True) != \
        tokenizer.get_vocab(with_added_tokens=True):
      raise ConfigError('judge_dir', f'{config.judge_dir}: its tokenizer '
                        f'differs from --model_dir\'s; the judge reads the '
                        f'policy\'s token ids, so both must share one')
  template = _read_template(config.judge_template, judge_tokenizer)
  corpus_texts = (_read_corpus_texts(config.sft_data) if config.sft_data
                  else None)
  tconfig, params, info = checkpoint.load(config.dtype)
  ids = info.token_ids
  contexts = hf.encode_prompts(tokenizer, prompt_texts, ids.pad,
                               config.max_prompt_length,
                               source=config.prompts)
  if same_judge:
    judge = Judge(tconfig, params, template, str(config.model_dir))
  else:
    jconfig, jparams, _ = judge_checkpoint.load(config.dtype)
    judge = Judge(jconfig, jparams, template, str(config.judge_dir))
  _check_template_ids(template, judge.config.vocab_size,
                      config.judge_template)
  corpus = None
  if config.sft_data:
    corpus = _encode_corpus(config.sft_data, corpus_texts, tokenizer, ids,
                            config.max_length)
  alg_config = checks.resolve_algorithm(config, len(prompt_texts), 1,
                                        'transformer')
  config = checks.resolve_seed_block(config, True, None, language_model=True)
  config = checks.resolve_run(config, alg_config)
  return config, Loaded(tconfig, params, info, tokenizer, prompt_texts,
                        contexts, judge, corpus)


# --------------------------------------------------------------------- run


@functools.lru_cache(maxsize=16)
def _components(tconfig, max_length: int, ids, oracle_fn, outcome: str):
  """``hyper -> (policy, environment, reward model, values)``: the
  checkpoint's transformer at the traced temperature and the text
  environment that ``oracle_fn`` answers (cached per structure)."""

  def components(hyper):
    values, temperature = lm.split_hyper(hyper)
    return (lm.sequence_policy(tconfig, max_length, temperature, ids),
            environment(tconfig, ids, oracle_fn, outcome, temperature), None,
            values)
  return components


def environment(tconfig, ids, oracle_fn, outcome, temperature):
  """The text environment: the reference scores responses at the policy's
  ``temperature``, ``oracle_fn`` answers preference queries."""
  return text_lib.make_text_environment(
      lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y, temperature,
                                          ids), oracle_fn, outcome)


@functools.lru_cache(maxsize=16)
def _env_of(tconfig, ids, oracle_fn, outcome):
  return lambda hyper: environment(tconfig, ids, oracle_fn, outcome,
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


def plan(configs, loaded: Loaded, log) -> RunPlan:
  """The reference (after SFT), the judge as the oracle, its parameters in
  the environment data (arguments of the compiled step, not constants; a
  judge that is the checkpoint itself shares its buffers with the loaded
  weights), and the trainer's arguments."""
  config = configs[0]
  ids, tconfig, judge = loaded.info.token_ids, loaded.tconfig, loaded.judge
  log(f'[{config.algorithm}] {loaded.info.model_type} checkpoint '
      f'{config.model_dir}: {tconfig.num_layers} layers, d={tconfig.d_model}, '
      f'vocabulary {tconfig.vocab_size}; {len(loaded.prompt_texts)} prompts; '
      f'judge {judge.model_dir}')
  reference, reference_report = _fine_tune(config, loaded, log)
  judged = oracles_registry.build('judge', 'post_train', config, loaded, log)
  oracle = judged.oracle
  dtype = lm.compute_dtype(config)
  env_params = text_lib.text_env_params(loaded.contexts, reference,
                                        judged.params, dtype)
  make = experiment_run.algorithm_maker(
      config.algorithm, static_settings(config.algorithm_config(),
                                        TASK.runtime_names(config)),
      _components(tconfig, config.max_length, ids, oracle.probability,
                  config.outcome))
  env_of = _env_of(tconfig, ids, oracle.probability, config.outcome)
  evaluate = evaluation.sampled_evaluator(make, env_of, oracle.probability,
                                          config.num_samples, ids)
  hyper = {k: np.repeat(np.asarray(v, dtype), config.num_seeds)
           for k, v in TASK.hyperparameters(config).items()}
  _, run_keys = seed_keys(config)
  return RunPlan(make, evaluate, run_keys, env_params, None, hyper,
                 shared=True, context=dict(
                     loaded=loaded, reference_report=reference_report,
                     oracle_report=judged.report))


def collect(configs, plan_: RunPlan, state, rows, start: float):
  """The :class:`PostTrainResults` of the run (one config)."""
  config, ctx = configs[0], plan_.context
  wall = time.time() - start
  cost = run_cost(plan_.make, plan_.hyper, state, plan_.env_params, True,
                  config.num_steps, wall)
  return [PostTrainResults(config, rows, None, None, wall, cost,
                           final_params=state.params, loaded=ctx['loaded'],
                           reference_report=ctx['reference_report'],
                           oracle_report=ctx['oracle_report'])]


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


def write(results: PostTrainResults, output_dir: str | None = None) -> None:
  """Writes the files of :func:`~nash_jax.experiment.results.write_results`
  (no ``final_policy.npy`` / ``equilibrium.npy``: nothing is listed) and
  samples.jsonl, oracle.json, reference.json (after SFT) and
  ``final_model/seed_<s>/``, each seed's policy as a Hugging Face
  checkpoint in the source's stored dtype (tokenizer and generation config
  copied), loadable by :func:`nash_jax.hf.load_checkpoint` and by
  transformers."""
  loaded = results.loaded

  def extra(join):
    write_samples(join('samples.jsonl'), sample_records(results))
    io_lib.write_json(join('oracle.json'), results.oracle_report)
    if results.reference_report is not None:
      io_lib.write_json(join('reference.json'), results.reference_report)
    for i in range(results.config.num_seeds):
      params = jax.tree.map(lambda a, i=i: np.asarray(a[i]),
                            results.final_params)
      hf.save_checkpoint(
          os.path.join(join('final_model'), f'seed_{results.config.seed + i}'),
          loaded.tconfig, params, loaded.info.model_dir,
          dtype=loaded.info.stored_dtype, overwrite=True,
          flag='output_dir')

  write_results(results, output_dir, extra)


def structure(config):
  """A checkpoint run is a single run (no sweep)."""
  return config


TASK = Task(name='post_train', what='a checkpoint',
            settings=PostTrainConfig, dtypes=lm.DTYPES, validate=validate,
            plan=plan, collect=collect, write=write, structure=structure,
            runtime=('temperature',), sweepable=())
