"""LoRA (Hu et al. 2022) and QLoRA (Dettmers et al. 2023) as pure functions of param trees.

For every kernel W whose '/'-joined path matches `targets` (default: the attention and MLP
projections of the shared blocks, in every paradigm), a trained pair (A, B) of rank r adds
    W' = W + (alpha / r) A B,       A: [.., n_in, r] ~ N(0, 1/n_in),  B: [.., r, n_out] = 0
(eq. 3 of the LoRA paper), so training starts exactly at the base model. n_in is W's first axis
after the stacked 'layers' axis (all but the last for an output projection `wo` [H, Dh, D]),
n_out the rest. The base W is frozen: only (A, B) have gradients and optimiser state.

`merge(base, adapters, ...)` is the one code path: the trainer merges before every loss, and
export folds the adapters in for good. Dropout: LoRA's dropout acts on the adapter's input x,
which a merged weight cannot see; here `dropout` drops whole rank components of A
(rank dropout, as in LyCORIS), rescaled by 1 / (1 - p), so E[W'] is unchanged.

QLoRA: the frozen base of the targeted kernels is stored as int8 with one absmax scale per
output channel (`quant.absmax_int8`, the quantiser of inference's int8 weights), or as NF4
(4-bit NormalFloat codes, two per byte, one absmax per block of 64, QLoRA Sec. 3; the absmax
is kept in float32, not double-quantised), and dequantised inside
`merge`: W = q * scale.
"""
from __future__ import annotations

import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.nn.quant import absmax_int8

DEFAULT_TARGETS = r'(^|/)layers/(attn/w[qkvo]|mlp/w_(gate|up|out))$'
QUANT = ('', 'int8', 'nf4')
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)  # QLoRA's NF4 levels (App. E)
NF4_BLOCK = 64


def _path(kp) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in kp)


def adapter_key(path: str) -> str:
  """The adapters' dict key of a kernel path ('layers/attn/wq' -> 'layers.attn.wq'): no '/',
  which checkpoint formats read as nesting."""
  return path.replace('/', '.')


def targeted(params, targets: str = DEFAULT_TARGETS) -> list[str]:
  """The '/'-joined paths of the kernels `targets` (a regex, re.search) matches."""
  pattern = re.compile(targets)
  return [p for p in (_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0])
          if pattern.search(p)]


def _split(path: str, shape) -> tuple[int, int, int]:
  """(leading stacked axes, n_in, n_out) of a kernel: 'layers' paths carry one stacked axis."""
  lead = 1 if path.startswith('layers/') or '/layers/' in path else 0
  body = shape[lead:]
  k = len(body) - 1 if path.endswith('/wo') else 1
  return lead, int(np.prod(body[:k])), int(np.prod(body[k:]))


def init_adapters(params, rank: int, rng, targets: str = DEFAULT_TARGETS) -> dict:
  """{adapter_key(path): {'a': [.., n_in, r], 'b': [.., r, n_out]}} for every targeted kernel
  (float32)."""
  if rank < 1:
    raise ValueError(f'lora.rank={rank} must be >= 1')
  flat = {_path(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  paths = targeted(params, targets)
  if not paths:
    raise ValueError(f'lora.targets={targets!r} matches no param; paths look like '
                     f'{sorted(flat)[:4]}')
  out = {}
  for i, p in enumerate(paths):
    lead, n_in, n_out = _split(p, flat[p].shape)
    stack = tuple(flat[p].shape[:lead])
    a = jax.random.normal(jax.random.fold_in(rng, i), stack + (n_in, rank)) * n_in ** -0.5
    out[adapter_key(p)] = {'a': a, 'b': jnp.zeros(stack + (rank, n_out))}
  return out


def quantize(w, kind: str, path: str = ''):
  """A frozen kernel [.., n_in, n_out-ish] stored as `kind` ('int8' | 'nf4'): a dict of arrays."""
  w = jnp.asarray(w, jnp.float32)
  if kind == 'int8':  # absmax per output channel: over the input axes
    lead, n_in, n_out = _split(path, w.shape)
    q, scale = absmax_int8(w.reshape(w.shape[:lead] + (n_in, n_out)), (-2,))
    return {'q': q, 'scale': scale}
  if kind == 'nf4':
    flat = w.reshape(-1)
    pad = (-flat.size) % NF4_BLOCK
    blocks = jnp.pad(flat, (0, pad)).reshape(-1, NF4_BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=1, keepdims=True)
    x = blocks / jnp.where(absmax == 0, 1.0, absmax)
    codes = jnp.argmin(jnp.abs(x[..., None] - jnp.asarray(NF4)), axis=-1).astype(jnp.uint8)
    codes = codes.reshape(-1, 2)
    return {'nf4': codes[:, 0] | (codes[:, 1] << 4), 'absmax': absmax}
  raise ValueError(f'lora.base_dtype={kind!r}: choose one of {QUANT}')


def dequantize(stored, shape, dtype=jnp.float32):
  """The kernel of `shape` a `quantize` dict stands for."""
  if 'q' in stored:
    return (stored['q'].astype(jnp.float32) * stored['scale']).reshape(shape).astype(dtype)
  packed = stored['nf4']
  codes = jnp.stack([packed & 15, packed >> 4], axis=-1).reshape(-1, NF4_BLOCK)
  w = jnp.asarray(NF4)[codes] * stored['absmax']
  return w.reshape(-1)[:int(np.prod(shape))].reshape(shape).astype(dtype)


def quantize_base(params, kind: str, targets: str = DEFAULT_TARGETS):
  """The frozen base with its targeted kernels quantised (other leaves as they are)."""
  if not kind:
    return params
  paths = set(targeted(params, targets))
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: quantize(x, kind, _path(kp)) if _path(kp) in paths else x, params)


def merge(base, adapters, *, alpha: float, rank: int, shapes=None, rng=None,
          dropout: float = 0.0):
  """W' = W + (alpha / r) A B for every adapted kernel; W dequantised first when the base is
  quantised (`shapes`: the tree of the model's param shapes, needed then). With `rng` and
  `dropout` > 0, rank components are dropped (module doc). Returns the model's param tree."""
  s = alpha / rank
  is_stored = lambda x: isinstance(x, dict) and ('q' in x or 'nf4' in x)
  flat_shapes = None if shapes is None else {
      _path(kp): x.shape for kp, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}

  def one(kp, w):
    p = _path(kp)
    if is_stored(w):
      if flat_shapes is None:
        raise ValueError('merge: a quantised base needs `shapes`')
      w = dequantize(w, flat_shapes[p])
    key = adapter_key(p)
    if key not in adapters:
      return w
    a, b = adapters[key]['a'], adapters[key]['b']
    if rng is not None and dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, zlib.crc32(key.encode()) % 2 ** 31),
                                  1 - dropout, a.shape[:-2] + (1, rank))
      a = a * keep / (1 - dropout)
    delta = jnp.einsum('...ir,...ro->...io', a, b) * s
    return (w + delta.reshape(w.shape).astype(w.dtype)).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(one, base, is_leaf=is_stored)
