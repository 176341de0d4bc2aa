"""Hugging Face checkpoints (nash_jax.hf) against transformers.

Each test writes tiny random Qwen3, Llama 3 (llama3 RoPE scaling) and
Qwen2 checkpoints (tests/hf_fixtures.py) and loads them with our loader;
the per-token log-probabilities of fixed sequences must match those that
Hugging Face transformers (PyTorch) computed from the same files, stored
in tests/data/hf_golden.json by scripts/hf_golden.py (no torch here).
Negative controls: a changed ``rope_theta`` (the bug of Tunix 0.1.7) and a
dropped llama3 scaling miss the golden values. Also: generation against
teacher forcing, bfloat16, save -> load round trips, atomic saves, the
tokenizer helpers, the prompt file reader and one-line refusals naming the
file.
"""

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import hf_fixtures as F
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nash_jax import hf
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies import sequence as seq
from nash_jax.policies import transformer as tf

GOLDEN = json.loads(
    (Path(__file__).parent / 'data' / 'hf_golden.json').read_text())
# float32 here and in transformers; measured max |diff| about 6e-6.
TOLERANCE = 2e-5


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """The three fixture checkpoints, written once."""
  root = tmp_path_factory.mktemp('hf')
  return {arch: F.write_checkpoint(root / arch, arch) for arch in F.ARCHS}


@pytest.fixture(scope='module')
def loaded(checkpoints):
  """``(config, params, info)`` of each checkpoint in float32."""
  return {arch: hf.load_checkpoint(path, dtype='float32')
          for arch, path in checkpoints.items()}


def _sequence_log_probs(cfg, params, sequences):
  """Per-token log-probabilities ``[S][T - 1]`` and the last position's
  log-softmax ``[S][V]`` of the sequences, batched (right-padded: causal
  attention keeps the padding out of the real tokens' rows)."""
  width = max(len(s) for s in sequences)
  tokens = np.zeros((len(sequences), width), np.int32)
  mask = np.zeros((len(sequences), width), bool)
  for i, s in enumerate(sequences):
    tokens[i, :len(s)] = s
    mask[i, :len(s)] = True
  lsm = np.asarray(_log_softmax(cfg, params, jnp.asarray(tokens),
                                jnp.asarray(mask)), np.float64)
  picked = [lsm[i, np.arange(len(s) - 1), s[1:]]
            for i, s in enumerate(sequences)]
  last = [lsm[i, len(s) - 1] for i, s in enumerate(sequences)]
  return picked, last


