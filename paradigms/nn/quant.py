"""Int8 quantisation for inference: weight-only kernels and the KV cache (absmax, symmetric).

A tensor w is stored as int8 codes q and float32 scales s over groups of its elements,
    s = max_{group} |w| / 127,     q = round(w / s) in [-127, 127],     w_hat = q s,
so every element is within s/2 of w (`absmax_int8`; the QLoRA int8 base, paradigms/nn/lora.py,
is the same quantiser). Kernels take one scale per *output* channel (the group is the
contracted axes: LLM.int8's vector-wise weight scale, Dettmers et al. 2022, eq. 3 without the
outlier split); the KV cache one scale per token and head (the group is head_dim).

Per-output-channel scales factor out of the contraction, so a quantised dense layer is
    y_j = sum_i x_i q_ij s_j = (x q)_j s_j                                        (exact)
and `einsum` computes it that way: a dot over the int8 codes (converted to the compute dtype),
then one multiply of the output by s. `quantize_params(params)` turns every kernel of the shared
Transformer (attention wq/wk/wv/wo, SwiGLU w_gate/w_up/w_out, the embedding and untied head)
into an `Int8Kernel`; params stay a pytree and the modules (Attention, SwiGLU, Embed) read it
through the two hooks here (`einsum`, `take`), so any sampler's `model.apply` runs on it.

Speed on XLA:CPU (benchmarks/quant.py): the codes are loop-invariant in a decode loop, so XLA
hoists their conversion out of the `while` and the steps read float weights; int8 storage does
not by itself make a batch-1 step faster on a CPU backend (measured alternatives, including a
fused int8 multiply-reduce and s8 x s8 -> s32 dots, are in the benchmark's doc).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import struct

QMAX = 127.0
# Kernels quantised by default, with the axes each contracts (counted from the end, so the
# stacked 'layers' axis or an unstacked tuple index makes no difference):
CONTRACTED = (
    (r'(^|/)attn/w[qkv]$', (-3,)),  # [.., D, H|K, Dh]
    (r'(^|/)attn/wo$', (-3, -2)),  # [.., H, Dh, D]
    (r'(^|/)mlp/w_(gate|up|out)$', (-2,)),  # [.., D, F], [.., F, D]
    (r'(^|/)embed/embedding$', (-1,)),  # [V, D]: a row per token, the tied head's output channel
    (r'(^|/)embed/head$', (-2,)),  # [D, V]
)
KINDS = ('', 'int8')


@struct.dataclass
class Int8Kernel:
  """A kernel stored as int8 codes and float32 per-output-channel scales: w_hat = q * scale.

  `q` comes first so Flax's shape check of a param (first leaf against the declared shape)
  passes unchanged."""
  q: jax.Array  # int8, the kernel's shape
  scale: jax.Array  # float32, the kernel's shape with the contracted axes of size 1


def absmax_int8(w, axes: tuple[int, ...]):
  """(q int8, scale float32) with one scale per group over `axes` (kept as size-1 axes):
  scale = max|w| / 127 (1 where the group is all zeros), q = round(w / scale). |w - q scale|
  <= scale / 2 elementwise, up to float32 rounding."""
  w = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / QMAX
  scale = jnp.where(scale == 0, 1.0, scale)
  return jnp.clip(jnp.round(w / scale), -QMAX, QMAX).astype(jnp.int8), scale


def is_quantized(w) -> bool:
  return isinstance(w, Int8Kernel)


def dequantize(w, dtype=jnp.float32):
  """The float kernel an `Int8Kernel` stands for (anything else is returned cast)."""
  if is_quantized(w):
    return (w.q.astype(jnp.float32) * w.scale).astype(dtype)
  return w.astype(dtype)


def einsum(spec: str, x, w, dtype):
  """jnp.einsum(spec, x, w) in `dtype`, w a float kernel or an `Int8Kernel`.

  Float: exactly `jnp.einsum(spec, x, w.astype(dtype))`. Int8: (x q) * s over the output
  channels (module doc), which needs the kernel's output letters last in the output, in
  order (true of every projection here, e.g. 'bld,dhk->blhk')."""
  if not is_quantized(w):
    return jnp.einsum(spec, x, w.astype(dtype))
  ins, out = spec.split('->')
  w_axes = ins.split(',')[1]
  kept = ''.join(a for a in w_axes if a in out)
  if not out.endswith(kept):
    raise ValueError(f'quant.einsum({spec!r}): the kernel\'s output axes {kept!r} must end '
                     'the output, so the per-channel scale broadcasts')
  s = w.scale.reshape([d for a, d in zip(w_axes, w.scale.shape) if a in out])
  y = jnp.einsum(spec, x, w.q.astype(dtype))
  return (y * s).astype(dtype)


def take(table, ids, dtype):
  """Rows `ids` [...] of an embedding table [V, D] (float or per-row `Int8Kernel`) in dtype:
  [..., D]."""
  if not is_quantized(table):
    return jnp.take(table, ids, axis=0).astype(dtype)
  return (jnp.take(table.q, ids, axis=0).astype(jnp.float32)
          * jnp.take(table.scale, ids, axis=0)).astype(dtype)


def _path(kp) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in kp)


def contracted_axes(path: str):
  """The contracted axes of the kernel at '/'-joined `path`, or None if it is not a kernel
  `quantize_params` handles."""
  for pattern, axes in CONTRACTED:
    if re.search(pattern, path):
      return axes
  return None


def quantize_params(params, kind: str = 'int8', embeddings: bool = True):
  """`params` (the Transformer's tree, stacked or `unstack_layers`-ed) with every kernel of
  CONTRACTED stored as an `Int8Kernel` (per output channel); norms, biases and other leaves
  stay as they are. `embeddings=False` keeps the embedding table and head in float. kind ''
  returns params unchanged. Pure and jittable."""
  if kind not in KINDS:
    raise ValueError(f'quantize={kind!r}: choose one of {KINDS} ("" = float weights)')
  if not kind:
    return params

  def one(kp, w):
    p = _path(kp)
    axes = contracted_axes(p)
    if axes is None or is_quantized(w) or (not embeddings and '/embed/' in f'/{p}'):
      return w
    return Int8Kernel(*absmax_int8(w, axes))

  return jax.tree_util.tree_map_with_path(one, params, is_leaf=is_quantized)


def nbytes(tree) -> int:
  """Bytes of every array in a pytree (params or a cache)."""
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
