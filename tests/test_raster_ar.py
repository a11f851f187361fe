"""Raster-order AR over VQ codes (paradigms/raster_ar.py, sample/raster_ar.py): the cached CFG
sampler against a full recompute, guided logits against two separate passes, the loss against a
direct evaluation (prompt positions carry none), a chi-square test of the first code's draws,
the configs, and a rectangular tokenizer end to end."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from paradigms import raster_ar
from sample import raster_ar as sar
from sample.categorical import sample_categorical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, V, LV = 3, 16, 6


class Data:
  max_chars = S


def tiny(h=2, width=0, size=16, n_layers=2):
  cfg = raster_ar.Config(scales=(h,), image_size=size, image_width=width, codebook_size=V,
                         latent_dim=4, label_len=S, label_vocab=LV, d_model=32,
                         n_layers=n_layers, n_heads=2)
  model = raster_ar.build(cfg)
  batch = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), raster_ar.example_batch(2, Data, cfg))
  params = jax.jit(raster_ar.init, static_argnums=0)(model, jax.random.key(0), batch)['params']
  return model, params


loss = jax.jit(raster_ar.loss, static_argnames=('model', 'label_dropout'))
evaluate = jax.jit(raster_ar.evaluate, static_argnames=('model',))
apply = jax.jit(lambda model, params, z: model.apply({'params': params}, z)[0], static_argnums=0)


def labels(B, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, S), 0, LV)


@functools.partial(jax.jit, static_argnums=0)
def full_logits(model, params, label, tokens):
  """Logits [B, N, V] predicting each code from a fresh forward of [prompt ; tokens[:-1]]."""
  z = jnp.concatenate([raster_ar.prompt_tokens(model.cfg, label), tokens[:, :-1]], axis=1)
  return model.apply({'params': params}, z)[0][:, S - 1:]


def test_config_and_params():
  model, params = tiny(h=2, width=32)
  assert model.cfg.grid == (2, 4) and model.cfg.num_tokens == 8 and model.cfg.seq_len == S + 7
  assert sum(x.size for x in jax.tree.leaves(params)) == model.cfg.num_params()
  with pytest.raises(ValueError, match='single-scale'):
    raster_ar.Config(scales=(1, 2))
  with pytest.raises(ValueError, match='multiple'):
    raster_ar.Config(image_size=32, image_width=48)


def test_cached_cfg_sampler_equals_full_recompute():
  model, params = tiny(h=2, width=32)  # 2 x 4 codes
  B, N, w, rng = 3, 8, 2.5, jax.random.key(5)
  label = labels(B)
  out = sar.generate_tokens(model, params, label, rng, cfg=w, top_k=10, temperature=0.9)
  assert out.tokens.shape == (B, N) and int(out.nfe) == N and int(out.rows) == 2 * B
  null = jnp.zeros_like(label)
  tokens = jnp.zeros((B, N), jnp.int32)
  for i in range(N):  # uncached: recompute both streams' whole sequences at every position
    l_c = full_logits(model, params, label, tokens)[:, i]
    l_u = full_logits(model, params, null, tokens)[:, i]
    x = sample_categorical(jax.random.fold_in(rng, i), l_u + w * (l_c - l_u), 0.9, 10)
    tokens = tokens.at[:, i].set(x)
  np.testing.assert_array_equal(out.tokens, tokens)


def test_guided_logits_equal_two_separate_passes():
  model, params = tiny(h=2, width=32)
  label, w = labels(2, seed=3), 3.0
  out = sar.generate_tokens(model, params, label, jax.random.key(2), cfg=w, return_logits=True)
  l_c = full_logits(model, params, label, out.tokens)
  l_u = full_logits(model, params, jnp.zeros_like(label), out.tokens)
  np.testing.assert_allclose(out.logits, l_u + w * (l_c - l_u), atol=2e-4, rtol=1e-4)
  plain = sar.generate_tokens(model, params, label, jax.random.key(2), return_logits=True)
  np.testing.assert_allclose(plain.logits, full_logits(model, params, label, plain.tokens),
                             atol=2e-4, rtol=1e-4)
  assert int(plain.rows) == 2


def test_loss_is_next_code_cross_entropy_on_image_tokens_only():
  model, params = tiny(h=2, width=32)
  B, N = 4, 8
  tokens = jax.random.randint(jax.random.key(7), (B, N), 0, V)
  label = labels(B, seed=8)
  batch = {'tokens': tokens, 'label': label, 'inputs': jnp.zeros((B, 0, 4))}
  ce, metrics = loss(params, batch, jax.random.key(0), model=model, label_dropout=0.0)
  # a direct forward of the whole sequence [prompt ; x] (S + N positions, causal)
  z = jnp.concatenate([raster_ar.prompt_tokens(model.cfg, label), tokens], axis=1)
  logits = np.asarray(apply(model, params, z), np.float64)  # [B, S + N, V]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.mean([[logp[b, S - 1 + i, tokens[b, i]] for i in range(N)] for b in range(B)])
  np.testing.assert_allclose(float(ce), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['bits_per_token']), want / np.log(2), rtol=1e-5)
  # prompt positions carry no loss: the per-token NLL covers exactly the N image codes
  nll, _ = jax.eval_shape(functools.partial(raster_ar.image_nll, model), params, tokens, label)
  assert nll.shape == (B, N)
  sums = evaluate(params, batch, jax.random.key(0), model=model)
  np.testing.assert_allclose(float(sums['nats'] / sums['tokens']), want, rtol=1e-5)
  # dropping every prompt is the unconditional loss
  null = {**batch, 'label': jnp.zeros_like(label)}
  drop, _ = loss(params, batch, jax.random.key(0), model=model, label_dropout=0.999999)
  ref, _ = loss(params, null, jax.random.key(0), model=model, label_dropout=0.0)
  np.testing.assert_allclose(float(drop), float(ref), rtol=1e-6)


@pytest.mark.parametrize('w', [1.0, 2.0])
def test_first_code_chi_square(w):
  """x_1's draws follow softmax(l / T) of the (guided) logits of the last prompt position."""
  model, params = tiny(h=1, width=32, n_layers=1)  # a 1 x 2 grid: two codes per image
  B, T = 6000, 0.5
  label = jnp.broadcast_to(labels(1, seed=4), (B, S))
  out = sar.generate_tokens(model, params, label, jax.random.key(11), cfg=w, temperature=T)
  rows = jnp.concatenate([label[:1], jnp.zeros_like(label[:1])])
  l_c, l_u = apply(model, params, raster_ar.prompt_tokens(model.cfg, rows))[:, -1]
  p = np.asarray(jax.nn.softmax((l_u + w * (l_c - l_u)) / T), np.float64)
  p = p / p.sum()
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=V)
  keep = p * B >= 5  # pool the rare codes into one cell
  obs = np.append(counts[keep], counts[~keep].sum())
  exp = np.append(p[keep], p[~keep].sum()) * B
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  assert stats.chisquare(obs, exp).pvalue > 1e-3
  assert p.max() < 0.9  # the test is not vacuous: the distribution is spread


