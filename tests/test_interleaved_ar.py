"""Interleaved text and images in one raster-AR token sequence (issue 25 item 8): the layout
against a hand-written sequence, the loss against a direct evaluation, the KV-cached sampler
against full recomputation (the model decides when an image starts), and the prompt's errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import raster_ar
from pipelines.glyphs import prompt_label
from sample import raster_ar as sar
from sample.categorical import sample_categorical

V, LV, S = 5, 4, 2  # codes, label ids (0 = blank), prompt slots


def tiny(M=2, h=1, width=32, n_layers=2, seed=0):
  cfg = raster_ar.Config(scales=(h,), image_size=16, image_width=width, codebook_size=V,
                         latent_dim=4, label_len=S, label_vocab=LV, max_images=M, d_model=32,
                         n_layers=n_layers, n_heads=2)
  model = raster_ar.build(cfg)
  batch = {'label': jnp.zeros((M, S), jnp.int32)}
  params = jax.jit(raster_ar.init, static_argnums=0)(model, jax.random.key(seed), batch)['params']
  # spread the tied embeddings so that a 2-layer random model has peaked, varied logits
  params = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 and a.shape[0] == cfg.vocab_size else a,
                        params)
  return model, params


def test_layout_is_the_hand_written_sequence():
  model, _ = tiny()
  c = model.cfg
  assert (c.num_tokens, c.pad_id, c.bos, c.eos, c.boi, c.eoi, c.seq_len) == (2, 5, 9, 10, 11, 12, 14)
  labels = jnp.array([[[2, 0], [0, 3]]])  # "B", then " C" (the blank is squeezed out)
  codes = jnp.array([[[0, 4], [1, 2]]])
  tokens, targets, mask, image = raster_ar.interleaved_layout(c, labels, codes)
  #             BOS  B  BOI  x x  EOI  C  BOI  x x  EOI EOS  PAD PAD
  want = np.array([9, 7, 11, 0, 4, 12, 8, 11, 1, 2, 12, 10, 5, 5])
  np.testing.assert_array_equal(tokens[0], want)
  np.testing.assert_array_equal(targets[0], np.append(want[1:], 5))
  # trained: every target up to EOS (position 10 predicts it) except the two EOIs
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(image[0], [0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0])


def test_loss_is_next_token_cross_entropy_on_the_masked_targets():
  model, params = tiny()
  rng = np.random.default_rng(0)
  batch = {'label': jnp.asarray(rng.integers(0, LV, (4, S))),
           'tokens': jnp.asarray(rng.integers(0, V, (4, 2)))}
  total, m = jax.jit(raster_ar.loss, static_argnames='model')(params, batch, jax.random.key(0),
                                                              model=model)
  tokens, targets, mask, image = raster_ar.interleaved_layout(
      model.cfg, batch['label'].reshape(2, 2, S), batch['tokens'].reshape(2, 2, 2))
  logp = np.asarray(jax.nn.log_softmax(model.apply({'params': params}, tokens)[0], -1))
  nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  w, img = np.asarray(mask), np.asarray(mask * image)
  np.testing.assert_allclose(total, (nll * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(m['bits_per_code'], (nll * img).sum() / img.sum() / np.log(2),
                             rtol=1e-5)
  sums = jax.jit(raster_ar.evaluate, static_argnames='model')(params, batch, None, model=model)
  np.testing.assert_allclose(sums['nats'], (nll * w).sum(), rtol=1e-5)
  with pytest.raises(ValueError, match='multiple'):
    raster_ar.loss(params, jax.tree.map(lambda a: a[:3], batch), None, model=model)


def full_recompute(model, params, prompt, rng, temperature):
  """Uncached reference: at each position a fresh forward of the whole prefix."""
  c = model.cfg
  B, T0 = prompt.shape
  f = jax.jit(lambda p, t: model.apply({'params': p}, t)[0][:, -1])
  state, codes = sar.interleaved_start(c, prompt)
  seq, passes = prompt, 1
  for pos in range(T0, c.seq_len):
    if bool(state[3].all()):
      break
    ok = sar.allowed_tokens(c, pos, state[0], state[1], state[2])
    logits = jnp.where(ok, f(params, seq), -jnp.inf)
    tok = sample_categorical(jax.random.fold_in(rng, pos), logits, temperature, 0, 1.0)
    tok = jnp.where(state[3], c.pad_id, tok)
    state, codes = sar.interleaved_step(c, tok, pos, state, codes)
    seq, passes = jnp.concatenate([seq, tok[:, None]], axis=1), passes + 1
  return seq, codes, state, passes


def test_cached_interleaved_sampler_equals_full_recompute_and_keeps_the_grammar():
  model, params = tiny()
  c = model.cfg
  prompt = jnp.array([[c.bos, V + 1], [c.bos, V + 3], [c.bos, V + 2], [c.bos, V + 1]])
  seen_images = 0
  for seed in range(3):
    rng = jax.random.key(seed)
    out = sar.interleaved_tokens(model, params, prompt, rng)
    seq, codes, state, passes = full_recompute(model, params, prompt, rng, 1.0)
    n = seq.shape[1]
    np.testing.assert_array_equal(out.tokens[:, :n], seq)
    np.testing.assert_array_equal(out.codes, codes)
    assert int(out.nfe) == passes
    for row, k, img in zip(np.asarray(out.tokens), np.asarray(out.n_images), np.asarray(codes)):
      # the grammar: every BOI is followed by N codes and EOI; images counted; codes recorded
      starts = np.flatnonzero(row == c.boi)
      assert len(starts) == k <= c.max_images
      for m, s in enumerate(starts):
        np.testing.assert_array_equal(row[s + 1:s + 1 + c.num_tokens], img[m])
        assert (row[s + 1:s + 1 + c.num_tokens] < V).all() and row[s + 1 + c.num_tokens] == c.eoi
      seen_images += k
  assert seen_images > 0  # the sampler did switch to images


def test_interleaved_prompt_errors_name_the_fix():
  alphabet = 'ABC'
  np.testing.assert_array_equal(prompt_label('CA', alphabet, 2), [3, 1])
  with pytest.raises(ValueError, match='empty'):
    prompt_label('', alphabet, 2)
  with pytest.raises(ValueError, match="not in the alphabet 'ABC'"):
    prompt_label('AZ', alphabet, 2)
  with pytest.raises(ValueError, match='more than max_chars=2'):
    prompt_label('ABC', alphabet, 2)
  model, params = tiny()
  too_long = jnp.full((1, model.cfg.seq_len - 1), model.cfg.bos)
  with pytest.raises(ValueError, match='shorter than'):
    sar.interleaved_tokens(model, params, too_long, jax.random.key(0))
  assert sar.prompt_ids(model.cfg, prompt_label('CA', alphabet, 2)).tolist() == [[9, 8, 6]]


def test_cli_draws_interleaved_sequences_and_refuses_bad_prompts(tmp_path, capsys):
  """`python -m sample --interleaved A7` on tiny runs of both interleaved configs (raster AR over
  a single-scale tokenizer; Transfusion): one text line per sequence and a grid of M slots per
  sequence; an empty prompt, characters outside the alphabet and a string over max_chars are
  each one clear error; a single-image run refuses --interleaved."""
  import os
  from PIL import Image
  from sample.__main__ import main as sample_main
  from train.cli import UserError
  from train.config import from_file
  from train.trainer import train
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  conf = lambda name: from_file(os.path.join(root, 'configs', name))
  vq = conf('vqvae_glyphs.py:tiny,single')
  vq.data.cache_dir = str(tmp_path)
  vq.train.update(steps=2, eval_every=2, ckpt_every=2, log_every=2)
  train(vq, str(tmp_path / 'vq'))
  runs = {}
  for name in ('raster_ar_glyphs.py:tiny,interleaved', 'transfusion_glyphs.py:tiny,interleaved'):
    c = conf(name)
    if 'raster' in name:
      c.data.tokenizer = str(tmp_path / 'vq')
    c.data.cache_dir = str(tmp_path)
    c.judge.name = ''
    c.train.update(steps=2, eval_every=2, ckpt_every=2, log_every=2)
    runs[name] = (c, str(tmp_path / name.split('_')[0]))
    assert np.isfinite(train(c, runs[name][1])['loss'])
  for c, wd in runs.values():
    grid = str(tmp_path / 'seq.png')
    capsys.readouterr()
    sample_main(['--workdir', wd, '--interleaved', 'A7', '--num', '2', '--steps', '2',
                 '--out', grid])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith('A7') for line in lines)
    assert all(set(line.replace('<img>', '')) <= set(c.data.alphabet + ' ') for line in lines)
    with Image.open(grid) as g:  # two rows of M = 2 slots
      H, W = c.data.image_size, c.data.image_width or c.data.image_size
      assert g.size[0] >= 2 * W and g.size[1] >= 2 * H
    for prompt, words in (('', 'empty'), ('A~', 'not in the alphabet'),
                          ('A' * (c.data.max_chars + 1), 'more than max_chars')):
      with pytest.raises(UserError, match=words):
        sample_main(['--workdir', wd, '--interleaved', prompt, '--out', grid])
  single = conf('transfusion_glyphs.py:tiny')
  single.judge.name = ''
  single.train.update(steps=1, eval_every=1, ckpt_every=1, log_every=1)
  train(single, str(tmp_path / 'single'))
  with pytest.raises(UserError, match='single images'):
    sample_main(['--workdir', str(tmp_path / 'single'), '--interleaved', 'A7'])
