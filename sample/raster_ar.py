"""Raster-order AR sampling of VQ codes with classifier-free guidance in one KV-cached loop
(LlamaGen, Sun et al. 2024, Sec. 2.3; ancestral sampling of p(x | c) = prod_i p(x_i | c, x_{<i})).

    rows = [c ; null]                                  # 2B rows: prompt, then null prompt
    logits, cache = net([V + rows])                    # prefill the S prompt positions
    for i = 1..N:                                      # lax.fori_loop, one position per pass
        l = l_null + w (l_cond - l_null)               # CFG on the last position's logits
        x_i ~ Cat(softmax(l / T)) with top-k / top-p   # sample/categorical.py (inverse CDF)
        logits, cache = net([x_i ; x_i], cache)        # both streams read the same code
    image = VQ decoder(e[x] as an h x w map)

Both streams go through one network pass per position as a batch of 2B rows sharing one KV
cache of S + N - 1 slots (the last code is never fed back), so NFE = N passes (1 prefill + N - 1
decode steps) whether or not w = 1 (w = 1 runs B rows). Position i draws with fold_in(rng, i)
(0-based), so w = 1 and w != 1 share their random numbers. temperature 0 is the argmax.

    config, model, params = load_run('runs/raster_ar_glyphs')
    vq_model, vq_params = load_tokenizer(config)
    out = raster_ar.sample(model, params, vq_model, vq_params, labels, jax.random.key(0), cfg=3.0)
    out.images  # [B, H, W, C]; out.tokens [B, N]; out.nfe = N
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from paradigms import vqvae
from paradigms.raster_ar import prompt_tokens
from sample.categorical import sample_categorical


@struct.dataclass
class TokenImageOutput:
  tokens: jax.Array  # [B, N] int32 codes in raster order
  images: jax.Array | None  # [B, H, W, C] decoded, about [-1, 1] (None from generate_tokens)
  nfe: jax.Array  # [] int32 network passes
  rows: jax.Array  # [] int32 rows per pass (B, or 2B with CFG)
  logits: jax.Array | None = None  # [B, N, V] float32 guided logits (return_logits)
  history: jax.Array | None = None  # [T, B] int32 masks left after each step (MaskGIT)


def guide(logits, B: int, w: float):
  """CFG over a doubled batch: logits [2B, ..., V] (conditional rows, then null rows) ->
  l_null + w (l_cond - l_null) [B, ..., V]; w = 1 passes [B, ..., V] through."""
  if w == 1.0:
    return logits
  l_c, l_u = logits[:B], logits[B:]
  return l_u + w * (l_c - l_u)


def stream_rows(label, w: float):
  """The rows' prompts: label [B, S] -> [B, S], or [2B, S] (then the null prompt) when w != 1."""
  return jnp.concatenate([label, jnp.zeros_like(label)]) if w != 1.0 else label


def check_options(temperature: float, top_k: int, top_p: float, V: int) -> None:
  if temperature < 0 or not 0 < top_p <= 1 or not 0 <= top_k <= V:
    raise ValueError(f'temperature={temperature} must be >= 0 (0 = argmax), top_p={top_p} in '
                     f'(0, 1] and top_k={top_k} in [0, {V}] (0 = off)')


@functools.partial(jax.jit, static_argnames=('model', 'cfg', 'top_k', 'top_p', 'temperature',
                                             'return_logits'))
def generate_tokens(model, params, label, rng, *, cfg: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, temperature: float = 1.0,
                    return_logits: bool = False) -> TokenImageOutput:
  """The module doc's loop. model: `paradigms.raster_ar.TokenImageTransformer`; label int32
  [B, S] (all-zero rows are unconditional); cfg: the guidance weight w (1 = off). Returns a
  TokenImageOutput without images (tokens [B, N], nfe = N, rows, and with `return_logits` the
  guided logits [B, N, V] each code was drawn from)."""
  c = model.cfg
  B, N, V = label.shape[0], c.num_tokens, c.codebook_size
  if c.interleaved:
    raise ValueError('this raster AR model was trained on interleaved sequences (model.'
                     'max_images > 1): sample it with sample.raster_ar.interleaved')
  check_options(temperature, top_k, top_p, V)
  rows = stream_rows(label, cfg)  # [R, S]
  cache = model.init_cache(rows.shape[0])  # S + N - 1 slots

  def draw(i, logits):  # logits [R, V] of position i -> (x_i [B], guided [B, V])
    g = guide(logits, B, cfg)
    x = sample_categorical(jax.random.fold_in(rng, i), g, temperature or 1.0, top_k, top_p,
                           greedy=temperature == 0)
    return x, g

  logits, cache = model.apply({'params': params}, prompt_tokens(c, rows), cache=cache)
  x, g = draw(0, logits[:, -1])  # [R, V] of the last prompt position predicts x_1
  tokens = jnp.zeros((B, N), jnp.int32).at[:, 0].set(x)
  kept = jnp.zeros((B, N, V) if return_logits else (0,), jnp.float32)
  if return_logits:
    kept = kept.at[:, 0].set(g)

  def body(i, carry):  # feeds x_{i-1} (0-based), draws x_i
    tokens, cache, kept = carry
    prev = tokens[:, i - 1]  # [B]
    inp = (jnp.concatenate([prev, prev]) if cfg != 1.0 else prev)[:, None]  # [R, 1]
    logits, cache = model.apply({'params': params}, inp, cache=cache)  # [R, 1, V]
    x, g = draw(i, logits[:, 0])
    tokens = tokens.at[:, i].set(x)
    if return_logits:
      kept = kept.at[:, i].set(g)
    return tokens, cache, kept

  tokens, _, kept = jax.lax.fori_loop(1, N, body, (tokens, cache, kept))
  return TokenImageOutput(tokens=tokens, images=None, nfe=jnp.asarray(N, jnp.int32),
                          rows=jnp.asarray(rows.shape[0], jnp.int32),
                          logits=kept if return_logits else None)


