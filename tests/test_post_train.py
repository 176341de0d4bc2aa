"""Post-training a Hugging Face checkpoint (``experiments.post_train``):
the text environment, the sampled evaluation, the judge template, the
binary end to end on tiny random checkpoints that the test writes
(tests/hf_fixtures.py), and refusals of bad input before any work.

The binary's run is a genuine process with XLA's backend optimizations
turned down (as in tests/test_lm_binary.py); every check holds within the
run or to a stated tolerance.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import hf_fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FAST_COMPILE, child_env
from refusals import assert_refused, run_table

from nash_jax import evaluation, experiment, hf
from nash_jax.environments import text as text_lib
from nash_jax.errors import ConfigError
from nash_jax.policies import sequence
from nash_jax.tasks import post_train
from nash_jax.tasks.language_model import sequence_policy

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ['the cat sat on the mat', 'why is the dog red ?', 'one two three']
CORPUS = [('the cat', 'sat on the mat .'), ('why ?', 'it was big .'),
          ('one two', 'three four five')]
# A judge prompt in the fixtures' word vocabulary (one token per word).
TEMPLATE = {'prefix': 'question', 'marker_first': 'one',
            'marker_second': 'two', 'suffix': 'answer',
            'answer_first': 'yes', 'answer_second': 'no'}


def _jsonl(path, records):
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  return path


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Tiny random checkpoints (Llama stored in float32, Qwen3 in bfloat16 in
  two shards), a prompt file, a judge template and an SFT corpus."""
  tmp = tmp_path_factory.mktemp('post_train_inputs')
  hf_fixtures.write_checkpoint(tmp / 'llama', 'llama')
  hf_fixtures.write_checkpoint(tmp / 'qwen3', 'qwen3')
  _jsonl(tmp / 'prompts.jsonl', [{'prompt': p} for p in PROMPTS])
  _jsonl(tmp / 'corpus.jsonl', [{'prompt': p, 'response': r}
                                for p, r in CORPUS])
  (tmp / 'template.json').write_text(json.dumps(TEMPLATE))
  return tmp


# --------------------------------------------------------------- library


def _config(files, **changes):
  values = dict(model_dir=str(files / 'llama'),
                prompts=str(files / 'prompts.jsonl'),
                judge_template=str(files / 'template.json'), max_length=5,
                output_dir=str(files / 'unused'))
  values.update(changes)
  return post_train.PostTrainConfig(**values)


def test_template_is_encoded_with_the_judges_tokenizer(files):
  _, loaded = experiment.validate(post_train.TASK, _config(files))
  template = loaded.judge.template
  arch = 'llama'
  assert template.prefix == (hf_fixtures.token_id(arch, 'question'),)
  assert template.marker_first == (hf_fixtures.token_id(arch, 'one'),)
  assert template.answer_first == hf_fixtures.token_id(arch, 'yes')
  assert template.answer_second == hf_fixtures.token_id(arch, 'no')
  # Prompts are left-padded to the longest, special tokens added.
  tokens = np.asarray(loaded.contexts.tokens)
  mask = np.asarray(loaded.contexts.mask)
  assert tokens.shape[0] == 3 and mask[:, -1].all()
  assert mask.sum(1).tolist() == [
      len(loaded.tokenizer.encode(p).ids) for p in PROMPTS]


def test_the_default_template_needs_single_token_answers(files):
  # The fixtures' word-level tokenizer reads " A" as <unk>, and so " B":
  # one token each, but the same one.
  with pytest.raises(ConfigError, match=r'^--judge_template: the default '
                     r'template: answer_first and answer_second are the '
                     r'same token'):
    experiment.validate(post_train.TASK, _config(files, judge_template=None))


