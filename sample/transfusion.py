"""Transfusion samplers (Zhou et al. 2024, sec. 3.3): text -> image by rectified-flow Euler steps
on the image block behind a KV-cached prompt, and image -> text (OCR) by KV-cached decoding.

Text -> image (Euler's method on dx/dt = v from t = 1, noise, to t = 0, data):
    rows = [prompt ; empty prompt]                     # 2B rows when cfg w != 1
    cache = net([PAD.. BOS c_1..c_n BOI])              # prefill: S + 2 positions
    x ~ N(0, I)  [B, N, P]
    for k = 0..K-1:  t_k = 1 - k / K                   # lax.fori_loop
        v = net(patches x at t_k, cache)               # N positions: the prefix + themselves
        v = v_u + w (v_c - v_u)                        # classifier-free guidance
        x = x + (t_{k+1} - t_k) v
Each step reads the prefix cache and writes the image's keys into a copy it drops, so every
step attends to the cached prompt and to the current image only. NFE = K (one pass of the N
patch positions per step; with guidance each pass runs 2B rows; the one prefill pass over the
S + 2 prompt positions is not counted, as diffusion papers count the denoiser's passes).

Image -> text: the clean image (t = 0) in [BOI] p_1..p_N [EOI] is prefilled (N + 2 positions),
then characters are drawn one per pass (greedy at temperature 0, else inverse-CDF draws of
sample/categorical.py) from the characters and EOS only, EOS forced after S characters, in a
lax.while_loop that stops when every row has emitted EOS; finished rows are frozen. NFE = 1 +
the decode passes.

Interleaved (item 8, `interleaved`): LM mode draws text; a drawn BOI switches to the Euler loop
for the N patches at the next positions, whose clean image (t = 0) and EOI are then written into
the cache in one pass of N + 1 positions, and LM mode resumes; NFE = tokens drawn + images
(K + 1) + 1 prefill.

    config, model, params = load_run('runs/transfusion_glyphs')
    out = transfusion.text_to_image(model, params, labels, jax.random.key(0), steps=32, cfg=3.0)
    out.images  # [B, H, W, C]
    out = transfusion.image_to_text(model, params, images, jax.random.key(0))
    out.label   # [B, S] int32 character ids, 0 after the end (decode_label gives the string)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from paradigms.nn.dit import patchify, unpatchify
from paradigms.transfusion import PAD, layout
from sample.categorical import sample_categorical


@struct.dataclass
class ImageOutput:
  images: jax.Array  # [B, H, W, C] float32, about [-1, 1]
  nfe: jax.Array  # [] int32 network passes
  rows: jax.Array  # [] int32 rows per pass (B, or 2B with guidance)


@struct.dataclass
class TextOutput:
  label: jax.Array  # [B, S] int32 character ids (label form), 0 after the string
  tokens: jax.Array  # [B, S + 1] int32 drawn tokens, EOS included, PAD after it
  nfe: jax.Array  # [] int32 network passes


def prefix(model, label):
  """The generation prefix [B, S + 2]: [PAD.. BOS c_1..c_n BOI] (`layout`'s first S + 2)."""
  S = model.cfg.label_len
  seq = layout(model.cfg, label, jnp.zeros((label.shape[0],), bool))
  return seq.tokens[:, :S + 2]


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'cfg'))
def text_to_image(model, params, label, rng, *, steps: int = 32, cfg: float = 1.0) -> ImageOutput:
  """The module doc's Euler loop. model: `paradigms.transfusion.Transfusion`; label int32
  [B, S] (all-zero rows: unconditional); steps K; cfg the guidance weight w (1 = off)."""
  c = model.cfg
  if steps < 1:
    raise ValueError(f'steps={steps} must be >= 1')
  B, S, N, P = label.shape[0], c.label_len, c.num_patches, c.patch_dim
  rows = jnp.concatenate([label, jnp.zeros_like(label)]) if cfg != 1.0 else label
  R = rows.shape[0]
  start = jnp.full((R,), S + 2, jnp.int32)
  apply = lambda *a, **k: model.apply({'params': params}, *a, **k)
  _, _, cache = apply(prefix(model, rows), jnp.zeros((R, N, P)), jnp.zeros((R,)), start,
                      cache=model.init_cache(R))
  pad = jnp.full((R, N), PAD, jnp.int32)
  pos = jnp.broadcast_to(S + 2 + jnp.arange(N, dtype=jnp.int32), (R, N))

  def body(k, x):  # x [B, N, P] at t_k
    t = 1.0 - k / steps
    xr = jnp.concatenate([x, x]) if cfg != 1.0 else x
    _, v, _ = apply(pad, xr, jnp.full((R,), t), start, positions=pos, cache=cache)
    if cfg != 1.0:
      v = v[B:] + cfg * (v[:B] - v[B:])
    return x - v / steps  # t_{k+1} - t_k = -1 / K

  x = jax.lax.fori_loop(0, steps, body, jax.random.normal(rng, (B, N, P)))
  images = unpatchify(x, c.patch_size, c.channels, c.grid)
  return ImageOutput(images=images, nfe=jnp.asarray(steps, jnp.int32),
                     rows=jnp.asarray(R, jnp.int32))