@functools.partial(jax.jit, static_argnums=0)
def _log_softmax(cfg, params, tokens, mask):
  """``[S, T, V]`` float32 log-softmax of the logits (positions 0..)."""
  positions = jnp.broadcast_to(
      jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  logits, _ = tf.apply(cfg, params, tokens, positions, mask)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _max_diff(cfg, params, arch):
  golden = GOLDEN['archs'][arch]
  picked, last = _sequence_log_probs(cfg, params, golden['sequences'])
  diffs = [np.max(np.abs(p - np.asarray(g)))
           for p, g in zip(picked, golden['token_log_probs'])]
  diffs += [np.max(np.abs(p - np.asarray(g)))
            for p, g in zip(last, golden['last_log_softmax'])]
  return max(diffs)


def _one_line(error, *parts):
  message = str(error.value)
  assert '\n' not in message, message
  for part in parts:
    assert str(part) in message, message
  return message


# --- golden values ------------------------------------------------------------

def test_golden_file_is_from_transformers():
  assert GOLDEN['generated_by'] == 'scripts/hf_golden.py'
  assert GOLDEN['transformers_version'] and GOLDEN['torch_version']
  assert sorted(GOLDEN['archs']) == sorted(F.ARCHS)


@pytest.mark.parametrize('arch', F.ARCHS)
def test_fixture_is_the_golden_one(arch):
  """The checkpoint written here has the tensors and sequences that the
  golden values were computed from."""
  golden = GOLDEN['archs'][arch]
  assert F.digest(F.tensors(arch)) == golden['digest']
  assert F.sequences(arch) == golden['sequences']


@pytest.mark.parametrize('arch', F.ARCHS)
def test_log_probs_match_transformers(loaded, arch):
  cfg, params, info = loaded[arch]
  assert info.model_type == arch
  assert cfg.qk_norm == (arch == 'qwen3')
  assert cfg.qkv_bias == (arch == 'qwen2')
  assert (cfg.rope_scaling is not None) == (arch == 'llama')
  diff = _max_diff(cfg, params, arch)
  print(f'{arch}: max |log-prob diff| vs transformers '
        f'{GOLDEN["transformers_version"]}: {diff:.2e}')
  assert diff < TOLERANCE


@pytest.mark.parametrize('arch', F.ARCHS)
def test_rope_frequencies_match_transformers(loaded, arch):
  """Our (scaled) RoPE frequencies are transformers' ``inv_freq``."""
  cfg = loaded[arch][0]
  ours = tf.rope_frequencies(cfg.head_size, cfg.rope_theta, jnp.float32,
                             cfg.rope_scaling)
  np.testing.assert_allclose(ours, GOLDEN['archs'][arch]['inv_freq'],
                             rtol=2e-6)


def test_llama3_scaling_bands():
  """The fixture's llama3 scaling has all three bands, as the formula of
  the module docstring (an independent NumPy transcription) says."""
  cfg = F.hf_config('llama')
  s = cfg['rope_scaling']
  head_dim, context = cfg['head_dim'], s['original_max_position_embeddings']
  w = cfg['rope_theta'] ** -(np.arange(head_dim // 2) * 2.0 / head_dim)
  wavelength = 2 * math.pi / w
  ramp = ((context / wavelength - s['low_freq_factor'])
          / (s['high_freq_factor'] - s['low_freq_factor']))
  expected = np.where(
      wavelength < context / s['high_freq_factor'], w,
      np.where(wavelength > context / s['low_freq_factor'], w / s['factor'],
               (1 - ramp) * w / s['factor'] + ramp * w))
  kept = wavelength < context / s['high_freq_factor']
  divided = wavelength > context / s['low_freq_factor']
  assert kept.sum() >= 1 and divided.sum() >= 1 and (~kept & ~divided).sum()
  scaling = tf.RopeScaling('llama3', s['factor'], s['low_freq_factor'],
                           s['high_freq_factor'], context)
  ours = np.asarray(tf.rope_frequencies(head_dim, cfg['rope_theta'],
                                        jnp.float64, scaling))
  np.testing.assert_allclose(ours, expected, rtol=1e-12)
  plain = np.asarray(tf.rope_frequencies(head_dim, cfg['rope_theta'],
                                         jnp.float64))
  np.testing.assert_allclose(plain, w, rtol=1e-12)
  # The longest sequence passes the original context.
  assert max(F.LENGTHS['llama']) > context


@pytest.mark.parametrize('arch, changes', [
    ('qwen3', {'rope_theta': 10000.0}),
    ('llama', {'rope_scaling': None}),
], ids=['qwen3-theta', 'llama-no-scaling'])
def test_wrong_rope_misses_the_golden_values(tmp_path, arch, changes):
  """Negative controls: the checkpoint with another RoPE in config.json
  gives log-probabilities far outside the tolerance."""
  path = F.write_checkpoint(tmp_path / arch, arch, changes)
  cfg, params, _ = hf.load_checkpoint(path, dtype='float32')
  diff = _max_diff(cfg, params, arch)
  assert diff > 100 * TOLERANCE, diff


def test_policy_log_probs_match_transformers(loaded):
  """Through the sequence policy: left-padded prompts (the first tokens of
  each golden sequence) and right-padded responses (the rest), with the
  model's token ids (Qwen3: two end tokens, one of them the padding), give
  transformers' per-token log-probabilities."""
  arch = 'qwen3'
  cfg, params, info = loaded[arch]
  ids = info.token_ids
  assert ids.first_response == 0 and ids.banned == ()   # pad is an end token
  sequences = GOLDEN['archs'][arch]['sequences']
  splits = [2 + i for i in range(len(sequences))]
  prompt_width = max(splits)
  length = max(len(s) - p for s, p in zip(sequences, splits))
  tokens = np.full((len(sequences), prompt_width), ids.pad, np.int32)
  y = np.full((len(sequences), length), ids.pad, np.int32)
  for i, (s, p) in enumerate(zip(sequences, splits)):
    tokens[i, prompt_width - p:] = s[:p]
    y[i, :len(s) - p] = s[p:]
  x = TokenContexts(jnp.arange(len(sequences)), jnp.asarray(tokens),
                    jnp.asarray(tokens != ids.pad))
  lp = np.asarray(jax.jit(
      lambda p, x, y: seq.response_log_probs(cfg, p, x, y, 1.0, ids))(
          params, x, jnp.asarray(y)))
  for i, (s, p) in enumerate(zip(sequences, splits)):
    golden = GOLDEN['archs'][arch]['token_log_probs'][i][p - 1:]
    np.testing.assert_allclose(lp[i, :len(s) - p], golden, atol=TOLERANCE)


# --- generation -----------------------------------------------------------------

def test_generate_with_a_loaded_model(loaded, checkpoints):
  """Sampling from the loaded Llama model (prompts from its tokenizer, two
  end tokens, no pad token): the log-probabilities of the drawn tokens are
  the teacher-forced ones, tokens after the end are the padding, and the
  decoded text stops at the end."""
  cfg, params, info = loaded['llama']
  ids = info.token_ids
  assert ids.eos == F.token_id('llama', '<|end_of_text|>')
  assert ids.extra_eos == (F.token_id('llama', '<|eot_id|>'),)
  tokenizer = hf.load_tokenizer(checkpoints['llama'])
  texts = ['the cat sat on the mat .', 'why ?', 'a big red dog ran'] * 2
  x = hf.encode_prompts(tokenizer, texts, ids.pad, max_prompt_length=10)
  assert int(x.tokens[1, -3]) == info.bos_id      # <|begin_of_text|> first
  length = 8
  policy = seq.make_sequence_policy(cfg, length, 1.0, ids)
  y, picked, valid = jax.jit(
      lambda k, p, x: seq.generate(k, p, x, length, cfg, 1.0, ids=ids))(
          jax.random.PRNGKey(0), params, x)
  y, picked, valid = map(np.asarray, (y, picked, valid))
  teacher = np.asarray(jax.jit(
      lambda p, x, y: seq.response_log_probs(cfg, p, x, y, 1.0, ids))(
          params, x, jnp.asarray(y)))
  np.testing.assert_allclose(picked, teacher, atol=1e-5)
  np.testing.assert_array_equal(valid, seq.response_mask(y, ids))
  assert np.all(y[~valid] == ids.pad)
  assert policy.name == 'transformer'
  texts = hf.decode_responses(tokenizer, y, ids)
  for row, text in zip(y, texts):
    ended = [t for t, token in enumerate(row) if token in ids.end_ids]
    body = row[:ended[0]] if ended else row
    assert text == tokenizer.decode(body.tolist())


def test_pad_that_is_no_end_token_is_banned():
  """``pad != eos``: the pad token gets probability 0 and the rest is the
  renormalized softmax."""
  ids = seq.full_vocabulary(eos=5, pad=0)
  assert ids.banned == (0,)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)))
  lp = np.asarray(seq.token_log_probs(logits, 0.7, ids))
  assert np.all(np.exp(lp[..., 0]) == 0) and np.all(np.isfinite(lp))
  z = np.asarray(logits)[..., 1:] / 0.7
  expected = z - np.log(np.sum(np.exp(z), -1, keepdims=True))
  np.testing.assert_allclose(lp[..., 1:], expected, rtol=1e-12)
  # The default ids keep the synthetic slice: EOS and content tokens.
  np.testing.assert_array_equal(
      seq.token_log_probs(logits, 0.7),
      jax.nn.log_softmax(logits[..., seq.EOS_ID:] / 0.7, axis=-1))