@functools.partial(jax.jit, static_argnames=('vq_model',))
def decode(vq_model, vq_params, tokens):
  """Codes [B, N] of a single-scale tokenizer -> images [B, H, W, C] float32
  (`paradigms.vqvae.decode_tokens`)."""
  return vqvae.decode_tokens(vq_model, vq_params, tokens).astype(jnp.float32)


def check_tokenizer(model, vq_model) -> None:
  """The sampled codes must be the tokenizer's: same single scale and codebook."""
  c, q = model.cfg, vq_model.cfg
  grid = (q.latent_side, getattr(q, 'latent_width', q.latent_side))
  if tuple(q.scales) != c.scales or q.codebook_size != c.codebook_size or grid != c.grid:
    raise ValueError(f'the tokenizer (scales={tuple(q.scales)}, codebook_size={q.codebook_size}, '
                     f'grid {grid}) is not the one the model was trained on (scales={c.scales}, '
                     f'codebook_size={c.codebook_size}, grid {c.grid}); pass '
                     'load_tokenizer(config)')


def sample(model, params, vq_model, vq_params, label, rng, *, cfg: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, temperature: float = 1.0) -> TokenImageOutput:
  """Draw one image per prompt row (label int32 [B, S], all-zero = unconditional) and decode
  it through the single-scale tokenizer (vq_model, vq_params). Returns a TokenImageOutput:
  tokens [B, N], images [B, H, W, C], nfe = N, rows (2B with CFG)."""
  check_tokenizer(model, vq_model)
  out = generate_tokens(model, params, jnp.asarray(label, jnp.int32), rng, cfg=float(cfg),
                        top_k=int(top_k), top_p=float(top_p), temperature=float(temperature))
  return out.replace(images=decode(vq_model, vq_params, out.tokens))


# --- Interleaved text and images (issue 25 item 8; model.max_images = M >= 2) -----------------

@struct.dataclass
class InterleavedTokens:
  tokens: jax.Array  # [B, L] int32 the whole sequence (prompt, text, BOI, codes, EOI, .., EOS, PAD)
  codes: jax.Array  # [B, M, N] int32 each image's codes in raster order (0 for images not drawn)
  n_images: jax.Array  # [B] int32 images completed
  images: jax.Array | None = None  # [B, M, H, W, C] decoded (`interleaved`)
  nfe: jax.Array | None = None  # [] int32 network passes (1 prefill + one per token)


def allowed_tokens(c, pos, left, n_img, n_chars):
  """The ids a row may draw next, bool [B, vocab]: inside an image (left > 0 codes to go) only
  codes; right after its N-th code only EOI; in text the characters (fewer than S so far in
  this string), BOI (while fewer than M images were begun and BOI, N codes, EOI and EOS still
  fit in L) and EOS; at the last position only EOS. pos [] (the position being drawn);
  left, n_img, n_chars [B]."""
  ids = jnp.arange(c.vocab_size)[None]  # [1, vocab]
  L, N, V = c.seq_len, c.num_tokens, c.codebook_size
  chars = (ids > V) & (ids < V + c.label_vocab) & (n_chars < c.label_len)[:, None]
  room = (n_img < c.max_images) & (pos + N + 2 <= L - 1)
  text = chars | ((ids == c.boi) & room[:, None]) | (ids == c.eos)
  text = jnp.where(pos < L - 1, text, ids == c.eos)
  return jnp.where((left > 0)[:, None], ids < V, jnp.where((left == 0)[:, None], ids == c.eoi,
                                                           text))


