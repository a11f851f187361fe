"""Hugging Face-format folders on disk: `config.json` plus `*.safetensors` (one file or shards
with `model.safetensors.index.json`), read lazily and written shard by shard.

Reading goes through `safetensors.safe_open(framework='numpy')`: a tensor is never read whole
unless asked, `read(name, index)` reads only the slice a device shard needs (bf16 arrives as
`ml_dtypes.bfloat16`, which importing JAX registers with numpy). Pickle checkpoints (`.bin`,
`.pt`, `.pth`, `.ckpt`) are refused, never opened.
"""
from __future__ import annotations

import contextlib
import json
import os

import ml_dtypes  # noqa: F401  (registers numpy's 'bfloat16' before safetensors asks for it)
import numpy as np

INDEX = 'model.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')
FLOAT_DTYPES = ('F16', 'BF16', 'F32', 'F64')  # safetensors dtype names that convert to params


class CheckpointError(ValueError):
  """A folder that cannot be read as a Hugging Face checkpoint; the message says what to do."""


def read_config(folder: str) -> dict:
  """The folder's config.json as a dict."""
  path = os.path.join(folder, 'config.json')
  if not os.path.isdir(folder):
    raise CheckpointError(f'{folder} is not a directory (expected a Hugging Face-format folder '
                          'with config.json and *.safetensors)')
  if not os.path.exists(path):
    raise CheckpointError(f'{folder} has no config.json; a Hugging Face-format folder holds '
                          'config.json beside its *.safetensors files')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as err:
    raise CheckpointError(f'{path} is not valid JSON ({err})') from None


class SafetensorsFolder:
  """Lazy access to every tensor of a folder. Use as a context manager (closes the files).

    with SafetensorsFolder(folder) as f:
      f.shape('model.norm.weight'); f.read('lm_head.weight', (slice(0, 128), slice(None)))
  """

  def __init__(self, folder: str):
    self.folder = folder
    self._files = self._locate()  # tensor name -> shard file
    self._stack = contextlib.ExitStack()
    self._open = {}

  def _locate(self) -> dict[str, str]:
    from safetensors import safe_open
    names = sorted(os.listdir(self.folder)) if os.path.isdir(self.folder) else []
    shards = [n for n in names if n.endswith('.safetensors')]
    index = os.path.join(self.folder, INDEX)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get('weight_map', {})
      missing = sorted({s for s in weight_map.values() if s not in shards})
      if missing:
        raise CheckpointError(
            f'{self.folder}: {INDEX} names shard(s) {missing[:4]} that are not in the folder '
            f'({len(shards)} .safetensors file(s) are); download the missing shard(s) again')
      return dict(weight_map)
    if not shards:
      pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
      if pickles:
        raise CheckpointError(
            f'{self.folder} holds pickle checkpoint(s) {pickles[:3]}, which this library never '
            'unpickles (loading one can run arbitrary code). Convert them to safetensors first, '
            'e.g. in Python with torch and transformers: AutoModel.from_pretrained(folder)'
            '.save_pretrained(out, safe_serialization=True)')
      raise CheckpointError(f'{self.folder} has no *.safetensors files')
    out = {}
    for shard in shards:
      with safe_open(os.path.join(self.folder, shard), framework='numpy') as f:
        out.update({k: shard for k in f.keys()})
    return out

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    self._stack.close()
    self._open = {}

  def names(self) -> list[str]:
    return sorted(self._files)

  def __contains__(self, name: str) -> bool:
    return name in self._files

  def _slice(self, name: str):
    from safetensors import safe_open
    if name not in self._files:
      raise CheckpointError(f'{self.folder} has no tensor {name!r}; the checkpoint does not match '
                            'its config.json architecture (or a shard is incomplete)')
    shard = self._files[name]
    if shard not in self._open:
      self._open[shard] = self._stack.enter_context(
          safe_open(os.path.join(self.folder, shard), framework='numpy'))
    return self._open[shard].get_slice(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def dtype(self, name: str) -> str:
    """The safetensors dtype name ('BF16', 'F32', 'I64', ...)."""
    return self._slice(name).get_dtype()

  def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """The tensor (or its `index` slice) as a numpy array in its stored dtype. Only float
    tensors are read: an integer or bool tensor cannot stand for a weight."""
    s = self._slice(name)
    if s.get_dtype() not in FLOAT_DTYPES:
      raise CheckpointError(f'{self.folder}: tensor {name!r} has dtype {s.get_dtype()}, which '
                            f'cannot stand for a float weight (expected one of {FLOAT_DTYPES}); '
                            'the file is not a float checkpoint (quantised exports are not read)')
    if index is None:
      index = tuple(slice(None) for _ in s.get_shape())
    return np.asarray(s[index])


def write_folder(out: str, tensors, config: dict, *, max_shard_bytes: int = 2 ** 31,
                 extra_files: dict[str, str] | None = None) -> list[str]:
  """Write `tensors` (an iterable of (name, numpy array), consumed one at a time) as safetensors
  shards of at most `max_shard_bytes` plus an index when there are several, and config.json
  (and `extra_files`: name -> text). Returns the shard file names."""
  from safetensors.numpy import save_file
  os.makedirs(out, exist_ok=True)
  shards, weight_map, pending, size, total = [], {}, {}, 0, 0

  def flush():
    nonlocal pending, size
    if pending:
      name = f'part-{len(shards):05d}.safetensors'
      save_file(pending, os.path.join(out, name), metadata={'format': 'pt'})
      shards.append(name)
      weight_map.update({k: name for k in pending})
      pending, size = {}, 0

  for name, array in tensors:
    array = np.ascontiguousarray(array)
    if pending and size + array.nbytes > max_shard_bytes:
      flush()
    pending[name] = array
    size += array.nbytes
    total += array.nbytes
  flush()
  if len(shards) == 1:
    os.replace(os.path.join(out, shards[0]), os.path.join(out, 'model.safetensors'))
    shards = ['model.safetensors']
  else:
    renamed = {s: f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i, s in enumerate(shards)}
    for old, new in renamed.items():
      os.replace(os.path.join(out, old), os.path.join(out, new))
    shards = list(renamed.values())
    with open(os.path.join(out, INDEX), 'w') as f:
      json.dump({'metadata': {'total_size': total},
                 'weight_map': {k: renamed[v] for k, v in sorted(weight_map.items())}}, f, indent=2)
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  for name, text in (extra_files or {}).items():
    with open(os.path.join(out, name), 'w') as f:
      f.write(text)
  return shards