@functools.partial(jax.jit, static_argnames=('model', 'temperature', 'top_k', 'top_p'))
def image_to_text(model, params, images, rng, *, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0) -> TextOutput:
  """The module doc's OCR decoding. images float32 [B, H, W, C] in [-1, 1]; temperature 0 =
  greedy. Step i draws with fold_in(rng, i)."""
  c = model.cfg
  if temperature < 0:
    raise ValueError(f'temperature={temperature} must be >= 0 (0 = greedy)')
  B, S, N = images.shape[0], c.label_len, c.num_patches
  x0 = patchify(images.astype(jnp.float32), c.patch_size)  # [B, N, P]
  apply = lambda *a, **k: model.apply({'params': params}, *a, **k)
  one = jnp.ones((B,), jnp.int32)
  head = jnp.concatenate([jnp.full((B, 1), c.boi), jnp.full((B, N), PAD),
                          jnp.full((B, 1), c.eoi)], axis=1).astype(jnp.int32)  # [B, N + 2]
  logits, _, cache = apply(head, x0, jnp.zeros((B,)), one, cache=model.init_cache(B))
  ids = jnp.arange(c.vocab_size)
  chars = (ids > PAD) & (ids < c.bos)

  def cond(s):
    i, _, _, done, _ = s
    return (i <= S) & ~jnp.all(done)

  def body(s):
    i, logits, out, done, cache = s
    allowed = jnp.where(i < S, chars | (ids == c.eos), ids == c.eos)  # EOS after S characters
    l = jnp.where(allowed, logits, -jnp.inf)
    y = sample_categorical(jax.random.fold_in(rng, i), l, temperature or 1.0, top_k, top_p,
                           greedy=temperature == 0)
    y = jnp.where(done, PAD, y)
    out = out.at[:, i].set(y)
    pos = jnp.full((B, 1), N + 2, jnp.int32) + i
    logits, _, cache = apply(y[:, None], x0, jnp.zeros((B,)), one, positions=pos, cache=cache)
    return i + 1, logits[:, 0], out, done | (y == c.eos), cache

  init = (jnp.zeros((), jnp.int32), logits[:, -1], jnp.full((B, S + 1), PAD, jnp.int32),
          jnp.zeros((B,), bool), cache)
  i, _, out, _, _ = jax.lax.while_loop(cond, body, init)
  label = jnp.where((out[:, :S] > PAD) & (out[:, :S] < c.bos), out[:, :S], PAD)
  return TextOutput(label=label, tokens=out, nfe=1 + i)


@struct.dataclass
class InterleavedOutput:
  tokens: jax.Array  # [B, L] int32 the sequence (prompt, text, BOI, PAD at patches, EOI, .., EOS)
  images: jax.Array  # [B, M, H, W, C] float32, zeros after the last image drawn
  n_images: jax.Array  # [B] int32 images drawn
  nfe: jax.Array  # [B] int32 network passes of each row


