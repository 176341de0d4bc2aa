"""A language-model run's parameters split over devices (model parallel).

The logical axis names of the transformer's parameters and the rules that
map them to mesh axes (:mod:`nash_jax.sharding`), in process; then the same
tiny run (a 2-layer, d = 16 transformer with 4 query and 4 key-value heads,
MLP width 32 and 8 token ids, batch 8, online IPO with adam, 2 seeds, 4
steps) on 8 fake CPU devices with ``model_parallel`` 2 and 4 (meshes
``('seeds', 'data', 'model')`` of shape [4, 1, 2] and [2, 1, 4]) and with
``data_parallel=2`` x ``model_parallel=2`` ([2, 2, 2]), against one device
with the default program; each run also stops after 2 steps and resumes.
XLA_FLAGS must be set before JAX starts, so each run is a fresh process (as
in tests/test_lm_parallel.py); they run at the same time. The refusals of a bad ``--model_parallel`` go through the
``experiments.lm`` binary (tests/refusals.py).
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import FAST_COMPILE, fake_devices_env
from refusals import assert_refused, run_table

from nash_jax import sharding
from nash_jax.policies import transformer
from nash_jax.precision import in_float32

ROOT = Path(__file__).resolve().parents[1]
P = jax.sharding.PartitionSpec

# The tiny run through the trainer on a [8 / (D M), D, M] mesh (``argv[1]``
# D, ``argv[2]`` M; 1 1: one device, the default program) in a process that
# sees 8 fake devices. The compiled init and chunk programs are spied on
# (each compiled once, then called): the per-device shard shapes of the
# state they return and the number of all-reduces in the chunk's optimized
# HLO are saved with the final params, the per-chunk losses and the leaves
# in which a resumed run differs.
SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    jax.config.update('jax_enable_x64', True)
    from nash_jax import experiment, train
    from nash_jax.tasks import token_game
    from nash_jax.tasks.language_model import compute_dtype as lm_compute_dtype
    data, model, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    assert jax.device_count() == 8, jax.devices()
    config = token_game.TokenGameConfig(
        algorithm='online_ipo', vocab_size=5, max_length=2, num_prompts=2,
        d_model=16, num_layers=2, num_heads=4, num_kv_heads=4, mlp_dim=32,
        batch_size=8, optimizer='adam', learning_rate=3e-3)
    env_params = token_game.env_params_of(config)
    make = token_game.algorithm_maker(config)
    hyper = {k: np.asarray([v, v], lm_compute_dtype(config))
             for k, v in token_game.TASK.hyperparameters(config).items()}
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    devices = 1 if data == model == 1 else 8
    saved = {}

    def shards(prefix, state):
      # The per-device shard shape of some of the state's leaves.
      layer = state.params['layer_0']
      adam = state.opt_state.inner_state[0]
      for name, leaf in (('gate', layer['mlp']['gate']['w']),
                         ('down', layer['mlp']['down']['w']),
                         ('q', layer['attn']['q']['w']),
                         ('embedding', state.params['embedder']['embedding']),
                         ('norm', layer['mlp_norm']['scale']),
                         ('mu_gate', adam.mu['layer_0']['mlp']['gate']['w'])):
        saved[f'{prefix}_{name}'] = np.asarray(
            leaf.addressable_shards[0].data.shape)
        saved[f'{prefix}_{name}_full'] = np.asarray(leaf.shape)

    def spy(maker, prefix):
      # Each program compiled once (per maker arguments), then called; a
      # call with other input shardings than it was compiled for fails.
      compiled = {}

      def spied(*args):
        jitted = maker(*args)

        def call(*inputs):
          if args not in compiled:
            compiled[args] = jitted.lower(*inputs).compile()
            result = compiled[args](*inputs)
            shards(prefix, result[0])
            saved[f'{prefix}_all_reduces'] = sum(
                ' all-reduce(' in line
                for line in compiled[args].as_text().splitlines())
            return result
          return compiled[args](*inputs)
        return call
      return spied

    train.make_initializer = spy(train.make_initializer, 'init')
    train.make_chunk_runner = spy(train.make_chunk_runner, 'chunk')
    mesh = train.seed_mesh(devices, data, model)
    evaluate = lambda hyper, state, env, data: {}
    run = lambda num_steps, resume=None: train.train(
        make, evaluate, keys, env_params, (), hyper=hyper,
        num_steps=num_steps, eval_every=2, shared=True, mesh=mesh,
        resume=resume)
    state, rows = run(4)
    saved['loss'] = np.concatenate([r['loss'] for r in rows])
    for i, leaf in enumerate(jax.tree.leaves(state.params)):
      saved[f'param_{i:03d}'] = np.asarray(leaf, np.float64)
    # Stopped after 2 steps, then resumed from the host copy of the state
    # (placed split again) to 4: the leaves that differ from the
    # uninterrupted run's, by path.
    half, half_rows = run(2)
    resumed, _ = run(4, resume=(half, half_rows, 2))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    saved['resume_differs'] = np.asarray([''] + [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(flat, jax.tree.leaves(resumed))
        if not np.array_equal(a, b)])
    np.savez(out, **saved)
""")