def test_token_ids_validation():
  seq.validate_token_ids(seq.SYNTHETIC_IDS, 4)
  for ids, vocab in [(seq.TokenIds(eos=9), 8),
                     (seq.full_vocabulary(3, extra_eos=(12,)), 8),
                     (seq.TokenIds(pad=0, eos=2, banned=(2,)), 8),
                     (seq.TokenIds(eos=1, first_response=2), 8),
                     (seq.full_vocabulary(0, pad=1), 2)]:
    with pytest.raises(ConfigError, match='token_ids'):
      seq.validate_token_ids(ids, vocab)
  with pytest.raises(ConfigError, match='token_ids'):
    seq.make_sequence_policy(tf.TransformerConfig(vocab_size=8), 3,
                             ids=seq.TokenIds(eos=9))


# --- dtypes, saving -------------------------------------------------------------

def test_bfloat16_load(checkpoints):
  """Qwen3 is stored in bfloat16 and loads as bfloat16 by default; the
  bfloat16 forward stays near the golden float32 values."""
  cfg, params, info = hf.load_checkpoint(checkpoints['qwen3'])
  assert info.stored_dtype == 'bfloat16' and cfg.param_dtype == 'bfloat16'
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params))
  stored = load_file(
      checkpoints['qwen3'] / 'model-00001-of-00002.safetensors')
  np.testing.assert_array_equal(
      np.asarray(params['embedder']['embedding']).view(np.uint16),
      stored['model.embed_tokens.weight'].view(np.uint16))
  diff = _max_diff(cfg, params, 'qwen3')
  assert diff < 0.25, diff
  # A float32 checkpoint cast on load.
  cfg, params, _ = hf.load_checkpoint(checkpoints['qwen2'], 'bfloat16')
  assert cfg.param_dtype == 'bfloat16'
  assert params['layer_0']['attn']['q']['b'].dtype == jnp.bfloat16