def _interleaved_row(model, params, prompt, rng, steps, temperature, top_k, top_p):
  """One row of `interleaved` (batch axis 1 inside): prompt int32 [T0]."""
  c = model.cfg
  L, N, P, M = c.seq_len, c.num_patches, c.patch_dim, c.max_images
  apply = lambda *a, **k: model.apply({'params': params}, *a, **k)
  none = jnp.full((1,), -N, jnp.int32)  # image_start of a chunk without patches
  zx, zt = jnp.zeros((1, N, P)), jnp.zeros((1,))
  T0 = prompt.shape[0]
  logits, _, cache = apply(prompt[None], zx, zt, none, cache=model.init_cache(1))
  ids = jnp.arange(c.vocab_size)
  chars = (ids > PAD) & (ids < c.bos)

  def draw(i, pos, n_img, logits):
    room = (n_img < M) & (pos + N + 2 <= L - 1)  # BOI, N patches, EOI, then at least EOS
    allowed = chars | ((ids == c.boi) & room) | (ids == c.eos)
    allowed = jnp.where(pos < L - 1, allowed, ids == c.eos)
    l = jnp.where(allowed, logits, -jnp.inf)
    return sample_categorical(jax.random.fold_in(rng, i), l, temperature or 1.0, top_k, top_p,
                              greedy=temperature == 0)

  def image(args):  # the diffusion loop at start = pos + 1, then the clean image and EOI
    pos, n_img, i, _, cache, images, nfe = args
    start = jnp.reshape(pos + 1, (1,))
    at = start[:, None] + jnp.arange(N, dtype=jnp.int32)  # [1, N]
    pad = jnp.full((1, N), PAD, jnp.int32)

    def euler(k, x):
      _, v, _ = apply(pad, x, jnp.full((1,), 1.0 - k / steps), start, positions=at, cache=cache)
      return x - v / steps

    x = jax.lax.fori_loop(0, steps, euler, jax.random.normal(jax.random.fold_in(
        jax.random.fold_in(rng, i), 1), (1, N, P)))
    tail = jnp.concatenate([pad, jnp.full((1, 1), c.eoi, jnp.int32)], axis=1)
    at = jnp.concatenate([at, at[:, -1:] + 1], axis=1)
    logits, _, cache = apply(tail, x, zt, start, positions=at, cache=cache)  # commits them
    return logits[0, -1], cache, images.at[n_img].set(x[0]), nfe + steps + 1

  def cond(s):
    pos, _, _, done = s[:4]
    return ~done & (pos < L)

  def body(s):
    pos, n_img, i, done, logits, tokens, cache, images, nfe = s
    y = draw(i, pos, n_img, logits)
    tokens = tokens.at[pos].set(y)
    logits, _, cache = apply(y.reshape(1, 1), zx, zt, none, positions=pos.reshape(1, 1),
                             cache=cache)
    boi = y == c.boi
    logits, cache, images, nfe = jax.lax.cond(
        boi, image, lambda a: (a[3], a[4], a[5], a[6]),
        (pos, n_img, i, logits[0, -1], cache, images, nfe + 1))
    tokens = jnp.where(boi, tokens.at[jnp.minimum(pos + N + 1, L - 1)].set(c.eoi), tokens)
    return (jnp.where(boi, pos + N + 2, pos + 1), n_img + boi, i + 1, y == c.eos, logits,
            tokens, cache, images, nfe)

  tokens = jnp.full((L,), PAD, jnp.int32).at[:T0].set(prompt)
  s = (jnp.asarray(T0, jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
       jnp.zeros((), bool), logits[0, -1], tokens, cache, jnp.zeros((M, N, P)),
       jnp.ones((), jnp.int32))
  _, n_img, _, _, _, tokens, _, images, nfe = jax.lax.while_loop(cond, body, s)
  return tokens, images, n_img, nfe


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'temperature', 'top_k', 'top_p'))
def interleaved(model, params, prompt, rng, *, steps: int = 32, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0) -> InterleavedOutput:
  """Item 8: text and images where the model decides when an image starts (Transfusion
  sec. 3.3). In LM mode a token is drawn from the characters, BOI (while fewer than
  model.max_images images were drawn and one still fits) and EOS; after BOI the sampler runs
  `steps` Euler steps on N noise patches behind the cache (as `text_to_image`), writes the
  clean image (t = 0) and EOI into the cache in one pass, and returns to LM mode; EOS or the
  cache's end (seq_len) stops a row. prompt int32 [B, T0], starting with BOS. Step i draws
  with fold_in(rng_b, i), rng_b the row's key of split(rng, B). Each row has its own cache
  (vmap); under vmap both branches of the mode switch are computed at every step, so for
  speed call it with B = 1. No guidance."""
  c = model.cfg
  if prompt.shape[1] >= c.seq_len:
    raise ValueError(f'the prompt has {prompt.shape[1]} tokens, the cache {c.seq_len}')
  row = functools.partial(_interleaved_row, model, params, steps=steps, temperature=temperature,
                          top_k=top_k, top_p=top_p)
  keys = jax.random.split(rng, prompt.shape[0])
  tokens, x, n, nfe = jax.vmap(row)(jnp.asarray(prompt, jnp.int32), keys)
  B, M = x.shape[:2]
  images = unpatchify(x.reshape((B * M,) + x.shape[2:]), c.patch_size, c.channels, c.grid)
  return InterleavedOutput(tokens=tokens, images=images.reshape((B, M) + images.shape[1:]),
                           n_images=n, nfe=nfe)
