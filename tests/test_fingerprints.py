"""Fingerprints of result files: a redesign must not change any result.

Each case runs an experiment binary as a genuine ``python -m`` process at a
tiny size and fingerprints the result files it writes: every exact
algorithm, every sampled algorithm with every policy class, Nash Prox with
an EMA anchor, a sampled run with a random initial policy, adam and
clipping, tabular sweeps, the token game (two algorithms, one of them a
sweep) and post-training of a tiny Hugging Face checkpoint (SFT, samples,
saved weights).

``tests/fingerprints.json`` holds, per case, the platform it was recorded
on (:func:`platform`: the CPU's instruction-set features, the jaxlib
version, the machine and ``XLA_FLAGS``) and, per file, its SHA-256 and its
values (numbers of ``.npy`` files and of CSV/JSONL columns; sums of
magnitudes and of squares and largest magnitudes of saved tensors). XLA:CPU
compiles for the instruction set it finds (AVX-512 or not, FMA or not), and
the rounding follows, so:

* on the platform that recorded a case, every file must be unchanged bit
  for bit (the test id ends in ``bitwise``);
* on another platform, the values must agree to the case's tolerance
  (:data:`TOLERANCE`, measured, see BUILD.md) and every non-numeric value
  exactly (the test id ends in ``tolerance``, and a warning names both
  platforms).

A change that is meant to alter results must say so: rerun with
``NASH_JAX_RECORD_FINGERPRINTS=1`` (it records the cases on this platform)
and explain, in the commit, which entries changed and by how much.
``NASH_JAX_FINGERPRINT_DUMP=DIR`` writes what this machine computed to
``DIR/fingerprints.json`` without comparing (how the tolerances were
measured: ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` emulates a CPU without
AVX-512).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import math
import os
import platform as platform_lib
import subprocess
import sys
import warnings
from pathlib import Path

import hf_fixtures
import numpy as np
import pytest

# Minutes of binaries: the whole file is in the slow tier (CI runs it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
RECORD = os.environ.get('NASH_JAX_RECORD_FINGERPRINTS') == '1'
DUMP = os.environ.get('NASH_JAX_FINGERPRINT_DUMP')
STORE = ROOT / 'tests' / 'fingerprints.json'

EXACT = ['omd', 'mmd', 'omwu', 'extragradient', 'nash_md', 'sppo',
         'proximal_point', 'nash_mp', 'self_play_pg', 'online_ipo']
SAMPLED = ['online_ipo', 'self_play_pg', 'nash_prox', 'approx_nash_mp',
           'nash_md_pg']
COMMON = ['--num_actions=5', '--num_seeds=2', '--checkpoint_every=0']
TABULAR = ('final_policy.npy', 'metrics.csv')
# The token game at a tiny size (as tests/test_lm_binary.py).
TOKENS = ['--vocab_size=2', '--max_length=2', '--num_prompts=2',
          '--d_model=8', '--mlp_dim=8', '--num_heads=2', '--num_kv_heads=1',
          '--num_layers=1', '--batch_size=8', '--num_seeds=2', '--seed=3',
          '--num_steps=6', '--eval_every=3', '--num_samples=2',
          '--checkpoint_every=0']
LM_FILES = ('final_policy.npy', 'metrics.csv', 'samples.jsonl')
# Post-training inputs (written by the test: tests/hf_fixtures.py).
PROMPTS = ['the cat', 'why ?', 'one two three']
CORPUS = [('the cat', 'sat on the mat .'), ('why ?', 'it was big .')]
TEMPLATE = {'prefix': 'question', 'marker_first': 'one',
            'marker_second': 'two', 'suffix': 'answer',
            'answer_first': 'yes', 'answer_second': 'no'}
POST_TRAIN_FILES = ('metrics.csv', 'samples.jsonl',
                    'final_model/seed_0/*.safetensors',
                    'final_model/seed_1/*.safetensors')
# Compilation at XLA's lowest backend optimization for the transformer
# cases (as the language-model tests; part of the case, not the platform).
FAST_COMPILE = '--xla_backend_optimization_level=0'

# name -> (binary, flags, result directories relative to --output_dir,
# files in each, extra XLA flags).
CASES = {
    'exact': ('experiments.compare', [
        '--algorithms=' + ','.join(EXACT), '--num_contexts=2',
        '--query_budget=30', '--eval_every=5', *COMMON], EXACT, TABULAR, ''),
    'sampled_tabular': ('experiments.compare', [
        '--mode=sampled', '--num_contexts=2', '--query_budget=640',
        '--batch_size=16', '--eval_every=10', '--inner_steps=3', *COMMON],
        SAMPLED, TABULAR, ''),
    'sampled_loglinear': ('experiments.compare', [
        '--mode=sampled', '--policy=loglinear', '--game=annotators',
        '--feature_dim=4', '--num_contexts=3', '--query_budget=640',
        '--batch_size=16', '--eval_every=10', '--inner_steps=3', *COMMON],
        SAMPLED, TABULAR, ''),
    'sampled_mlp': ('experiments.compare', [
        '--mode=sampled', '--policy=mlp', '--hidden_sizes=8,8',
        '--feature_dim=3', '--num_contexts=2', '--query_budget=640',
        '--batch_size=16', '--eval_every=10', '--inner_steps=3', *COMMON],
        SAMPLED, TABULAR, ''),
    'nash_prox_ema': ('experiments.matrix_game', [
        '--mode=sampled', '--algorithm=nash_prox', '--anchor=ema',
        '--anchor_tau=0.3', '--oracle=probability', '--init=random',
        '--optimizer=adam', '--max_grad_norm=1', '--schedule=cosine',
        '--num_steps=30', '--eval_every=10', '--batch_size=8', '--seed=3',
        '--game_seed=7', *COMMON], ['.'], TABULAR, ''),
    'nash_md_pg_float32': ('experiments.matrix_game', [
        '--mode=sampled', '--algorithm=nash_md_pg', '--mixture=0.5',
        '--dtype=float32', '--num_steps=30', '--eval_every=10',
        '--batch_size=8', *COMMON], ['.'], TABULAR, ''),
    'sweep': ('experiments.matrix_game', [
        '--algorithm=omd', '--sweep=beta=0.1,0.3', '--sweep=eta=0.5,1',
        '--num_steps=20', '--eval_every=5', *COMMON],
        ['beta=0.1_eta=0.5', 'beta=0.1_eta=1', 'beta=0.3_eta=0.5',
         'beta=0.3_eta=1'], TABULAR, ''),
    'sampled_sweep': ('experiments.matrix_game', [
        '--mode=sampled', '--algorithm=nash_prox', '--policy=loglinear',
        '--feature_dim=4', '--sweep=learning_rate=0.01,0.03',
        '--num_steps=20', '--eval_every=10', '--batch_size=8', *COMMON],
        ['learning_rate=0.01', 'learning_rate=0.03'], TABULAR, ''),
    'token_game_sweep': ('experiments.lm', [
        *TOKENS, '--algorithm=nash_prox', '--anchor_every=2',
        '--sweep=learning_rate=0.01,0.03'],
        ['learning_rate=0.01', 'learning_rate=0.03'], LM_FILES,
        FAST_COMPILE),
    'token_game_online_ipo': ('experiments.lm', [
        *TOKENS, '--algorithm=online_ipo', '--learning_rate=0.02',
        '--outcome=probability'], ['.'], LM_FILES, FAST_COMPILE),
    'post_train': ('experiments.post_train', [
        '--model_dir={inputs}/qwen3', '--prompts={inputs}/prompts.jsonl',
        '--judge_template={inputs}/template.json',
        '--sft_data={inputs}/corpus.jsonl', '--sft_steps=2',
        '--sft_learning_rate=0.01', '--algorithm=nash_prox',
        '--num_steps=4', '--eval_every=2', '--num_seeds=2', '--batch_size=4',
        '--max_length=5', '--num_samples=2', '--learning_rate=0.01',
        '--checkpoint_every=0'], ['.'], POST_TRAIN_FILES, FAST_COMPILE),
}

# Largest |recorded - found| / max(|recorded|, FLOOR) accepted on another
# platform, per case: at least 10x the differences measured with
# --xla_cpu_max_isa=AVX2 and SSE4_2 against the AVX-512 recording (BUILD.md).
FLOOR = 1e-6
TOLERANCE = {name: 1e-8 for name in CASES}
TOLERANCE.update({'nash_md_pg_float32': 1e-4, 'token_game_sweep': 1e-3,
                  'token_game_online_ipo': 1e-3, 'post_train': 1e-3})

# CPU features that change what XLA:CPU (LLVM) generates.
ISA_FEATURES = (
    'sse4_1', 'sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx512f',
    'avx512dq', 'avx512bw', 'avx512vl', 'avx512cd', 'avx512ifma',
    'avx512vbmi', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'avx_vnni',
    'amx_bf16', 'amx_tile', 'amx_int8',
    # aarch64 (/proc/cpuinfo "Features").
    'asimd', 'asimdhp', 'sve', 'sve2', 'bf16', 'i8mm')


def _cpu_flags() -> set[str]:
  try:
    text = Path('/proc/cpuinfo').read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    key, _, value = line.partition(':')
    if key.strip() in ('flags', 'Features'):
      return set(value.split())
  return set()


def platform() -> dict:
  """What decides XLA:CPU's rounding here: the machine, the jaxlib version,
  the CPU's instruction-set features (of :data:`ISA_FEATURES`) and the
  ``XLA_FLAGS`` the binaries inherit (``--xla_cpu_max_isa`` caps the
  features)."""
  from importlib.metadata import version
  return {'machine': platform_lib.machine(), 'jaxlib': version('jaxlib'),
          'isa': sorted(_cpu_flags() & set(ISA_FEATURES)),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _number(text: str):
  try:
    return float(text)
  except ValueError:
    return text


def values_of(path: Path):
  """The values of a result file: a flat list for ``.npy``; column ->
  values for CSV and JSONL (numbers as floats, other values as they are);
  per tensor ``[sum |x|, sum of squares, max |x|]`` (float64) for
  ``.safetensors``."""
  if path.suffix == '.npy':
    return [float(v) for v in np.load(path).astype(np.float64).ravel()]
  if path.suffix == '.csv':
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return {k: [_number(r[k]) for r in rows] for k in rows[0]} if rows else {}
  if path.suffix == '.jsonl':
    records = [json.loads(line) for line in path.read_text().splitlines()]
    keys = sorted({k for r in records for k in r})
    return {k: [r.get(k) for r in records] for k in keys}
  if path.suffix == '.safetensors':
    import ml_dtypes  # noqa: F401  (bfloat16 tensors)
    from safetensors.numpy import load_file
    out = {}
    for name, t in sorted(load_file(str(path)).items()):
      t = np.abs(t.astype(np.float64))
      # No signed sums: their cancellation would amplify a rounding change.
      out[name] = [float(t.sum()), float((t * t).sum()), float(t.max())]
    return out
  raise ValueError(f'no values for {path}')


def _write_inputs(tmp: Path) -> Path:
  inputs = tmp / 'inputs'
  hf_fixtures.write_checkpoint(inputs / 'qwen3', 'qwen3')
  with open(inputs / 'prompts.jsonl', 'w') as f:
    f.writelines(json.dumps({'prompt': p}) + '\n' for p in PROMPTS)
  with open(inputs / 'corpus.jsonl', 'w') as f:
    f.writelines(json.dumps({'prompt': p, 'response': r}) + '\n'
                 for p, r in CORPUS)
  (inputs / 'template.json').write_text(json.dumps(TEMPLATE))
  return inputs


def _run(name: str, tmp: Path, inputs: Path):
  binary, args, dirs, files, xla = CASES[name]
  out = tmp / name
  env = dict(os.environ, JAX_PLATFORMS='cpu', OPENBLAS_NUM_THREADS='1')
  if xla:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + xla).strip()
  args = [a.format(inputs=inputs) for a in args]
  proc = subprocess.run(
      [sys.executable, '-m', binary, f'--output_dir={out}', *args], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = {}
  for d in dirs:
    for pattern in files:
      paths = sorted((out / d).glob(pattern))
      assert paths, f'{name}: no {d}/{pattern}'
      for path in paths:
        key = str(path.relative_to(out / d) if d == '.' else
                  path.relative_to(out))
        key = key if d != '.' else f'./{key}'
        found[key] = {'sha256': hashlib.sha256(path.read_bytes()).hexdigest(),
                      'values': values_of(path)}
  return name, {'platform': platform(), 'files': found}


@pytest.fixture(scope='module')
def fingerprints(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('fingerprints')
  inputs = _write_inputs(tmp)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    found = dict(pool.map(lambda n: _run(n, tmp, inputs), CASES))
  if DUMP:
    os.makedirs(DUMP, exist_ok=True)
    Path(DUMP, 'fingerprints.json').write_text(json.dumps(found, indent=1))
  if RECORD:
    STORE.write_text(json.dumps(found, indent=1, sort_keys=True) + '\n')
  return found


def differences(recorded, found, path=''):
  """``(worst relative difference, mismatches)`` between two value trees:
  numbers compared by ``|a - b| / max(|a|, FLOOR)`` (NaN equals NaN, an
  infinity only itself), everything else exactly."""
  if isinstance(recorded, dict) and isinstance(found, dict):
    if set(recorded) != set(found):
      return math.inf, [f'{path}: keys {sorted(set(recorded) ^ set(found))}']
    worst, bad = 0.0, []
    for k in recorded:
      w, b = differences(recorded[k], found[k], f'{path}/{k}')
      worst, bad = max(worst, w), bad + b
    return worst, bad
  if isinstance(recorded, list) and isinstance(found, list):
    if len(recorded) != len(found):
      return math.inf, [f'{path}: {len(recorded)} values, found {len(found)}']
    worst, bad = 0.0, []
    for i, (a, b) in enumerate(zip(recorded, found)):
      w, m = differences(a, b, f'{path}[{i}]')
      worst, bad = max(worst, w), bad + m
    return worst, bad
  numbers = (int, float)
  if (isinstance(recorded, numbers) and isinstance(found, numbers) and
      not isinstance(recorded, bool) and not isinstance(found, bool)):
    a, b = float(recorded), float(found)
    if a == b or (math.isnan(a) and math.isnan(b)):
      return 0.0, []
    if not (math.isfinite(a) and math.isfinite(b)):
      return math.inf, [f'{path}: {a} != {b}']
    return abs(a - b) / max(abs(a), FLOOR), []
  if recorded != found:
    return math.inf, [f'{path}: {recorded!r} != {found!r}']
  return 0.0, []


def _stored():
  return json.loads(STORE.read_text()) if STORE.exists() else {}


def _mode(case: str) -> str:
  entry = _stored().get(case)
  return ('bitwise' if entry is not None and
          entry.get('platform') == platform() else 'tolerance')


@pytest.mark.parametrize('case,mode', [(c, _mode(c)) for c in sorted(CASES)],
                         ids=[f'{c}-{_mode(c)}' for c in sorted(CASES)])
def test_results_unchanged(fingerprints, case, mode):
  stored = _stored()
  assert case in stored, f'{case} was never recorded'
  recorded, found = stored[case], fingerprints[case]
  assert sorted(recorded['files']) == sorted(found['files'])
  if mode == 'bitwise':
    hashes = lambda e: {f: v['sha256'] for f, v in e['files'].items()}
    assert hashes(found) == hashes(recorded)
    return
  warnings.warn(f'{case}: compared to tolerance {TOLERANCE[case]:g}, not '
                f'bit for bit: recorded on {recorded["platform"]}, this '
                f'machine is {found["platform"]}')
  worst, bad = differences(
      {f: v['values'] for f, v in recorded['files'].items()},
      {f: v['values'] for f, v in found['files'].items()})
  assert not bad, bad[:10]
  assert worst <= TOLERANCE[case], (
      f'{case}: values differ by {worst:.3g} (relative), more than '
      f'{TOLERANCE[case]:g}')


def test_differences_sees_changes():
  """The comparison itself: equal trees, a small change, a changed string,
  NaN, a missing column."""
  tree = {'a': [1.0, 2.0, float('nan')], 'b': ['x', 3]}
  assert differences(tree, tree) == (0.0, [])
  worst, bad = differences(tree, {'a': [1.0, 2.000002, float('nan')],
                                  'b': ['x', 3]})
  assert not bad and worst == pytest.approx(1e-6)
  assert differences(tree, {'a': [1.0, 2.0, 0.0], 'b': ['x', 3]})[0] == \
      math.inf
  assert differences(tree, {'a': [1.0, 2.0, float('nan')],
                            'b': ['y', 3]})[1]
  assert differences(tree, {'a': tree['a']})[1]


def test_platform_names_the_instruction_set():
  found = platform()
  assert found['jaxlib'] and found['machine']
  if Path('/proc/cpuinfo').exists() and platform_lib.machine() == 'x86_64':
    assert 'sse4_2' in found['isa']