def test_configs_load_and_build():
  from train.config import from_file
  for name, mod in (('raster_ar_glyphs', raster_ar), ('maskgit_glyphs', None)):
    c = from_file(os.path.join(ROOT, 'configs', f'{name}.py') + ':tiny')
    from paradigms import maskgit
    mod = mod or maskgit
    cfg = mod.Config(**{k: c.model[k] for k in c.model.keys()})
    assert cfg.scales == (4,) and cfg.grid == (4, 4) and cfg.label_len == c.data.max_chars
    p = from_file(os.path.join(ROOT, 'configs', f'{name}.py') + ':small,prompt')
    cfg = mod.Config(**{k: p.model[k] for k in p.model.keys()})
    assert p.data.prompts and p.data.image_width == 64 and cfg.grid == (8, 16)
    assert cfg.label_len == 8
  with pytest.raises(ValueError, match="variant 'wide'"):
    from_file(os.path.join(ROOT, 'configs', 'raster_ar_glyphs.py') + ':small,wide')


def test_sample_decodes_through_a_rectangular_single_scale_tokenizer():
  from paradigms import vqvae
  vq_cfg = vqvae.VQConfig(image_size=8, image_width=16, channels=1, base_channels=8,
                          channel_mult=(1, 2), n_res_blocks=0, norm_groups=8, latent_dim=4,
                          codebook_size=V, scales=(4,), phi_ratio=0.0)
  vq_model = vqvae.build(vq_cfg)
  vq_params = jax.jit(vq_model.init)(jax.random.key(0), jnp.zeros((1, 8, 16, 1)))['params']
  model, params = tiny(h=4, width=16, size=8, n_layers=1)  # 4 x 8 codes
  out = sar.sample(model, params, vq_model, vq_params, labels(2), jax.random.key(0), cfg=2.0)
  assert out.images.shape == (2, 8, 16, 1) and out.tokens.shape == (2, 32)
  assert bool(jnp.all(jnp.isfinite(out.images)))
  wrong, wparams = tiny(h=4, width=0, size=8, n_layers=1)
  with pytest.raises(ValueError, match='tokenizer'):
    sar.sample(wrong, wparams, vq_model, vq_params, labels(2), jax.random.key(0))