def _assert_same(tree_a, tree_b):
  assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a).view(np.uint8),
                                  np.asarray(b).view(np.uint8))


def test_open_checkpoint_reads_each_file_once(tmp_path):
  """A :class:`hf.Checkpoint` keeps what it read: with config.json,
  generation_config.json and tokenizer.json removed once read, it still
  loads what :func:`hf.load_checkpoint` loads; nothing is read on
  opening, so each refusal comes when its file is asked for."""
  path = F.write_checkpoint(tmp_path / 'm', 'llama')
  want = hf.load_checkpoint(path, 'float32')
  checkpoint = hf.open_checkpoint(path)
  assert checkpoint.config == hf.checkpoint_config(path)
  tokenizer = checkpoint.tokenizer
  assert checkpoint.generation_config
  for name in ('config.json', 'generation_config.json', 'tokenizer.json'):
    os.remove(path / name)
  assert checkpoint.tokenizer is tokenizer
  config, params, info = checkpoint.load('float32')
  assert config == want[0] and info == want[2]
  assert info.hf_config == want[2].hf_config
  _assert_same(params, want[1])
  nowhere = hf.open_checkpoint(tmp_path / 'nowhere', 'judge_dir')
  with pytest.raises(ConfigError) as error:
    nowhere.tokenizer
  assert _one_line(error, 'tokenizer.json', 'no such file').startswith(
      '--judge_dir: ')
  with pytest.raises(ConfigError) as error:
    nowhere.config
  _one_line(error, 'nowhere', 'no such directory')


@pytest.mark.parametrize('arch', F.ARCHS)
def test_save_load_round_trip(tmp_path, checkpoints, arch):
  """load(save(load(x))) is bit-identical; the saved weights are the
  source file's tensors (names, dtype and bytes) and its config.json keeps
  every source field, so transformers reads it as it read the source."""
  source = checkpoints[arch]
  cfg, params, info = hf.load_checkpoint(source)
  out = hf.save_checkpoint(tmp_path / 'out', cfg, params, source)
  cfg2, params2, info2 = hf.load_checkpoint(out)
  assert cfg2 == cfg and info2.token_ids == info.token_ids
  _assert_same(params, params2)
  saved = load_file(out / 'model.safetensors')
  original = F.tensors(arch)
  assert sorted(saved) == sorted(original)
  for name in original:
    assert saved[name].dtype == original[name].dtype, name
    np.testing.assert_array_equal(saved[name].view(np.uint8),
                                  original[name].view(np.uint8))
  source_config = json.loads((source / 'config.json').read_text())
  saved_config = json.loads((out / 'config.json').read_text())
  for key, value in source_config.items():
    assert saved_config[key] == value, key
  for name in ('tokenizer.json', 'tokenizer_config.json',
               'generation_config.json'):
    assert (out / name).read_bytes() == (source / name).read_bytes()
  assert not (out / 'model.safetensors.index.json').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
  # New end and padding tokens reach generation_config.json too.
  ids = seq.full_vocabulary(eos=3, pad=0)
  out = hf.save_checkpoint(tmp_path / 'ids', cfg, params, source,
                           token_ids=ids)
  assert hf.load_checkpoint(out)[2].token_ids == ids


