"""Transfusion (paradigms/transfusion.py, sample/transfusion.py): the layouts and the attention
mask against hand-written matrices, the mask as the network sees it (perturbations), both losses
against numpy (and exactly 0 without their modality), cached text -> image and image -> text
sampling against full recomputes, the configs, and a few training steps."""
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paradigms import transfusion as tf
from paradigms.nn.dit import patchify, unpatchify
from sample import transfusion as st
from sample.categorical import sample_categorical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, LV = 3, 6  # label slots, label vocab (5 characters + blank)


def config(width=16, max_images=1, n_layers=2):
  return tf.Config(image_size=8, image_width=width, channels=3, patch_size=4, label_len=S,
                   label_vocab=LV, freq_dim=16, d_model=32, n_layers=n_layers, n_heads=2,
                   max_images=max_images)


@functools.lru_cache(maxsize=None)
def tiny(n_layers=2, width=16, max_images=1):
  """8 x `width` images in 4x4 patches (N = 2 x width/4), random init with a non-zero output
  layer (patch_out starts at zero, which would make every velocity 0)."""
  model = tf.build(config(width, max_images, n_layers))
  batch = {'image': jnp.zeros((2, 8, width, 3)), 'label': jnp.zeros((2, S), jnp.int32)}
  params = jax.jit(lambda r: nn.meta.unbox(tf.init(model, r, batch))['params'])(jax.random.key(0))
  params = dict(params, patch_out_w=0.3 * jax.random.normal(jax.random.key(1),
                                                            params['patch_out_w'].shape))
  return model, params


loss = jax.jit(tf.loss, static_argnames=('model', 'ocr_fraction', 'ocr_t_max', 'interleaved'))
evaluate = jax.jit(tf.evaluate, static_argnames=('model',))


def grid(rows):
  return np.array([[c == '1' for c in r.replace(' ', '')] for r in rows])


def test_config_and_params():
  model, params = tiny()
  c = model.cfg
  assert (c.grid, c.num_patches, c.patch_dim, c.seq_len) == ((2, 4), 8, 48, S + 8 + 3)
  assert (c.bos, c.eos, c.boi, c.eoi, c.vocab_size) == (6, 7, 8, 9, 10)
  assert sum(x.size for x in jax.tree.leaves(params)) == c.num_params()
  with pytest.raises(ValueError, match='multiples of model.patch_size'):
    tf.Config(image_size=8, image_width=10, patch_size=4)
  with pytest.raises(ValueError, match='ocr_fraction'):
    tf.Options(ocr_fraction=1.5)


