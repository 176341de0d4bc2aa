"""``python -m experiments.lm`` end to end at a tiny size: result files,
exact metrics consistent with the written policies, a sweep cell equal to
its single run, SIGKILL then resume equal to an uninterrupted run, the SFT
reference, a learned oracle, a baseline and the cost block, and refusals of
bad input before any work.

Speed: the runs are genuine processes that share one persistent compilation
cache, with XLA's backend optimizations turned down (they take most of a
tiny run's time); every check compares runs made under the same flags or
holds to a stated tolerance, so no checked result depends on them. The
refusals run as children forked from one process (tests/refusals.py).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FAST_COMPILE, child_env
from refusals import assert_refused, run_table

from nash_jax import metrics, reference
from nash_jax.environments import tokens

ROOT = Path(__file__).resolve().parents[1]


TINY = ['--vocab_size=2', '--max_length=2', '--num_prompts=2',
        '--d_model=8', '--mlp_dim=8', '--num_heads=2', '--num_kv_heads=1',
        '--num_layers=1', '--batch_size=8', '--num_seeds=2', '--seed=3',
        '--eval_every=5', '--num_samples=2']


# The binary's runs share JAX's persistent compilation cache (a cached
# executable is the same program, so results are unaffected; the runs of
# one algorithm compile the same programs).
ENV = {}


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  ENV.update(child_env(
      FAST_COMPILE,
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('cache')),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0'))


def _lm(out, *args, timeout=600):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.lm', f'--output_dir={out}', *TINY,
       *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
      env=ENV)


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('lm') / 'run'
  proc = _lm(out, '--algorithm=nash_prox', '--num_steps=10',
             '--anchor_every=4', '--learning_rate=0.01')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_lm_binary_writes_the_documented_files(lm_run):
  out, proc = lm_run
  for name in ('config.json', 'metrics.csv', 'samples.jsonl',
               'final_policy.npy', 'responses.npy', 'equilibrium.npy',
               'game.npz', 'manifest.json', 'summary.json', 'checkpoints'):
    assert (out / name).exists(), name
  n = tokens.num_responses(2, 2)
  final = np.load(out / 'final_policy.npy')
  assert final.shape == (2, 2, n)
  np.testing.assert_allclose(final.sum(-1), 1, rtol=1e-6)
  responses = np.load(out / 'responses.npy')
  np.testing.assert_array_equal(responses, tokens.list_responses(2, 2))
  rows = [line.split(',') for line in
          (out / 'metrics.csv').read_text().splitlines()]
  header = rows[0]
  assert header[:3] == ['seed', 'step', 'preference_queries']
  assert 'generated_tokens' in header and 'kl_to_equilibrium' in header
  steps = sorted({int(r[1]) for r in rows[1:]})
  assert steps == [0, 5, 10]
  last = {r[0]: dict(zip(header, r)) for r in rows[1:] if int(r[1]) == 10}
  assert set(last) == {'3', '4'}
  # Costs: 8 queries a step; every response takes 1 to 2 tokens.
  for row in last.values():
    assert int(row['preference_queries']) == 80
    assert 2 * 80 <= int(row['generated_tokens']) <= 2 * 80 * 2
  # The exact metrics agree with the written policy, game and pi*_beta.
  game = np.load(out / 'game.npz')
  eq = np.load(out / 'equilibrium.npy')
  from nash_jax.games import make_game
  g = make_game(game['preferences'], game['ref_policy'],
                game['context_weights'], dtype=jnp.float64)
  np.testing.assert_allclose(
      eq[0], reference.equilibrium(game['preferences'], game['ref_policy'],
                                   0.1), atol=1e-10)
  for i, seed in enumerate(('3', '4')):
    kl = metrics.kl_to_equilibrium(jnp.log(final[i]), jnp.log(eq[i]), g)
    np.testing.assert_allclose(float(kl),
                               float(last[seed]['kl_to_equilibrium']),
                               rtol=1e-3, atol=1e-6)
  # The reference model starts every seed: step 0 has KL(pi* || pi_ref).
  first = [dict(zip(header, r)) for r in rows[1:] if int(r[1]) == 0]
  kl_ref = metrics.kl_to_equilibrium(jnp.log(g.ref_policy), jnp.log(eq[0]),
                                     g)
  for row in first:
    np.testing.assert_allclose(float(row['kl_to_equilibrium']),
                               float(kl_ref), rtol=1e-4)
  samples = [json.loads(line) for line in
             (out / 'samples.jsonl').read_text().splitlines()]
  # 3 evaluations x 2 seeds x 2 prompts x 2 samples.
  assert len(samples) == 24
  assert {s['step'] for s in samples} == {0, 5, 10}
  assert all(0 <= s['length'] <= 2 and s['log_prob'] <= 0 for s in samples)
  config = json.loads((out / 'config.json').read_text())
  assert config['algorithm'] == 'nash_prox' and config['d_model'] == 8
  assert 'wrote' in proc.stdout


@pytest.mark.slow
def test_lm_game_file_is_read_by_matrix_game(lm_run, tmp_path):
  out, _ = lm_run
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.matrix_game', '--game=file',
       f'--game_file={out / "game.npz"}', '--algorithm=nash_mp',
       '--num_steps=5', '--eval_every=5', f'--output_dir={tmp_path / "mg"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
  assert proc.returncode == 0, proc.stderr[-2000:]
  eq = np.load(tmp_path / 'mg' / 'equilibrium.npy')[0]
  np.testing.assert_allclose(eq, np.load(out / 'equilibrium.npy')[0],
                             atol=1e-9)


@pytest.mark.slow
def test_lm_resume_after_sigkill_equals_uninterrupted(lm_run, tmp_path):
  reference_out, _ = lm_run
  killed = tmp_path / 'killed'
  args = ['--algorithm=nash_prox', '--num_steps=10', '--anchor_every=4',
          '--learning_rate=0.01', '--checkpoint_every=5']
  cmd = [sys.executable, '-m', 'experiments.lm', f'--output_dir={killed}',
         *TINY, *args]
  # Under the same XLA flags as the reference run (other flags compile other
  # programs), but without the compilation cache, so that the run is still
  # going when its first checkpoint appears.
  env = {k: v for k, v in ENV.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env)
  deadline = time.time() + 500
  ckpt = killed / 'checkpoints'
  while time.time() < deadline and proc.poll() is None and not (
      ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'summary.json').exists()
  done = _lm(killed, *args)
  assert done.returncode == 0, done.stderr[-2000:]
  assert (killed / 'metrics.csv').read_text() == (
      reference_out / 'metrics.csv').read_text()
  for name in ('final_policy.npy', 'equilibrium.npy'):
    np.testing.assert_array_equal(np.load(killed / name),
                                  np.load(reference_out / name))
  assert (killed / 'samples.jsonl').read_text() == (
      reference_out / 'samples.jsonl').read_text()


@pytest.mark.slow
def test_lm_sweep_cell_equals_single_run(tmp_path):
  args = ['--algorithm=online_ipo', '--num_steps=5', '--checkpoint_every=0']
  sweep = _lm(tmp_path / 'sweep', *args, '--sweep=learning_rate=0.01,0.03')
  assert sweep.returncode == 0, sweep.stderr[-2000:]
  single = _lm(tmp_path / 'single', *args, '--learning_rate=0.03')
  assert single.returncode == 0, single.stderr[-2000:]
  cell = tmp_path / 'sweep' / 'learning_rate=0.03'
  assert (cell / 'metrics.csv').read_text() == (
      tmp_path / 'single' / 'metrics.csv').read_text()
  np.testing.assert_array_equal(np.load(cell / 'final_policy.npy'),
                                np.load(tmp_path / 'single' /
                                        'final_policy.npy'))
  assert (tmp_path / 'sweep' / 'sweep.csv').exists()


LM_REFUSALS = [
    (['--vocab_size=8', '--max_length=6'], 'max_length'),
    (['--max_length=0'], 'max_length'),
    (['--temperature=0'], 'temperature'),
    (['--temperature=-1'], 'temperature'),
    (['--mixture=1.5', '--algorithm=nash_md_pg'], 'mixture'),
    (['--algorithm=nash_mp'], 'algorithm'),
    (['--num_heads=3'], 'num_heads'),
    (['--num_kv_heads=3', '--num_heads=4'], 'num_kv_heads'),
    (['--dtype=float16'], 'dtype'),
    (['--outcome=human'], 'outcome'),
    (['--oracle=human'], 'oracle'),
    (['--sweep=temperature=1,2'], 'sweep'),
    (['--sharpness=1,2'], 'sharpness'),
    (['--batch_size=0'], 'batch_size'),
]


@pytest.fixture(scope='module')
def lm_refusals(tmp_path_factory):
  """``(outcome, output dir)`` of every case of :data:`LM_REFUSALS`, each
  run as ``python -m experiments.lm`` (children of one process, see
  tests/refusals.py)."""
  return run_table('experiments.lm', LM_REFUSALS,
                   tmp_path_factory.mktemp('lm_refusals'),
                   lambda out, args: [f'--output_dir={out}', *TINY, *args],
                   env=ENV)


@pytest.mark.parametrize('index', range(len(LM_REFUSALS)),
                         ids=[f'{flag}-{i}' for i, (_, flag) in
                              enumerate(LM_REFUSALS)])
def test_lm_refuses_bad_input_before_any_work(lm_refusals, index):
  outcome, out = lm_refusals[index]
  assert_refused(outcome, f'error: --{LM_REFUSALS[index][1]}:', out)


# --------------------------------------------------------------------------
# Issue 10: a fine-tuned reference, a learned training oracle, a baseline,
# and the cost of a run, in one run of the binary.


@pytest.mark.slow
def test_lm_sft_reference_learned_oracle_baseline_and_cost(tmp_path):
  out = tmp_path / 'run'
  proc = _lm(out, '--algorithm=bt_rlhf', '--num_steps=6', '--eval_every=3',
             '--offline_pairs=48', '--reward_steps=20', '--sft_steps=60',
             '--sft_batch_size=16', '--train_oracle=learned',
             '--oracle_pairs=64', '--oracle_held_out=32',
             '--oracle_steps=20', '--oracle_d_model=8',
             '--checkpoint_every=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref = json.loads((out / 'reference.json').read_text())
  assert ref['sft_steps'] == 60
  # SFT moved pi_ref towards the corpus (exact KL over the listed
  # responses).
  assert (ref['kl_corpus_to_reference_after'] <
          ref['kl_corpus_to_reference_before'])
  oracle = json.loads((out / 'oracle.json').read_text())
  assert oracle['train_oracle'] == 'learned'
  assert oracle['ground_truth_queries'] == 96
  assert 0 <= oracle['held_out']['accuracy'] <= 1
  # pi_ref in game.npz is the fine-tuned model's listed distribution.
  game = np.load(out / 'game.npz')
  assert np.all(np.abs(game['ref_policy'] - 1 / game['ref_policy'].shape[1])
                .max(-1) > 1e-3)
  summary = json.loads((out / 'summary.json').read_text())
  # bt_rlhf asks every query at init: the dataset, nothing per step.
  assert [f['preference_queries'] for f in summary['final']] == [48, 48]
  cost = summary['cost']
  assert cost['step_flops'] > 0
  assert cost['training_flops'] == pytest.approx(6 * cost['step_flops'])
  assert cost['peak_host_memory_bytes'] > 0