def test_save_float32_of_bfloat16_and_back(tmp_path, checkpoints, loaded):
  """A bfloat16 checkpoint loaded as float32 saves as float32 (round trip
  bit-identical), or as bfloat16 again with ``dtype`` (the source bytes)."""
  cfg, params, _ = loaded['qwen3']
  source = checkpoints['qwen3']
  out = hf.save_checkpoint(tmp_path / 'f32', cfg, params, source)
  cfg2, params2, info2 = hf.load_checkpoint(out)
  assert info2.stored_dtype == 'float32' and cfg2 == cfg
  _assert_same(params, params2)
  out = hf.save_checkpoint(tmp_path / 'bf16', cfg, params, source,
                           dtype='bfloat16')
  saved = load_file(out / 'model.safetensors')
  for name, value in F.tensors('qwen3').items():
    np.testing.assert_array_equal(saved[name].view(np.uint16),
                                  value.view(np.uint16))
  assert json.loads((out / 'config.json').read_text())['torch_dtype'] == \
      'bfloat16'


def test_save_without_source(tmp_path, loaded):
  """A config alone writes a config.json that loads back the same (with
  no end token unless ``token_ids`` is given)."""
  for arch in F.ARCHS:
    cfg, params, _ = loaded[arch]
    out = hf.save_checkpoint(tmp_path / arch, cfg, params)
    hf_config = json.loads((out / 'config.json').read_text())
    assert hf_config['model_type'] == arch
    assert hf.transformer_config(hf_config, 'float32') == cfg
    info = hf.load_checkpoint(out)[2]
    assert info.eos_ids == ()
    with pytest.raises(ConfigError) as error:
      info.token_ids
    _one_line(error, 'config.json', 'eos_token_id')
    np.testing.assert_array_equal(
        load_file(out / 'model.safetensors')['model.norm.weight'],
        params['final_norm']['scale'])


def test_save_is_atomic(tmp_path, loaded, monkeypatch):
  """A save that fails midway leaves nothing at (or beside) ``out_dir``;
  an existing ``out_dir`` is refused, or replaced with ``overwrite``."""
  cfg, params, info = loaded['qwen2']
  import safetensors.numpy

  def fail(*args, **kwargs):
    raise KeyboardInterrupt('killed while writing')

  monkeypatch.setattr(safetensors.numpy, 'save_file', fail)
  with pytest.raises(KeyboardInterrupt):
    hf.save_checkpoint(tmp_path / 'out', cfg, params)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.undo()
  out = hf.save_checkpoint(tmp_path / 'out', cfg, params)
  with pytest.raises(ConfigError) as error:
    hf.save_checkpoint(out, cfg, params)
  _one_line(error, 'out', 'exists')
  doubled = jax.tree.map(lambda a: 2 * a, params)
  hf.save_checkpoint(out, cfg, doubled, overwrite=True,
                     token_ids=info.token_ids)
  _, params2, info2 = hf.load_checkpoint(out)
  _assert_same(params2, doubled)
  assert info2.token_ids == info.token_ids
  assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_new_options_draw_the_same_weights():
  """QK-norm scales (1) and q, k, v biases (0) draw nothing: the random
  weights are those of the plain config."""
  base = tf.TransformerConfig(vocab_size=11, d_model=8, num_layers=2,
                              num_heads=2, num_kv_heads=1, mlp_dim=8)
  init = tf.init_params
  plain = init(jax.random.PRNGKey(3), base)
  for changes in (dict(qk_norm=True), dict(qkv_bias=True),
                  dict(rope_scaling=tf.RopeScaling())):
    params = init(jax.random.PRNGKey(3), dataclasses.replace(base, **changes))
    for path in (('embedder', 'embedding'), ('layer_1', 'mlp', 'down', 'w'),
                 ('layer_0', 'attn', 'q', 'w')):
      a, b = plain, params
      for key in path:
        a, b = a[key], b[key]
      np.testing.assert_array_equal(a, b)
    if changes.get('qk_norm'):
      np.testing.assert_array_equal(
          params['layer_0']['attn']['q_norm']['scale'], 1.0)
    if changes.get('qkv_bias'):
      np.testing.assert_array_equal(params['layer_0']['attn']['k']['b'], 0.0)