def interleaved_step(c, tok, pos, state, codes):
  """Bookkeeping after row b drew tok[b] at position pos (shared by the cached loop and the
  tests' full recomputation): state = (left [B] codes still to draw, -1 in text; n_img [B];
  n_chars [B]; done [B]) -> (state, codes [B, M, N] with the drawn code written)."""
  left, n_img, n_chars, done = state
  N, V = c.num_tokens, c.codebook_size
  is_code = (left > 0) & ~done
  b = jnp.arange(tok.shape[0])
  slot = jnp.clip(n_img - 1, 0, c.max_images - 1)
  codes = codes.at[b, slot, jnp.clip(N - left, 0, N - 1)].set(
      jnp.where(is_code, tok, codes[b, slot, jnp.clip(N - left, 0, N - 1)]))
  boi, eoi = (tok == c.boi) & ~done, (tok == c.eoi) & ~done
  left = jnp.where(boi, N, jnp.where(is_code, left - 1, jnp.where(eoi, -1, left)))
  is_char = (tok > V) & (tok < V + c.label_vocab) & ~done
  n_chars = jnp.where(eoi, 0, n_chars + is_char)
  return (left, n_img + boi, n_chars, done | ((tok == c.eos) & ~done)), codes


def interleaved_start(c, prompt):
  """The state after the prompt int32 [B, T0] (BOS, then characters as ids V + label)."""
  B = prompt.shape[0]
  V = c.codebook_size
  n_chars = ((prompt > V) & (prompt < V + c.label_vocab)).sum(axis=1).astype(jnp.int32)
  z = jnp.zeros((B,), jnp.int32)
  return (z - 1, z, n_chars, jnp.zeros((B,), bool)), jnp.zeros((B, c.max_images, c.num_tokens),
                                                               jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'top_k', 'top_p', 'temperature'))
def interleaved_tokens(model, params, prompt, rng, *, top_k: int = 0, top_p: float = 1.0,
                       temperature: float = 1.0) -> InterleavedTokens:
  """Text and images in one raster-AR sequence, the model deciding when an image starts: one
  token per pass from the ids `allowed_tokens` permits (so after BOI exactly N codes, then EOI),
  in a lax.while_loop over positions that stops when every row has drawn EOS or the sequence
  (model.cfg.seq_len) is full; finished rows write PAD. All rows advance one position per pass,
  so they share one KV cache index. prompt int32 [B, T0]: BOS then characters (V + label id,
  `prompt_ids`); position i draws with fold_in(rng, i)."""
  c = model.cfg
  B, T0 = prompt.shape
  L = c.seq_len
  if not c.interleaved or T0 >= L - 1:
    raise ValueError(f'interleaved sampling needs a model with model.max_images >= 2 (got '
                     f'{c.max_images}) and a prompt shorter than {L - 1} tokens (got {T0})')
  logits, cache = model.apply({'params': params}, prompt, cache=model.init_cache(B))
  state, codes = interleaved_start(c, prompt)
  tokens = jnp.full((B, L), c.pad_id, jnp.int32).at[:, :T0].set(prompt)

  def cond(s):
    pos, _, state = s[:3]
    return (pos < L) & ~state[3].all()

  def body(s):
    pos, logits, state, codes, tokens, cache = s
    ok = allowed_tokens(c, pos, state[0], state[1], state[2])
    tok = sample_categorical(jax.random.fold_in(rng, pos), jnp.where(ok, logits, -jnp.inf),
                             temperature or 1.0, top_k, top_p, greedy=temperature == 0)
    tok = jnp.where(state[3], c.pad_id, tok)
    state, codes = interleaved_step(c, tok, pos, state, codes)
    tokens = tokens.at[:, pos].set(tok)
    logits, cache = model.apply({'params': params}, tok[:, None], cache=cache)
    return pos + 1, logits[:, -1], state, codes, tokens, cache

  s = (jnp.asarray(T0, jnp.int32), logits[:, -1], state, codes, tokens, cache)
  pos, _, state, codes, tokens, _ = jax.lax.while_loop(cond, body, s)
  complete = state[1] - (state[0] >= 0)  # an image cut off by the sequence's end is not counted
  return InterleavedTokens(tokens=tokens, codes=codes, n_images=complete,
                           nfe=(pos - T0 + 1).astype(jnp.int32))


def prompt_ids(c, text_ids) -> jax.Array:
  """A prompt of label ids [n] (`pipelines.glyphs.prompt_label`) -> [1, 1 + n]: BOS, V + ids."""
  return jnp.concatenate([jnp.array([c.bos]), c.codebook_size + jnp.asarray(text_ids)])[None]


def interleaved(model, params, vq_model, vq_params, prompt, rng, **options) -> InterleavedTokens:
  """`interleaved_tokens`, then every image slot decoded through the single-scale tokenizer:
  images [B, M, H, W, C] (slots past n_images hold the decode of code 0)."""
  check_tokenizer(model, vq_model)
  out = interleaved_tokens(model, params, jnp.asarray(prompt, jnp.int32), rng, **options)
  B, M, N = out.codes.shape
  x = decode(vq_model, vq_params, out.codes.reshape(B * M, N))
  return out.replace(images=x.reshape((B, M) + x.shape[1:]))