@pytest.mark.slow
def test_sampled_evaluation_matches_independent_formulas(files):
  """The evaluator's win rate, KL estimate and lengths equal the same
  quantities recomputed from its own samples, with an oracle whose
  probability depends on ``y`` alone (so the reference's draws cancel)."""
  config, loaded = experiment.validate(post_train.TASK, _config(files))
  ids, tconfig = loaded.info.token_ids, loaded.tconfig
  policy = sequence_policy(tconfig, 5, 1.0, ids)
  reference = loaded.params
  # A perturbed policy, so that KL(pi || pi_ref) > 0.
  params = jax.tree.map(lambda a: a * 1.3, reference)

  def probability(oracle_params, x, y, y_prime):
    del oracle_params, x, y_prime
    length = jnp.sum(sequence.response_mask(y, ids), -1)
    return jax.nn.sigmoid(0.5 * length - 2.0)

  env = text_lib.make_text_environment(
      lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y, 1.0, ids),
      probability, 'probability')
  env_params = text_lib.text_env_params(loaded.contexts, reference, None)

  class State(NamedTuple):
    params: object
    key: jax.Array
    generated_tokens: jax.Array

  state = State(params, jax.random.PRNGKey(4), jnp.int32(0))
  make = lambda hyper: type('A', (), {'policy': policy})
  evaluate = evaluation.sampled_evaluator(make, lambda hyper: env,
                                          probability, 8, ids)
  run = jax.jit(lambda params: evaluate(
      {}, state._replace(params=params), env_params, None))
  row = run(params)
  y = np.asarray(row['samples'])
  x = jax.tree.map(lambda a: jnp.repeat(a, 8, axis=0),
                   env.all_contexts(env_params))
  length = np.asarray(sequence.response_mask(jnp.asarray(y), ids)).sum(-1)
  p = 1 / (1 + np.exp(-(0.5 * length - 2.0)))
  np.testing.assert_allclose(row['win_rate_vs_ref'], p.mean(), rtol=1e-6)
  np.testing.assert_allclose(row['win_rate_vs_ref_se'],
                             p.std() / np.sqrt(p.size), rtol=1e-5)
  log_pi = sequence.log_prob(tconfig, params, x, jnp.asarray(y), 1.0, ids)
  log_ref = sequence.log_prob(tconfig, reference, x, jnp.asarray(y), 1.0,
                              ids)
  np.testing.assert_allclose(row['sample_log_prob'], log_pi, rtol=1e-5)
  np.testing.assert_allclose(row['kl_to_ref'], np.mean(log_pi - log_ref),
                             rtol=1e-4, atol=1e-6)
  assert float(row['kl_to_ref']) > 0.01      # the perturbation shows
  np.testing.assert_allclose(row['response_length'], length.mean())
  ended = np.isin(y, ids.end_ids).any(-1)
  np.testing.assert_allclose(row['eos_rate'], ended.mean())
  # Negative control: at pi = pi_ref the same estimate is exactly 0.
  assert float(run(reference)['kl_to_ref']) == 0.0


def test_text_environment_outcomes(files):
  """``probability`` outcomes are the oracle's P; Bernoulli outcomes have
  mean P (a 5-sigma band over 4,000 draws) and are 0 or 1."""
  p_true = jnp.linspace(0.1, 0.9, 4000)
  fn = lambda params, x, y, y_prime: p_true
  x = None
  y = jnp.zeros((4000, 2), jnp.int32)
  env_p = text_lib.make_text_environment(None, fn, 'probability')
  env_b = text_lib.make_text_environment(None, fn, 'bernoulli')
  params = text_lib.TextEnvParams(jnp.zeros((1, 1), jnp.int32),
                                  jnp.ones((1, 1), bool), jnp.ones(1))
  np.testing.assert_array_equal(
      env_p.outcomes(params, jax.random.PRNGKey(0), x, y, y), p_true)
  o = np.asarray(env_b.outcomes(params, jax.random.PRNGKey(0), x, y, y))
  assert set(np.unique(o)) <= {0.0, 1.0}
  sigma = np.sqrt(np.sum(p_true * (1 - p_true))) / 4000
  assert abs(o.mean() - float(p_true.mean())) < 5 * sigma
  assert env_p.log_policy is None and env_p.game is None