@pytest.mark.parametrize('changes, field', [
    (dict(rope_scaling=tf.RopeScaling(rope_type='yarn')), 'rope_scaling'),
    (dict(rope_scaling=tf.RopeScaling(low_freq_factor=4.0,
                                      high_freq_factor=1.0)),
     'rope_scaling'),
    (dict(rope_scaling={'factor': 8.0}), 'rope_scaling'),
    (dict(qk_norm=1), 'qk_norm'),
    (dict(qkv_bias='yes'), 'qkv_bias'),
])
def test_config_refusals(changes, field):
  cfg = dataclasses.replace(tf.TransformerConfig(vocab_size=8), **changes)
  with pytest.raises(ConfigError, match=f'--{field}:'):
    tf.validate_transformer_config(cfg)


# --- refusals -------------------------------------------------------------------

def _rewrite(path: Path, edit):
  named = load_file(path)
  edit(named)
  save_file(named, path, {'format': 'pt'})


def test_refuses_missing_config(tmp_path):
  path = F.write_checkpoint(tmp_path / 'm', 'llama')
  os.remove(path / 'config.json')
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  assert _one_line(error, 'config.json', 'no such file').startswith(
      '--model_dir: ')
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(tmp_path / 'nowhere')
  _one_line(error, 'nowhere', 'no such directory')


@pytest.mark.parametrize('changes, words', [
    ({'model_type': 'gemma'}, ["'gemma'", 'not supported']),
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, ["'yarn'"]),
    ({'hidden_act': 'gelu'}, ['gelu']),
    ({'hidden_size': None}, ['hidden_size']),
    ({'num_key_value_heads': 3}, ['num_kv_heads']),
    ({'eos_token_id': 999}, []),
])
def test_refuses_unsupported_config(tmp_path, changes, words):
  path = F.write_checkpoint(tmp_path / 'm', 'qwen2', changes)
  if 'eos_token_id' in changes:
    os.remove(path / 'generation_config.json')
    words = ['eos_token_id', '999']
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, 'config.json', *words)


def test_refuses_missing_tensor(tmp_path):
  path = F.write_checkpoint(tmp_path / 'm', 'llama')
  name = 'model.layers.1.mlp.up_proj.weight'
  _rewrite(path / 'model.safetensors', lambda t: t.pop(name))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, 'model.safetensors', name)


def test_refuses_missing_tensor_of_a_shard(tmp_path):
  """Sharded: a tensor the index lists but its shard lacks names the
  shard; one that neither has names the index."""
  path = F.write_checkpoint(tmp_path / 'm', 'qwen3')
  name = 'model.layers.1.self_attn.k_norm.weight'
  shard = path / 'model-00002-of-00002.safetensors'
  _rewrite(shard, lambda t: t.pop(name))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, shard, name)
  index_path = path / 'model.safetensors.index.json'
  index = json.loads(index_path.read_text())
  del index['weight_map'][name]
  index_path.write_text(json.dumps(index))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, index_path, name)


def test_refuses_wrong_shape_and_unexpected_tensor(tmp_path):
  path = F.write_checkpoint(tmp_path / 'm', 'llama')
  name = 'model.layers.0.self_attn.o_proj.weight'
  _rewrite(path / 'model.safetensors',
           lambda t: t.update({name: t[name][:, :-1].copy()}))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, 'model.safetensors', name, '[128, 127]', '[128, 128]')
  path = F.write_checkpoint(tmp_path / 'n', 'llama')
  extra = 'model.layers.0.self_attn.q_norm.weight'
  _rewrite(path / 'model.safetensors',
           lambda t: t.update({extra: np.ones(32, np.float32)}))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, 'model.safetensors', extra, 'unexpected')


