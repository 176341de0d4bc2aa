"""Reading the safetensors files of a checkpoint directory.

:class:`LazyTensors` maps every tensor name of the directory's
``*.safetensors`` files (or of the shards that
``model.safetensors.index.json`` lists) to its file, shape and dtype from
the headers alone, and reads a tensor only when it is looked up;
:func:`stored_dtype` is the dtype the weights are stored in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nash_jax.hf.config import TORCH_DTYPES
from nash_jax.hf.files import INDEX_FILE, read_json, refuse
from nash_jax.hf.keymap import tensor_order


def _shard_files(model_dir: Path, flag: str):
  """``{file: None}`` or, with an index, ``{file: [names]}``; and the file
  to name for missing tensors."""
  index_path = model_dir / INDEX_FILE
  if index_path.is_file():
    index = read_json(index_path, flag)
    weight_map = index.get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
      refuse(flag, index_path, 'has no weight_map object')
    files = {}
    for name, file in weight_map.items():
      if not isinstance(file, str) or os.sep in file or file.startswith('.'):
        refuse(flag, index_path, f'bad file name {file!r} for {name}')
      files.setdefault(file, []).append(name)
    for file in files:
      if not (model_dir / file).is_file():
        refuse(flag, model_dir / file, f'no such file (listed in '
               f'{INDEX_FILE})')
    return files, index_path
  found = sorted(p.name for p in model_dir.glob('*.safetensors'))
  if not found:
    refuse(flag, model_dir, 'holds no *.safetensors file (nor '
           f'{INDEX_FILE}); only safetensors weights are read')
  where = model_dir / found[0] if len(found) == 1 else model_dir
  return {file: None for file in found}, where


# safetensors dtype codes of float tensors, as numpy dtype names.
SAFETENSORS_FLOATS = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16',
                      'BF16': 'bfloat16'}


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


class LazyTensors(Mapping):
  """The tensors of a checkpoint by name, read from their files only when
  looked up (so loading holds one stored tensor at a time in host memory,
  beside the converted params). ``meta[name] = (file, shape, dtype code)``
  comes from the headers alone."""

  def __init__(self, model_dir: Path, flag: str):
    self.flag = flag
    self.meta = {}
    self._handles = {}
    files, self.missing_where = _shard_files(model_dir, flag)
    for file, listed in files.items():
      path = model_dir / file
      handle = self._open(path)
      names = list(handle.keys())
      if listed is not None:
        absent = sorted(set(listed) - set(names), key=tensor_order)
        if absent:
          more = f' and {len(absent) - 1} more' if len(absent) > 1 else ''
          refuse(flag, path, f'lacks {absent[0]}{more} (listed in '
                 f'{INDEX_FILE})')
      for name in names:
        if listed is not None and name not in listed:
          continue                   # the index places it in another file
        if name in self.meta:
          refuse(flag, path, f'{name} is also in {self.meta[name][0].name}')
        try:
          view = handle.get_slice(name)
          shape, code = tuple(view.get_shape()), view.get_dtype()
        except Exception as e:  # noqa: BLE001 (SafetensorError and others)
          refuse(flag, path, f'cannot read the header of {name} '
                 f'({_first_line(e)})')
        self.meta[name] = (path, shape, code)

  def _open(self, path: Path):
    from safetensors import safe_open

    if path not in self._handles:
      try:
        self._handles[path] = safe_open(path, framework='numpy')
      except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
        refuse(self.flag, path, f'cannot be read as safetensors '
               f'({_first_line(e)})')
    return self._handles[path]

  def __getitem__(self, name):
    path = self.meta[name][0]
    try:
      return self._open(path).get_tensor(name)
    except Exception as e:  # noqa: BLE001
      refuse(self.flag, path, f'cannot read {name} ({_first_line(e)})')

  def __iter__(self):
    return iter(self.meta)

  def __len__(self):
    return len(self.meta)


def stored_dtype(hf: dict, tensors: LazyTensors) -> str:
  """The numpy name of the stored weights' dtype: config.json ``hf``'s
  ``torch_dtype`` (or ``dtype``), else the embedding's, else float32."""
  name = hf.get('torch_dtype', hf.get('dtype'))
  if isinstance(name, str) and name.removeprefix('torch.') in TORCH_DTYPES:
    return TORCH_DTYPES[name.removeprefix('torch.')]
  meta = tensors.meta.get('model.embed_tokens.weight')
  return 'float32' if meta is None else SAFETENSORS_FLOATS.get(
      meta[2], 'float32')