# ---------------------------------------------------------------- binary

ENV = {}


@pytest.fixture(scope='module', autouse=True)
def _fast_compile():
  ENV.update(child_env(FAST_COMPILE))


def _args(files, out, *extra):
  return [f'--model_dir={files / "llama"}',
          f'--prompts={files / "prompts.jsonl"}',
          f'--judge_template={files / "template.json"}', '--max_length=5',
          '--batch_size=4', '--num_samples=2', f'--output_dir={out}',
          *extra]


@pytest.fixture(scope='module')
def run(files, tmp_path_factory):
  out = tmp_path_factory.mktemp('post_train') / 'run'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.post_train',
       *_args(files, out, '--algorithm=nash_prox', '--num_steps=4',
              '--eval_every=2', '--num_seeds=2', '--learning_rate=0.01',
              f'--sft_data={files / "corpus.jsonl"}', '--sft_steps=3',
              '--sft_learning_rate=0.01')],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_binary_writes_the_documented_files(run):
  out, proc = run
  for name in ('config.json', 'metrics.csv', 'samples.jsonl', 'oracle.json',
               'reference.json', 'manifest.json', 'summary.json',
               'checkpoints', 'final_model/seed_0/config.json',
               'final_model/seed_1/model.safetensors',
               'final_model/seed_1/tokenizer.json'):
    assert (out / name).exists(), name
  header = (out / 'metrics.csv').read_text().splitlines()[0].split(',')
  assert header[:8] == ['seed', 'step', 'preference_queries',
                        'win_rate_vs_ref', 'win_rate_vs_ref_se',
                        'kl_to_ref', 'response_length', 'eos_rate']
  summary = json.loads((out / 'summary.json').read_text())
  for seed in summary['final']:
    assert seed['preference_queries'] == 4 * 4      # 4 steps x batch 4
    assert 0 < seed['win_rate_vs_ref'] < 1
  assert summary['cost']['step_flops'] > 0
  reference = json.loads((out / 'reference.json').read_text())
  assert reference['corpus_size'] == 3 and len(reference['loss']) == 3
  assert 'win_rate_vs_ref' in proc.stdout


def test_samples_at_step_0_are_the_references(run):
  """Every seed starts at pi_ref: at step 0 each sample's log-probability
  under the policy equals the reference's, and the KL estimate is 0."""
  out, _ = run
  records = [json.loads(line) for line in
             (out / 'samples.jsonl').read_text().splitlines()]
  first = [r for r in records if r['step'] == 0]
  assert len(first) == 2 * 3 * 2          # seeds x prompts x samples
  assert all(r['log_prob'] == r['ref_log_prob'] for r in first)
  assert {r['prompt'] for r in first} == set(PROMPTS)
  later = [r for r in records if r['step'] == 4]
  assert any(r['log_prob'] != r['ref_log_prob'] for r in later)