def test_ignores_rotary_buffers_and_checks_a_tied_head(tmp_path):
  """Old checkpoints' ``rotary_emb.inv_freq`` buffers are skipped; a tied
  model's stored ``lm_head.weight`` must equal the embedding."""
  path = F.write_checkpoint(tmp_path / 'm', 'llama')
  buffer = 'model.layers.0.self_attn.rotary_emb.inv_freq'
  _rewrite(path / 'model.safetensors', lambda t: t.update({
      buffer: np.ones(16, np.float32),
      'lm_head.weight': t['model.embed_tokens.weight'].copy()}))
  hf.load_checkpoint(path)
  _rewrite(path / 'model.safetensors', lambda t: t.update({
      'lm_head.weight': 2 * t['model.embed_tokens.weight']}))
  with pytest.raises(ConfigError) as error:
    hf.load_checkpoint(path)
  _one_line(error, 'config.json', 'lm_head.weight')


def test_bfloat16_tensors_read_with_ml_dtypes(tmp_path):
  """safetensors' numpy reader gives bfloat16 as ml_dtypes' bfloat16 (which
  is JAX's)."""
  path = tmp_path / 'x.safetensors'
  value = np.arange(6, dtype=np.float32).reshape(2, 3) / 3
  save_file({'a': value.astype(jnp.bfloat16)}, path)
  read = load_file(path)['a']
  assert read.dtype == jnp.bfloat16
  np.testing.assert_array_equal(read, value.astype(jnp.bfloat16))


# --- tokenizer and prompts --------------------------------------------------------

def test_encode_prompts(checkpoints):
  tokenizer = hf.load_tokenizer(checkpoints['qwen3'])
  x = hf.encode_prompts(tokenizer, ['the cat', 'a dog sat on it .'], pad_id=0)
  assert x.tokens.shape == (2, 6) and x.tokens.dtype == jnp.int32
  np.testing.assert_array_equal(x.mask[0], [0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(x.index, [0, 1])
  assert tokenizer.decode(np.asarray(x.tokens[0, 4:]).tolist()) == 'the cat'
  assert hf.encode_prompts(tokenizer, ['the'], 0, 4).tokens.shape == (1, 4)
  with pytest.raises(ConfigError) as error:
    hf.encode_prompts(tokenizer, ['the', 'a b c d e'], 0, 4, source='p.jsonl')
  _one_line(error, 'p.jsonl', 'prompt 1', '5 tokens')
  with pytest.raises(ConfigError) as error:
    hf.encode_prompts(tokenizer, ['the', ''], 0)
  _one_line(error, 'prompt 1', 'no tokens')


def test_load_tokenizer_refusal(tmp_path):
  with pytest.raises(ConfigError) as error:
    hf.load_tokenizer(tmp_path)
  _one_line(error, 'tokenizer.json')


def test_read_prompts(tmp_path):
  path = tmp_path / 'prompts.jsonl'
  path.write_text('{"prompt": "the cat"}\n\n{"prompt": "why ?", "id": 2}\n')
  assert hf.read_prompts(path) == ['the cat', 'why ?']
  for lines, number, words in [
      ('{"prompt": "a"}\n{"prompt": "b"\n', 2, 'not valid JSON'),
      ('["a"]\n', 1, 'JSON object'),
      ('{"prompt": "a"}\n{"text": "b"}\n', 2, '"prompt"'),
      ('{"prompt": 3}\n', 1, '"prompt"')]:
    path.write_text(lines)
    with pytest.raises(ConfigError) as error:
      hf.read_prompts(path)
    assert _one_line(error, f'{path}:{number}', words).startswith(
        '--prompt_file: ')
  path.write_text('\n')
  with pytest.raises(ConfigError) as error:
    hf.read_prompts(path)
  _one_line(error, path, 'no prompts')
  with pytest.raises(ConfigError) as error:
    hf.read_prompts(tmp_path / 'missing.jsonl')
  _one_line(error, 'missing.jsonl', 'no such file')
