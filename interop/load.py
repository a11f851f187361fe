"""Streaming, sharded reads of a Hugging Face folder into our params, and the way back.

`load_params` never holds the model twice: each param leaf is created directly with its
sharding by `jax.make_array_from_callback`, whose callback reads from the safetensors files only
the slice one device holds, layer by layer, converts it to the param dtype and fills a buffer
of that device's shard (an unstacked tensor, the embedding or head, in chunks of rows). Peak
host memory beyond the placed params is the shard being filled plus one layer's (or chunk's)
slice in the stored dtype and its converted copy (benchmarks/hf_load_memory.py measures it).
"""
from __future__ import annotations

import jax
import ml_dtypes  # noqa: F401  (numpy learns 'bfloat16')
import numpy as np

from interop.hf import Family, check_folder, layout
from interop.safetensors_io import SafetensorsFolder


CHUNK = 1 << 22  # elements read at a time from an unstacked tensor (16 MiB of float32)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _put(tree: dict, path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def load_params(folder: str, cfg, family: Family, shardings=None, dtype=None) -> dict:
  """The params of `Transformer(cfg)` read from `folder` (checked first, whole: a mismatch
  raises CheckpointError before anything is placed).

  shardings: a tree of `jax.sharding.Sharding` shaped like the params (e.g. from the mesh's
  logical rules), or None for the default device. dtype: the param dtype (default
  cfg.param_dtype); bf16/fp16/fp32 tensors all convert.
  """
  specs = layout(cfg, family)
  dtype = np.dtype(dtype or cfg.param_dtype)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = {}
  with SafetensorsFolder(folder) as f:
    check_folder(f, specs, cfg.n_layers, cfg.tie_embeddings)
    for spec in specs:
      shape = ((cfg.n_layers,) if spec.layered else ()) + spec.ours
      sharding = default if shardings is None else _get(shardings, spec.path)

      def callback(index, spec=spec, shape=shape):
        idx = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
        out = np.empty([s.stop - s.start for s in idx], dtype)
        if spec.layered:  # one layer at a time
          for j, i in enumerate(range(idx[0].start, idx[0].stop)):
            out[j] = spec.read_slice(lambda h, i=i: f.read(spec.name(i), h), idx[1:])
          return out
        rows = max(1, CHUNK // max(1, int(np.prod(out.shape[1:]))))  # an embedding or head
        for r in range(0, out.shape[0], rows):  # in chunks of rows of ours
          part = slice(idx[0].start + r, min(idx[0].stop, idx[0].start + r + rows))
          out[r:r + rows] = spec.read_slice(lambda h: f.read(spec.name(), h), (part,) + idx[1:])
        return out

      _put(params, spec.path, jax.make_array_from_callback(shape, sharding, callback))
  return params


def hf_tensors(params, cfg, family: Family, dtype: str = 'float32'):
  """(name, numpy array) for every tensor of the Hugging Face checkpoint of `params`, one at a
  time (a layer of a stacked leaf is fetched only when its turn comes)."""
  dtype = np.dtype(dtype)
  for spec in layout(cfg, family):
    leaf = _get(params, spec.path)
    if spec.layered:
      for i in range(cfg.n_layers):
        yield spec.name(i), spec.to_hf(np.asarray(jax.device_get(leaf[i]))).astype(dtype)
    else:
      yield spec.name(), spec.to_hf(np.asarray(jax.device_get(leaf))).astype(dtype)