def test_saved_model_reproduces_the_logged_log_probs(run, files):
  """final_model/seed_<s> (float32, as the source) loads back, and its
  teacher-forced log-probabilities of the last evaluation's samples equal
  those the run logged with the trained parameters: the weights were
  saved as trained, under the right names and layout."""
  out, _ = run
  records = [json.loads(line) for line in
             (out / 'samples.jsonl').read_text().splitlines()]
  tokenizer = hf.load_tokenizer(files / 'llama')
  for seed in (0, 1):
    tconfig, params, info = hf.load_checkpoint(
        out / 'final_model' / f'seed_{seed}')
    _, source, _ = hf.load_checkpoint(files / "llama")
    ids = info.token_ids
    last = [r for r in records if r['step'] == 4 and r['seed'] == seed]
    x = hf.encode_prompts(tokenizer, [PROMPTS[r['prompt_index']]
                                      for r in last], ids.pad)
    # Re-encode each logged response (text) and compare where the
    # round trip is exact (no end token, all tokens known words).
    y = np.full((len(last), 5), ids.pad, np.int32)
    for i, r in enumerate(last):
      enc = tokenizer.encode(r['response'], add_special_tokens=False).ids
      y[i, :len(enc)] = enc[:5]
      if len(enc) < 5:
        y[i, len(enc)] = ids.eos
    exact = [i for i, r in enumerate(last)
             if len(tokenizer.encode(r['response'],
                                     add_special_tokens=False).ids)
             == r['length'] - r['eos'] and r['response']]
    assert exact, 'no sample survives the text round trip'
    lp = np.asarray(sequence.log_prob(tconfig, params, x, jnp.asarray(y),
                                      1.0, ids))
    for i in exact:
      np.testing.assert_allclose(lp[i], last[i]['log_prob'], rtol=2e-5)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(
        np.asarray(a) - np.asarray(b)))), params, source)
    assert max(jax.tree.leaves(moved)) > 1e-4      # trained, not the source


def test_every_flag_is_in_the_readme():
  """README.md documents every flag of the binary (its settings)."""
  from nash_jax.settings import settings_of
  readme = (ROOT / 'README.md').read_text()
  names = [f.name for f in settings_of(post_train.PostTrainConfig)]
  missing = [n for n in names if f'`--{n}`' not in readme]
  assert not missing, missing
  assert 'reward_steps' not in names  # bt_rlhf's, refused here


REFUSALS = [
    (['--model_dir='], 'model_dir'),
    (['--prompts='], 'prompts'),
    (['--model_dir=/nonexistent'], 'model_dir'),
    (['--prompts=/nonexistent.jsonl'], 'prompts'),
    (['--prompts=@bad'], 'prompts'),
    (['--max_prompt_length=2'], 'prompts'),
    (['--judge_template=/nonexistent.json'], 'judge_template'),
    (['--judge_template=@multi'], 'judge_template'),
    (['--judge_dir=@qwen3'], 'judge_dir'),
    (['--algorithm=bt_rlhf'], 'algorithm'),
    (['--sft_steps=3'], 'sft_steps'),
    (['--sft_steps=3', '--sft_data=@bad'], 'sft_data'),
    (['--num_samples=0'], 'num_samples'),
    (['--max_length=0'], 'max_length'),
    (['--temperature=0'], 'temperature'),
    (['--outcome=human'], 'outcome'),
    (['--oracle=human'], 'oracle'),
    (['--dtype=float16'], 'dtype'),
    (['--data_parallel=3'], 'data_parallel'),
    (['--model_parallel=2'], 'model_parallel'),
]


@pytest.fixture(scope='module')
def refusals(files, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('post_train_refusals')
  (tmp / 'bad.jsonl').write_text('{"prompt": "the cat"}\nnot json\n')
  (tmp / 'multi.json').write_text(json.dumps(
      {**TEMPLATE, 'answer_first': 'yes no'}))
  at = {'@bad': tmp / 'bad.jsonl', '@multi': tmp / 'multi.json',
        '@qwen3': files / 'qwen3'}

  def argv(out, args):
    given = [a.split('=')[0] + '=' + str(at.get(a.split('=', 1)[1],
                                               a.split('=', 1)[1]))
             for a in args]
    return _args(files, out) + given

  return run_table('experiments.post_train', REFUSALS, tmp, argv, env=ENV)


@pytest.mark.parametrize('index', range(len(REFUSALS)),
                         ids=[f'{flag}-{i}' for i, (_, flag) in
                              enumerate(REFUSALS)])
def test_binary_refuses_bad_input_before_any_work(refusals, index):
  outcome, out = refusals[index]
  assert_refused(outcome, f'error: --{REFUSALS[index][1]}:', out)