def test_layouts():
  """[PAD BOS a b BOI p.. EOI] and [BOI p.. EOI a b EOS PAD]; blanks inside the label are
  squeezed out; targets and their mask as the module doc says."""
  c = config(width=8)  # N = 4, L = 10
  label = jnp.array([[2, 5, 0], [0, 3, 0]], jnp.int32)  # 'ab'-like, and a blank-first 'c'
  P, BOS, EOS, BOI, EOI = 0, c.bos, c.eos, c.boi, c.eoi
  gen = tf.layout(c, label, jnp.array([False, False]))
  np.testing.assert_array_equal(gen.tokens, [[P, BOS, 2, 5, BOI, P, P, P, P, EOI],
                                             [P, P, BOS, 3, BOI, P, P, P, P, EOI]])
  np.testing.assert_array_equal(gen.image_start, [5, 5])
  np.testing.assert_array_equal(gen.target_mask, [[0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
                                                  [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(gen.targets[0, 1:4], [2, 5, BOI])
  ocr = tf.layout(c, label, jnp.array([True, True]))
  np.testing.assert_array_equal(ocr.tokens, [[BOI, P, P, P, P, EOI, 2, 5, EOS, P],
                                             [BOI, P, P, P, P, EOI, 3, EOS, P, P]])
  np.testing.assert_array_equal(ocr.image_start, [1, 1])
  np.testing.assert_array_equal(ocr.target_mask, [[0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
                                                  [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(ocr.targets[0, 5:8], [2, 5, EOS])


def test_attention_mask():
  """Causal across the sequence, bidirectional inside the image, text after the image sees all
  of it, the image sees the text before it; PAD keys are never seen."""
  c = config(width=8)
  label = jnp.array([[2, 5, 0]], jnp.int32)
  ocr = tf.layout(c, label, jnp.array([True]))  # text (BOI), image, text (EOI a b EOS), PAD
  want = grid(['1000000000',
               '1111100000', '1111100000', '1111100000', '1111100000',
               '1111110000', '1111111000', '1111111100', '1111111110',
               '1111111110'])  # the PAD query (ignored) sees every real key
  np.testing.assert_array_equal(tf.attention_mask(c, ocr.tokens, ocr.image_start)[0], want)
  gen = tf.layout(c, label, jnp.array([False]))  # PAD, text (BOS a b BOI), image, text (EOI)
  want = grid(['0111111111',
               '0100000000', '0110000000', '0111000000', '0111100000',
               '0111111110', '0111111110', '0111111110', '0111111110',
               '0111111111'])
  np.testing.assert_array_equal(tf.attention_mask(c, gen.tokens, gen.image_start)[0], want)


def test_network_mask_by_perturbation():
  """What the network computes obeys the mask: a later character changes no patch output, the
  last patch changes the first patch's output and the text after the image, not the BOI before
  it."""
  model, params = tiny()
  c = model.cfg
  seq = tf.layout(c, jnp.array([[2, 5, 1]], jnp.int32), jnp.array([True]))
  x = jax.random.normal(jax.random.key(2), (1, c.num_patches, c.patch_dim))
  run = lambda tokens, x: model.apply({'params': params}, tokens, x, jnp.full((1,), 0.3),
                                      seq.image_start)
  logits, v, _ = run(seq.tokens, x)
  N = c.num_patches
  logits2, v2, _ = run(seq.tokens.at[0, N + 3].set(4), x)
  np.testing.assert_allclose(v2, v, atol=1e-6)
  np.testing.assert_allclose(logits2[:, :N + 3], logits[:, :N + 3], atol=1e-6)
  logits3, v3, _ = run(seq.tokens, x.at[0, -1].add(1.0))
  assert np.abs(v3[0, 0] - v[0, 0]).max() > 1e-4
  assert np.abs(logits3[0, N + 1] - logits[0, N + 1]).max() > 1e-4
  np.testing.assert_allclose(logits3[0, 0], logits[0, 0], atol=1e-6)


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                                         keepdims=True))


def test_loss_functions_match_numpy_and_vanish_without_their_modality():
  r = np.random.default_rng(0)
  logits = jnp.asarray(r.normal(size=(2, 5, 7)), jnp.float32)
  targets = jnp.asarray(r.integers(0, 7, (2, 5)), jnp.int32)
  mask = jnp.asarray([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0]], jnp.float32)
  lp = log_softmax(logits)
  nll = -np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
  mean, nats, count = tf.lm_loss(logits, targets, mask)
  np.testing.assert_allclose(mean, (nll * mask).sum() / 4, rtol=1e-5)
  np.testing.assert_allclose([nats, count], [(nll * np.asarray(mask)).sum(), 4], rtol=1e-5)
  zero, _, _ = tf.lm_loss(logits, targets, jnp.zeros_like(mask))
  assert float(zero) == 0.0

  v_hat, v = (jnp.asarray(r.normal(size=(3, 4, 6)), jnp.float32) for _ in range(2))
  w = jnp.array([1.0, 0.0, 1.0])
  per = ((np.asarray(v_hat) - np.asarray(v)) ** 2).mean(axis=(1, 2))
  mean, _ = tf.flow_loss(v_hat, v, w)
  np.testing.assert_allclose(mean, (per[0] + per[2]) / 2, rtol=1e-5)
  zero, _ = tf.flow_loss(v_hat, v, jnp.zeros(3))
  assert float(zero) == 0.0


def test_loss_and_evaluate_against_direct_computation():
  """All-OCR batch with clean images: L_diff is exactly 0 and L_LM is the numpy CE of the
  caption targets of one direct forward; evaluate's flow MSE is that of a direct forward at the
  stratified t with its eps."""
  model, params = tiny()
  c = model.cfg
  N = c.num_patches
  image = jax.random.uniform(jax.random.key(3), (2, 8, 16, 3), minval=-1, maxval=1)
  label = jnp.array([[2, 5, 1], [3, 0, 0]], jnp.int32)
  batch = {'image': image, 'label': label}
  total, m = loss(params, batch, jax.random.key(4), model=model, ocr_fraction=1.0,
                     ocr_t_max=0.0)
  assert float(m['flow_mse']) == 0.0 and np.isfinite(float(total))
  x0 = patchify(image, 4)
  tokens = jnp.array([[c.boi] + [0] * N + [c.eoi, 2, 5, 1, c.eos],
                      [c.boi] + [0] * N + [c.eoi, 3, c.eos, 0, 0]], jnp.int32)
  logits, _, _ = model.apply({'params': params}, tokens, x0, jnp.zeros(2), jnp.ones(2, jnp.int32))
  lp = log_softmax(logits)
  picks = [(0, N + 1, 2), (0, N + 2, 5), (0, N + 3, 1), (0, N + 4, c.eos),
           (1, N + 1, 3), (1, N + 2, c.eos)]
  want = -np.mean([lp[b, i, y] for b, i, y in picks])
  np.testing.assert_allclose(m['lm_nll'], want, rtol=1e-5)
  np.testing.assert_allclose(total, want, rtol=1e-5)

  rng = jax.random.key(5)
  sums = evaluate(params, batch, rng, model=model)
  assert float(sums['tokens']) == 6 and float(sums['count']) == 2
  np.testing.assert_allclose(sums['nats'], -sum(lp[b, i, y] for b, i, y in picks), rtol=1e-5)
  eps = jax.random.normal(rng, x0.shape)
  t = jnp.array([0.25, 0.75])
  gen = jnp.array([[c.bos, 2, 5, 1, c.boi] + [0] * N + [c.eoi],
                   [0, 0, c.bos, 3, c.boi] + [0] * N + [c.eoi]], jnp.int32)
  tb = t[:, None, None]
  _, v_hat, _ = model.apply({'params': params}, gen, (1 - tb) * x0 + tb * eps, t,
                            jnp.full(2, S + 2, jnp.int32))
  mse = ((np.asarray(v_hat) - np.asarray(eps - x0)) ** 2).mean()
  np.testing.assert_allclose(sums['flow_mse_sum'] / 2, mse, rtol=1e-5)


@pytest.mark.parametrize('w', [1.0, 2.5])
def test_text_to_image_cached_equals_full_recompute(w):
  model, params = tiny()
  c = model.cfg
  label = jnp.array([[2, 5, 1], [3, 0, 0], [0, 0, 0]], jnp.int32)
  rng, K = jax.random.key(6), 4
  out = st.text_to_image(model, params, label, rng, steps=K, cfg=w)
  assert int(out.nfe) == K and int(out.rows) == (3 if w == 1 else 6)
  rows = jnp.concatenate([label, jnp.zeros_like(label)]) if w != 1 else label
  seq = tf.layout(c, rows, jnp.zeros(rows.shape[0], bool))
  full = jax.jit(lambda x, t: model.apply({'params': params}, seq.tokens, x, t,
                                          seq.image_start)[1])
  x = jax.random.normal(rng, (3, c.num_patches, c.patch_dim))
  for k in range(K):
    t = 1.0 - k / K
    xr = jnp.concatenate([x, x]) if w != 1 else x
    v = full(xr, jnp.full((rows.shape[0],), t))
    if w != 1:
      v = v[3:] + w * (v[:3] - v[3:])
    x = x - v / K
  want = unpatchify(x, c.patch_size, c.channels, c.grid)
  assert out.images.shape == (3, 8, 16, 3)
  np.testing.assert_allclose(out.images, want, atol=2e-5)
  assert np.abs(np.asarray(want)).max() > 0.1  # not trivially zero


def full_decode(model, params, images, rng, temperature):
  """Uncached reference: a full forward of the whole OCR sequence per character."""
  c = model.cfg
  B, N = images.shape[0], c.num_patches
  x0 = patchify(images, c.patch_size)
  fwd = jax.jit(lambda tok: model.apply({'params': params}, tok, x0, jnp.zeros(B),
                                        jnp.ones(B, jnp.int32))[0])
  tokens = np.zeros((B, c.seq_len), np.int32)
  tokens[:, 0], tokens[:, N + 1] = c.boi, c.eoi
  ids = np.arange(c.vocab_size)
  done = np.zeros(B, bool)
  out = np.zeros((B, S + 1), np.int32)
  for i in range(S + 1):
    if done.all():
      break
    logits = np.asarray(fwd(jnp.asarray(tokens)))[:, N + 1 + i]
    allowed = ((ids > 0) & (ids < c.bos)) | (ids == c.eos) if i < S else ids == c.eos
    l = jnp.asarray(np.where(allowed, logits, -np.inf))
    y = np.asarray(sample_categorical(jax.random.fold_in(rng, i), l, temperature or 1.0,
                                      greedy=temperature == 0))
    y = np.where(done, 0, y)
    out[:, i] = y
    tokens[:, N + 2 + i] = y
    done |= y == c.eos
  return out, i


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_image_to_text_cached_equals_full_decode(temperature):
  model, params = tiny()
  # bias the head so rows stop at different lengths: EOS a little likelier
  emb = params['embed']['embedding']
  params = dict(params, embed={'embedding': emb.at[model.cfg.eos].multiply(1.5)})
  images = jax.random.uniform(jax.random.key(7), (6, 8, 16, 3), minval=-1, maxval=1)
  rng = jax.random.key(8)
  out = st.image_to_text(model, params, images, rng, temperature=temperature)
  want, _ = full_decode(model, params, images, rng, temperature)
  np.testing.assert_array_equal(out.tokens, want)
  eos = model.cfg.eos
  lengths = [list(r).index(eos) if eos in r else S + 1 for r in want]
  assert int(out.nfe) == 1 + min(max(lengths) + 1, S + 1)
  label = np.where((want[:, :S] > 0) & (want[:, :S] < model.cfg.bos), want[:, :S], 0)
  np.testing.assert_array_equal(out.label, label)


def test_configs():
  from train.config import from_file
  path = os.path.join(ROOT, 'configs', 'transfusion_glyphs.py')
  c = from_file(path + ':tiny')
  cfg = tf.Config(**c.model)
  assert (cfg.image_size, cfg.width, cfg.label_len, cfg.label_vocab) == (16, 16, 3, 32)
  tf.Options(**c.loss)
  p = from_file(path + ':small,prompt')
  cfg = tf.Config(**p.model)
  assert (cfg.image_size, cfg.width, cfg.grid, cfg.label_len) == (32, 64, (8, 16), 8)
  assert p.data.prompts and cfg.seq_len == 8 + 128 + 3
  with pytest.raises(ValueError, match='unknown'):
    from_file(path + ':tiny,nope')


def test_a_few_steps_lower_the_loss():
  model, params = tiny(n_layers=1)
  image = jax.random.uniform(jax.random.key(9), (8, 8, 16, 3), minval=-1, maxval=1)
  batch = {'image': image, 'label': jax.random.randint(jax.random.key(10), (8, S), 0, LV)}
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, rng):
    (l, _), g = jax.value_and_grad(tf.loss, has_aux=True)(params, batch, rng, model=model)
    u, state = opt.update(g, state)
    return optax.apply_updates(params, u), state, l

  losses = []
  for i in range(40):
    params, state, l = step(params, state, jax.random.key(100))  # fixed noise: a fixed target
    losses.append(float(l))
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


# --- Item 8: interleaved sequences and the sampler that decides when an image starts --------

def test_interleaved_layout_and_mask():
  """[BOS a BOI I EOI b c BOI I EOI EOS PAD..]: targets every text token after BOS but none at or
  into the patches; the mask is causal across, bidirectional inside each image."""
  c = config(width=8, max_images=2)  # N = 4, L = 2 (3 + 4 + 2) + 2 = 20
  assert c.seq_len == 20
  seq = tf.interleaved_layout(c, jnp.array([[[2, 0, 0], [3, 4, 0]]], jnp.int32))
  P, I = 0, 0
  np.testing.assert_array_equal(seq.tokens[0], [c.bos, 2, c.boi, I, I, I, I, c.eoi, 3, 4, c.boi,
                                                I, I, I, I, c.eoi, c.eos, P, P, P])
  np.testing.assert_array_equal(seq.image_start, [[3, 11]])
  np.testing.assert_array_equal(np.flatnonzero(seq.target_mask[0]), [0, 1, 7, 8, 9, 15])
  np.testing.assert_array_equal(seq.targets[0, [0, 1, 7, 8, 9, 15]], [2, c.boi, 3, 4, c.boi, c.eos])
  img = {q: (q - 3) // 8 if q in range(3, 7) or q in range(11, 15) else None for q in range(20)}
  want = np.zeros((20, 20), bool)
  for q in range(20):
    for k in range(17):  # keys 17.. are PAD
      want[q, k] = q >= 17 or k <= q or (img[q] is not None and img[q] == img[k])
  got = tf.attention_mask(c, seq.tokens, seq.image_start)[0]
  np.testing.assert_array_equal(got, want)
  assert got[4, 6] and not got[2, 3] and got[7, 6] and not got[6, 7]  # spot checks


def test_interleaved_loss():
  model, params = tiny(max_images=2)
  image = jax.random.uniform(jax.random.key(11), (4, 8, 16, 3), minval=-1, maxval=1)
  batch = {'image': image, 'label': jax.random.randint(jax.random.key(12), (4, S), 0, LV)}
  total, m = loss(params, batch, jax.random.key(13), model=model, interleaved=True)
  assert np.isfinite(float(total)) and float(m['flow_mse']) > 0
  np.testing.assert_allclose(total, m['lm_nll'] + 5.0 * m['flow_mse'], rtol=1e-6)
  with pytest.raises(ValueError, match='max_images'):
    tf.loss(params, batch, jax.random.key(13), model=tiny()[0], interleaved=True)


def full_interleaved(model, params, prompt, key, steps, temperature):
  """Uncached reference of st.interleaved for one row: a full forward of the whole sequence
  (future positions PAD, absent images at start -N) for every token and Euler step."""
  c = model.cfg
  L, N, P, M = c.seq_len, c.num_patches, c.patch_dim, c.max_images
  fwd = jax.jit(lambda tok, x, t, st: model.apply({'params': params}, tok, x, t, st)[:2])
  tokens = np.zeros(L, np.int32)
  tokens[:len(prompt)] = prompt
  xs, ts, starts = np.zeros((M, N, P), np.float32), np.zeros(M, np.float32), np.full(M, -N)
  pos, n, i, nfe = len(prompt), 0, 0, 1
  ids = np.arange(c.vocab_size)
  run = lambda: fwd(jnp.asarray(tokens)[None], jnp.asarray(xs)[None], jnp.asarray(ts)[None],
                    jnp.asarray(starts, jnp.int32)[None])
  while pos < L:
    logits = np.asarray(run()[0])[0, pos - 1]
    room = n < M and pos + N + 2 <= L - 1
    allowed = ((ids > 0) & (ids < c.bos)) | ((ids == c.boi) & room) | (ids == c.eos)
    if pos == L - 1:
      allowed = ids == c.eos
    y = int(sample_categorical(jax.random.fold_in(key, i), jnp.asarray(np.where(
        allowed, logits, -np.inf)), temperature))
    tokens[pos] = y
    nfe += 1
    if y == c.boi:
      starts[n] = start = pos + 1
      x = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 1), (N, P))
      for k in range(steps):
        xs[n], ts[n] = x, 1.0 - k / steps
        x = x - np.asarray(run()[1])[0, n] / steps
      xs[n], ts[n] = x, 0.0
      tokens[start + N] = c.eoi
      pos, n, nfe = start + N + 1, n + 1, nfe + steps + 1
    else:
      pos += 1
    i += 1
    if y == c.eos:
      break
  return tokens, xs, n, nfe


def test_interleaved_sampler_equals_full_recompute():
  model, params = tiny(max_images=2)
  c = model.cfg
  prompt = jnp.array([[c.bos], [c.bos]], jnp.int32)
  rng, K = jax.random.key(14), 3
  out = st.interleaved(model, params, prompt, rng, steps=K)
  keys = jax.random.split(rng, 2)
  total = 0
  for b in range(2):
    tokens, xs, n, nfe = full_interleaved(model, params, [c.bos], keys[b], K, 1.0)
    np.testing.assert_array_equal(out.tokens[b], tokens)
    assert int(out.n_images[b]) == n and int(out.nfe[b]) == nfe
    want = unpatchify(jnp.asarray(xs), c.patch_size, c.channels, c.grid)
    np.testing.assert_allclose(out.images[b], want, atol=5e-5)
    total += n
  assert total >= 1  # the seed draws at least one image, so the diffusion branch is tested


def test_trains_draws_and_reads_through_the_trainer_and_the_cli(tmp_path, capsys):
  """The paradigm contract end to end: a few steps of configs/transfusion_glyphs.py:tiny,prompt
  through the one trainer, then `python -m sample --prompt AB7 --out grid.png` draws a grid of
  the run's H x W images, `--image` reads a real render back to a string of the alphabet (one
  JSON line), and an unreadable --image is one clear error."""
  from PIL import Image
  from pipelines.glyphs import glyph_example
  from sample.__main__ import main as sample_main
  from train.cli import UserError
  from train.config import from_file
  from train.trainer import train
  c = from_file(os.path.join(ROOT, 'configs', 'transfusion_glyphs.py:tiny,prompt'))
  c.judge.name = ''
  c.train.update(steps=4, log_every=2, eval_every=4, ckpt_every=4)
  wd = str(tmp_path / 'run')
  out = train(c, wd)
  assert np.isfinite(out['loss'])
  assert any('flow_mse' in k for k in out) and any('bpb' in k or 'bits' in k for k in out)
  H, W = c.data.image_size, c.data.image_width
  grid = str(tmp_path / 'grid.png')
  sample_main(['--workdir', wd, '--prompt', 'AB7', '--num', '2', '--steps', '2', '--out', grid])
  with Image.open(grid) as g:
    assert g.size[0] >= W and g.size[1] >= H  # wide cells: at least one H x W image
  ex = glyph_example(0, image_size=H, image_width=W, alphabet=c.data.alphabet,
                     max_chars=c.data.max_chars, split='eval', prompts=True)
  png = str(tmp_path / 'real.png')
  Image.fromarray(np.uint8(np.clip((ex['image'] + 1) * 127.5, 0, 255))).save(png)
  capsys.readouterr()
  sample_main(['--workdir', wd, '--image', png, '--json'])
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(row['text']) <= set(c.data.alphabet) and len(row['text']) <= c.data.max_chars
  assert row['image'] == png and 2 <= row['nfe'] <= c.data.max_chars + 2
  for prompt, words in (('AB?', 'not in the alphabet'), ('123456789', 'more than max_chars=8')):
    with pytest.raises(ValueError, match=words):  # one line at the CLI (train.cli.run_main)
      sample_main(['--workdir', wd, '--prompt', prompt, '--out', grid])
  (tmp_path / 'bad.png').write_text('not an image')
  with pytest.raises(UserError, match='cannot read it as an image'):
    sample_main(['--workdir', wd, '--image', str(tmp_path / 'bad.png')])