# (data_parallel, model_parallel) of each run; (1, 1) is the one-device run.
RUNS = ((1, 1), (1, 2), (1, 4), (2, 2))


def _start(data: int, model: int, out: Path):
  env = fake_devices_env(8, FAST_COMPILE)  # Every run under the same flags.
  # Compiled here, not read from the persistent cache, so that the spied
  # executables hold their optimized HLO.
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  return subprocess.Popen(
      [sys.executable, '-c', SCRIPT, str(data), str(model), str(out)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The runs of :data:`RUNS`, started together when the first test that
  needs them starts; ``{(D, M): saved arrays}``."""
  root = tmp_path_factory.mktemp('lm_model_parallel')
  procs = {run: _start(*run, root / f'{run[0]}x{run[1]}.npz')
           for run in RUNS}
  try:
    for run, proc in procs.items():
      _, stderr = proc.communicate(timeout=900)
      assert proc.returncode == 0, (run, stderr[-3000:])
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return {run: np.load(root / f'{run[0]}x{run[1]}.npz') for run in RUNS}


# --------------------------------------------------------------------------
# Logical axes and rules, in process (one device).

CONFIGS = [
    transformer.TransformerConfig(vocab_size=8),
    transformer.TransformerConfig(vocab_size=8, tie_embeddings=False,
                                  qk_norm=True, qkv_bias=True, num_heads=4,
                                  num_kv_heads=1),
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=['tied', 'untied_qk_norm_bias'])
def test_logical_axes_name_every_dimension_of_every_parameter(cfg):
  params = transformer.init_params(jax.random.PRNGKey(0), cfg)
  axes = transformer.logical_axes(cfg)
  assert (jax.tree.structure(axes, is_leaf=sharding.is_axes)
          == jax.tree.structure(params))
  sizes = {'vocab': cfg.vocab_size, 'embed': cfg.d_model,
           'heads': cfg.num_heads, 'kv_heads': cfg.num_kv_heads,
           'head_dim': cfg.head_size, 'mlp': cfg.mlp_dim}

  def check(names, x):
    assert len(names) == x.ndim, (names, x.shape)
    for name, size in zip(names, x.shape):
      if name == 'norm':
        assert size in (cfg.d_model, cfg.head_size)
      else:
        assert sizes[name] == size, (names, x.shape)
  jax.tree.map(check, axes, params, is_leaf=sharding.is_axes)
  layer = axes['layer_0']
  assert layer['mlp']['gate']['w'] == ('embed', 'mlp')
  assert layer['mlp']['down']['w'] == ('mlp', 'embed')
  assert layer['attn']['o']['w'] == ('heads', 'head_dim', 'embed')
  assert axes['embedder']['embedding'] == ('vocab', 'embed')


def test_rules_split_heads_mlp_and_vocab_megatron_style():
  axes = transformer.logical_axes(CONFIGS[1])
  specs = sharding.param_specs(axes)
  layer = specs['layer_0']
  assert layer['attn']['q']['w'] == P(None, 'model', None)
  assert layer['attn']['k']['w'] == P(None, 'model', None)
  assert layer['attn']['q']['b'] == P('model', None)
  assert layer['attn']['o']['w'] == P('model', None, None)
  assert layer['mlp']['gate']['w'] == P(None, 'model')
  assert layer['mlp']['down']['w'] == P('model', None)
  assert layer['mlp_norm']['scale'] == P(None)
  assert layer['attn']['q_norm']['scale'] == P(None)
  assert specs['embedder']['embedding'] == P('model', None)
  assert specs['head']['w'] == P(None, 'model')
  # Leading dimensions (a batch of runs) take their own mesh axes.
  assert sharding.spec_of(('embed', 'mlp'), leading=('seeds',)) == P(
      'seeds', None, 'model')
  with pytest.raises(ValueError, match='not in the sharding rules'):
    sharding.spec_of(('embed', 'typo'))
  with pytest.raises(ValueError, match='two dimensions to one mesh axis'):
    sharding.spec_of(('heads', 'mlp'))


def test_state_specs_follow_the_params_into_the_optimizer_state():
  # Adam's moments have the params' structure and get their specs; counters,
  # injected hyperparameters and other leaves are replicated.
  cfg = CONFIGS[0]
  params = transformer.init_params(jax.random.PRNGKey(0), cfg)
  opt = in_float32(optax.inject_hyperparams(optax.adam)(learning_rate=0.1))
  state = {'params': params, 'opt_state': opt.init(params),
           'step': jnp.zeros((), jnp.int32), 'anchor': None}
  specs = sharding.state_specs(state, transformer.logical_axes(cfg))
  adam = specs['opt_state'].inner_state[0]
  gate = P(None, 'model')
  assert specs['params']['layer_1']['mlp']['gate']['w'] == gate
  assert adam.mu['layer_1']['mlp']['gate']['w'] == gate
  assert adam.nu['layer_1']['mlp']['gate']['w'] == gate
  assert adam.count == P()
  assert specs['opt_state'].hyperparams['learning_rate'] == P()
  assert specs['step'] == P() and specs['anchor'] is None
  # A batch of runs: one more leading dimension, split over 'seeds'.
  batched = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  specs = sharding.state_specs(batched, transformer.logical_axes(cfg),
                               leading=('seeds',))
  assert specs['params']['layer_1']['mlp']['gate']['w'] == P(
      'seeds', None, 'model')
  assert specs['step'] == P('seeds')
  # A policy without logical axes (tabular, MLP): everything replicated.
  assert set(jax.tree.leaves(sharding.state_specs(state, None))) == {P()}


def test_constrain_emits_nothing_without_a_model_axis():
  cfg = CONFIGS[0]
  params = transformer.init_params(jax.random.PRNGKey(0), cfg)
  axes = transformer.logical_axes(cfg)
  jaxpr = str(jax.make_jaxpr(lambda p: sharding.constrain(p, axes))(params))
  assert 'sharding_constraint' not in jaxpr
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           ('seeds', 'data', 'model'))
  assert not sharding.splits(mesh)  # one 'model' device splits nothing
  with jax.set_mesh(mesh):
    jaxpr = str(jax.make_jaxpr(lambda p: sharding.constrain(p, axes))(
        params))
  assert 'sharding_constraint' not in jaxpr


def test_indivisible_dimensions_are_found():
  cfg = CONFIGS[1]  # 4 query heads, 1 key-value head, 8 token ids
  shapes = jax.eval_shape(lambda: transformer.init_params(
      jax.random.PRNGKey(0), cfg))
  axes = transformer.logical_axes(cfg)
  assert sharding.indivisible(shapes, axes, {'model': 1}) == []
  assert sharding.indivisible(shapes, axes, {'model': 2}) == [
      ('kv_heads', 1, 'model', 2)]
  found = sharding.indivisible(shapes, axes, {'model': 16})
  assert {name for name, *_ in found} == {'vocab', 'heads', 'kv_heads'}


# --------------------------------------------------------------------------
# The runs on 8 fake devices.


@pytest.mark.slow
@pytest.mark.parametrize('run', RUNS[1:], ids=[f'data{d}_model{m}'
                                               for d, m in RUNS[1:]])
def test_model_parallel_matches_one_device(runs, run):
  one, many = runs[(1, 1)], runs[run]
  names = sorted(k for k in one.files if k.startswith('param_'))
  assert len(names) > 10
  # The same run up to the order of sums. Measured (float32, JAX 0.10.2,
  # CPU, FAST_COMPILE, 4 steps of adam at 3e-3, 8 fake devices): the params
  # differ from one device's by at most 7.8e-7 (model_parallel=2), 3.7e-7
  # (4) and 6.8e-7 (2 x 2), the per-chunk losses by at most 7.5e-8
  # relative. With sgd instead of adam the params differ by 1.2e-7 (one
  # float32 ulp at the largest weights): adam divides each gradient by its
  # own magnitude, so a small gradient's rounding error becomes a larger
  # step error. The same 3-D mesh with nothing split (constraints and
  # placement disabled) differed by 5.7e-7: another mesh's compiled program
  # changes the last bits as much as the split sums do, so the tolerances
  # (5e-6, a 600th of one adam step, and 1e-5 relative on the losses) say
  # the run is the same one, and the sharding test below says that the
  # parameters were split. A missing or doubled all-reduce moves the
  # params by a whole step (3e-3).
  diff = max(np.max(np.abs(one[k] - many[k])) for k in names)
  rel = np.max(np.abs(many['loss'] - one['loss'])
               / np.abs(one['loss']).clip(1e-30))
  print(f'model parallel {run} vs 1: params {diff:.3g}, losses {rel:.3g} '
        'rel')
  assert diff <= 5e-6, diff
  np.testing.assert_allclose(many['loss'], one['loss'], rtol=1e-5)
  assert np.all(np.isfinite(one['loss'])) and one['loss'][-1] != 0


@pytest.mark.slow
@pytest.mark.parametrize('run', RUNS[1:], ids=[f'data{d}_model{m}'
                                               for d, m in RUNS[1:]])
def test_parameters_are_split_over_the_model_axis(runs, run):
  # What the compiled programs return, per device: the MLP kernels, a query
  # projection, the embedding and adam's first moment are 1/M of their
  # split dimension (Megatron layout); norm scales are whole. The init
  # program reads the reference parameters replicated, so its output is
  # split only by the constraint on the state (with sharding.constrain a
  # no-op, checked by hand, init returned whole [.., 16, 32] kernels); the
  # chunk program keeps them split and all-reduces (with the constraints
  # and the placement both disabled, checked by hand, every kernel was
  # whole and the chunk held no all-reduce).
  _, model = run
  saved, one = runs[run], runs[(1, 1)]
  for prefix in ('init', 'chunk'):
    for name, axis in (('gate', -1), ('down', -2), ('q', -2),
                       ('embedding', -2), ('mu_gate', -1)):
      full = saved[f'{prefix}_{name}_full']
      shard = saved[f'{prefix}_{name}']
      expected = full.copy()
      expected[0] = shard[0]  # the seed axis, split over 'seeds'
      expected[axis] = full[axis] // model
      assert list(shard) == list(expected), (prefix, name, shard, full)
      # One device holds everything (the seed axis aside).
      assert list(one[f'{prefix}_{name}'][1:]) == list(full[1:])
    norm = saved[f'{prefix}_norm']
    assert norm[-1] == saved[f'{prefix}_norm_full'][-1]
  assert saved['chunk_all_reduces'] > 0
  assert one['chunk_all_reduces'] == 0


@pytest.mark.slow
@pytest.mark.parametrize('run', RUNS, ids=[f'data{d}_model{m}'
                                           for d, m in RUNS])
def test_a_resumed_run_equals_an_uninterrupted_one(runs, run):
  # The resumed state is placed split (nash_jax.train's state_shardings)
  # and runs the very executable the uninterrupted run compiled (which
  # refuses inputs placed otherwise): every leaf of the final state equal
  # bit for bit.
  assert list(runs[run]['resume_differs']) == ['']


# --------------------------------------------------------------------------
# Refusals through the binary.

TINY = ['--vocab_size=5', '--max_length=2', '--num_prompts=2', '--d_model=8',
        '--mlp_dim=8', '--num_heads=2', '--num_kv_heads=2', '--num_layers=1',
        '--batch_size=8', '--num_steps=2', '--eval_every=1']

MODEL_PARALLEL_REFUSALS = [
    (['--model_parallel=0'], r'must be >= 1, got 0'),
    (['--model_parallel=3'], r'must divide the 8 devices the run uses '
     r'\(all the devices JAX sees\) / --data_parallel=1 = 8, got 3'),
    (['--data_parallel=4', '--model_parallel=4'],
     r'/ --data_parallel=4 = 2, got 4'),
    (['--num_devices=2', '--model_parallel=4'], r'must divide the 2 devices '
     r'the run uses \(--num_devices\)'),
    (['--model_parallel=2', '--num_kv_heads=1'],
     r"MLP width, vocabulary\): --num_kv_heads=1; got 2$"),
    (['--model_parallel=2', '--mlp_dim=9'], r': --mlp_dim=9; got 2$'),
    (['--model_parallel=2', '--vocab_size=4'],
     r': the model.s vocabulary \(--vocab_size=4 content tokens \+ PAD, '
     r'BOS, EOS = 7\); got 2$'),
    (['--model_parallel=4'], r': --num_kv_heads=2, --num_heads=2; got 4$'),
]


def test_lm_binary_refuses_a_bad_model_parallel_before_any_work(tmp_path):
  results = run_table(
      'experiments.lm', MODEL_PARALLEL_REFUSALS, tmp_path,
      lambda out, args: [f'--output_dir={out}', *TINY, *args],
      env=fake_devices_env(8))
  for (args, pattern), (outcome, out) in zip(MODEL_PARALLEL_REFUSALS,
                                             results):
    line = assert_refused(outcome, 'error: --model_parallel: ', out)
    assert re.search(pattern, line), (args, line)
