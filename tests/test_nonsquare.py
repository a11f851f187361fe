"""Rectangular (H x W) images in every image model: DiT, the multi-scale VQ-VAE, VAR and HART.

Oracles: patchify's raster order and the sin-cos table's row/column halves; block averaging and
pixel repetition for the rectangular area / nearest resamplers; split(flatten) = identity and
f_hat(tokens) = the quantiser's f_hat; the scale-by-scale KV-cached VAR = its full forward on
the rectangular pyramid. Square models (image_width 0) equal their explicit-width twins, and
their seeded outputs equal figures recorded from the square-only code before the change.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from paradigms import hybrid, image_diffusion as idf, next_scale, vqvae
from paradigms.nn.dit import DiT, DiTConfig, patchify, sincos_2d, unpatchify
from sample import hybrid as sample_hybrid, image_diffusion as sample_diffusion
from sample import next_scale as sample_next_scale

H, W = 16, 32
LAB = jnp.array([[1, 2, 0], [3, 0, 0]], jnp.int32)


def _perturb(params):
  """Every parameter moved off its init (zero-init output layers would hide the input)."""
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape),
                      params)


def _dit(width=0):
  cfg = DiTConfig(image_size=H, image_width=width, patch_size=4, d_model=32, n_layers=2, n_heads=2,
                  freq_dim=32, label_len=3, label_vocab=5)
  model = DiT(cfg)
  x = jax.random.normal(jax.random.key(0), (2, H, width or H, 3))
  params = nn.meta.unbox(model.init(jax.random.key(1), x, jnp.zeros(2), LAB))['params']
  return model, params, x


# --- DiT --------------------------------------------------------------------------------------

def test_dit_patch_grid_and_positions():
  x = jax.random.normal(jax.random.key(0), (2, H, W, 3))
  tokens = patchify(x, 4)  # [B, 4 * 8, 48]
  assert tokens.shape == (2, 32, 48)
  np.testing.assert_array_equal(tokens[1, 1 * 8 + 5], x[1, 4:8, 20:24].reshape(-1))  # (1, 5)
  np.testing.assert_array_equal(unpatchify(tokens, 4, 3, (4, 8)), x)
  with pytest.raises(ValueError, match='4x4 grid'):
    unpatchify(tokens, 4, 3, 4)
  d = 16
  emb = sincos_2d((4, 8), d)  # [32, 16]
  assert emb.shape == (32, d)
  grid = emb.reshape(4, 8, d)
  # first half from the row only, second half from the column only
  np.testing.assert_array_equal(grid[:, :1, :d // 2].repeat(8, 1), grid[:, :, :d // 2])
  np.testing.assert_array_equal(grid[:1, :, d // 2:].repeat(4, 0), grid[:, :, d // 2:])
  omega = 1.0 / 10_000 ** (np.arange(d // 4) / (d / 4))
  np.testing.assert_allclose(grid[2, 7], np.concatenate(
      [np.sin(2 * omega), np.cos(2 * omega), np.sin(7 * omega), np.cos(7 * omega)]), atol=1e-6)
  # a square grid is the left part of a wide one, and an int means square
  np.testing.assert_array_equal(grid[:, :4].reshape(16, d), sincos_2d(4, d))


def test_dit_rectangular_forward_loss_sampler():
  model, params, x = _dit(W)
  assert model.cfg.grid == (4, 8) and model.cfg.num_patches == 32
  assert sum(a.size for a in jax.tree.leaves(params)) == model.cfg.num_params()
  params = _perturb(params)
  out = model.apply({'params': params}, x, jnp.array([0.3, -0.2]), LAB)
  assert out.shape == (2, H, W, 3) and bool(jnp.all(jnp.isfinite(out)))
  # the output at a patch depends on that patch's input (the unpatchify layout is right)
  x2 = x.at[:, :4, 28:].add(1.0)  # patch (0, 7)
  diff = jnp.abs(model.apply({'params': params}, x2, jnp.array([0.3, -0.2]), LAB) - out)
  assert float(diff[:, :4, 28:].mean()) > 10 * float(diff[:, 12:, :4].mean())
  loss, metrics = idf.loss(params, {'image': x, 'label': LAB}, jax.random.key(2), model=model)
  assert loss.shape == () and np.isfinite(float(loss))
  data = ml_collections.ConfigDict({'image_size': H, 'image_width': W, 'channels': 3,
                                    'max_chars': 3})
  assert idf.example_batch(5, data, model.cfg)['image'].shape == (5, H, W, 3)
  den = idf.Denoiser(model, 'flow')
  s = sample_diffusion.sample('euler', den, params, sample_diffusion.flow_sigmas(3), (2, H, W, 3),
                              LAB, jax.random.key(3))
  assert s.x.shape == (2, H, W, 3) and int(s.nfe) == 3
  with pytest.raises(ValueError, match=r'\[B, 16, 32, 3\]'):
    model.apply({'params': params}, x[:, :, :H], jnp.zeros(2), LAB)
  with pytest.raises(ValueError, match='multiples of model.patch_size'):
    DiTConfig(image_size=16, image_width=30, patch_size=4)


def test_dit_square_width_is_the_square_model():
  m0, p0, x = _dit(0)
  m1, p1, _ = _dit(H)
  assert jax.tree.map(np.shape, p0) == jax.tree.map(np.shape, p1)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_array_equal(a, b)
  p0 = _perturb(p0)
  np.testing.assert_array_equal(m0.apply({'params': p0}, x, jnp.ones(2), LAB),
                                m1.apply({'params': p0}, x, jnp.ones(2), LAB))


# --- VQ-VAE -----------------------------------------------------------------------------------

def _vq(width=W):
  cfg = vqvae.VQConfig(image_size=H, image_width=width, base_channels=8, channel_mult=(1, 2, 2),
                       n_res_blocks=0, norm_groups=8, latent_dim=8, codebook_size=32,
                       scales=(1, 2, 4), n_phi=3)
  model = vqvae.build(cfg)
  x = jnp.tanh(jax.random.normal(jax.random.key(4), (2, H, width or H, 3)))
  params = _perturb(model.init(jax.random.key(5), x)['params'])
  return model, params, x


def test_rectangular_resampling_oracles():
  x = np.random.default_rng(0).normal(size=(1, 4, 8, 2)).astype(np.float32)
  block = x.reshape(1, 2, 2, 2, 4, 2).mean(axis=(2, 4))  # 2x2 blocks -> [1, 2, 2, 2]
  np.testing.assert_allclose(vqvae.area_down(jnp.asarray(x), (2, 2)), block, rtol=1e-5,
                             atol=1e-6)
  rows = x.reshape(1, 2, 2, 8, 2).mean(axis=2)  # [1, 2, 8, 2]
  np.testing.assert_allclose(vqvae.area_down(jnp.asarray(x), (2, 8)), rows, rtol=1e-5, atol=1e-6)
  z = jnp.asarray(x[:, :2, :4])
  want = np.repeat(np.repeat(x[:, :2, :4], 2, axis=1), 2, axis=2)
  np.testing.assert_array_equal(vqvae.upsample(z, (4, 8), 'nearest'), want)
  assert vqvae.upsample(z, (2, 4)) is z  # same size: the identity


def test_vqvae_rectangular_grid_and_round_trip():
  model, params, x = _vq()
  c = model.cfg
  assert c.latent_shape == (4, 8) and c.scale_shapes == ((1, 2), (2, 4), (4, 8))
  assert c.num_tokens == 2 + 8 + 32
  f = vqvae.encode(model, params, x)
  assert f.shape == (2, 4, 8, 8)
  assert vqvae.decode(model, params, f).shape == (2, H, W, 3)
  indices, f_hat, aux = vqvae.quantize(model, params, f)
  assert [i.shape for i in indices] == [(2, 1, 2), (2, 2, 4), (2, 4, 8)]
  assert aux['residuals'].shape == (2, c.num_tokens, 8)
  tokens = vqvae.flatten_indices(indices)
  assert tokens.shape == (2, 42)
  for a, b in zip(vqvae.split_indices(tokens, c.scale_shapes), indices):
    np.testing.assert_array_equal(a, b)
  # VAR Algorithm 2 from the tokens gives back the quantiser's f_hat (Algorithm 1) exactly
  np.testing.assert_array_equal(vqvae.indices_to_fhat(model, params, indices), f_hat)
  np.testing.assert_array_equal(vqvae.decode_tokens(model, params, tokens),
                                vqvae.decode(model, params, f_hat))
  # teacher-forcing inputs == the incremental add_scale chain
  inputs = vqvae.next_scale_inputs(model, params, indices)
  assert inputs.shape == (2, 42 - 2, 8)
  fh, nxt = vqvae.add_scale(model, params, None, indices[0].reshape(2, -1), 0)
  np.testing.assert_allclose(inputs[:, :8], nxt, atol=1e-6)
  loss, metrics = vqvae.loss(params, {'image': x, 'label': LAB}, jax.random.key(6), model=model)
  assert np.isfinite(float(loss)) and metrics['_features'].shape[-1] == 8
  with pytest.raises(ValueError, match='multiple of model.image_size'):
    vqvae.VQConfig(image_size=16, image_width=24, scales=(1, 2, 4))


# --- VAR and HART -----------------------------------------------------------------------------

VAR_KW = dict(scales=(1, 2, 4), codebook_size=32, latent_dim=8, label_len=3, label_vocab=5,
              d_model=32, n_layers=2, n_heads=2)
HEAD_KW = dict(head_width=32, head_depth=1, head_freq_dim=32)


def _var_batch(vm, vp, x):
  tokens, f, f_hat = vqvae.residual(vm, vp, x)
  indices = vqvae.split_indices(tokens, vm.cfg.scale_shapes)
  return {'tokens': tokens, 'inputs': vqvae.next_scale_inputs(vm, vp, indices), 'label': LAB,
          'residual': (f - f_hat).reshape(f.shape[0], -1, f.shape[-1])}


def test_var_rectangular_pyramid_cache_and_sampler():
  vm, vp, x = _vq()
  cfg = next_scale.VARConfig(image_size=H, image_width=W, **VAR_KW)
  assert cfg.scale_shapes == vm.cfg.scale_shapes and cfg.num_tokens == vm.cfg.num_tokens == 42
  assert cfg.offsets == (0, 2, 10, 42) and list(cfg.level_ids()[:3]) == [0, 0, 1]
  model = next_scale.build(cfg)
  batch = _var_batch(vm, vp, x)
  params = _perturb(nn.meta.unbox(next_scale.init(model, jax.random.key(7), batch))['params'])
  loss, metrics = next_scale.loss(params, batch, jax.random.key(8), model=model)
  assert np.isfinite(float(loss)) and {'acc_1x2', 'acc_2x4', 'acc_4x8'} <= set(metrics)
  # scale by scale against the KV cache == the full teacher-forced forward
  full, _ = model.apply({'params': params}, LAB, batch['inputs'])
  cache, off, n0 = model.init_cache(2), cfg.offsets, cfg.first_len
  for k in range(cfg.num_scales):
    inp = None if k == 0 else batch['inputs'][:, off[k] - n0:off[k + 1] - n0]
    logits, cache = model.apply({'params': params}, LAB, inp, scale=k, cache=cache)
    np.testing.assert_allclose(logits, full[:, off[k]:off[k + 1]], atol=2e-5)
  out = sample_next_scale.sample(model, params, vm, vp, LAB, jax.random.key(9), cfg=2.0, top_k=5)
  assert out.images.shape == (2, H, W, 3) and out.tokens.shape == (2, 42)
  assert out.f_hat.shape == (2, 4, 8, 8) and int(out.nfe) == 3
  np.testing.assert_allclose(out.images, vqvae.decode_tokens(vm, vp, out.tokens), atol=1e-5)
  spec = {'scales': (1, 2, 4), 'codebook_size': 32, 'latent_dim': 8, 'image_size': H}
  next_scale.check_tokenizer(cfg, {**spec, 'image_width': W})
  with pytest.raises(ValueError, match='data.image_width=0'):
    next_scale.check_tokenizer(cfg, {**spec, 'image_width': 0})
  with pytest.raises(ValueError, match='multiple of model.image_size'):
    next_scale.VARConfig(image_size=16, image_width=20)


def test_hart_rectangular_loss_and_sampler():
  vm, vp, x = _vq()
  cfg = hybrid.HARTConfig(image_size=H, image_width=W, **VAR_KW, **HEAD_KW)
  assert cfg.residual_len == 32
  model = hybrid.build(cfg)
  batch = _var_batch(vm, vp, x)
  params = _perturb(nn.meta.unbox(hybrid.init(model, jax.random.key(10), batch))['params'])
  loss, _ = hybrid.loss(params, batch, jax.random.key(11), model=model)
  assert np.isfinite(float(loss))
  out = sample_hybrid.sample(model, params, vm, vp, LAB, jax.random.key(12), cfg=2.0,
                             head_steps=2)
  assert out.images.shape == (2, H, W, 3) and out.residual.shape == (2, 4, 8, 8)
  np.testing.assert_allclose(out.images, vqvae.decode(vm, vp, out.f_hat + out.residual),
                             atol=1e-5)


def test_configs_follow_data_image_width():
  from train.config import from_file, model_config
  for name, want in (('dit_glyphs', (2, 4)), ('vqvae_glyphs', 2 + 8 + 32)):
    c = from_file(f'configs/{name}.py:tiny')
    assert c.data.image_width == 0 and c.model.image_width == 0
    c.data.image_width = 32  # the tiny presets are 16 px high
    m = model_config(c)
    assert (m.grid if name == 'dit_glyphs' else m.num_tokens) == want
  c = from_file('configs/hart_glyphs.py:tiny')
  c.data.image_width = 32
  assert model_config(c).num_tokens == 42 and model_config(c).residual_len == 32


# --- Square: the code before rectangles -------------------------------------------------------

# Seeded figures of the square models, recorded from the square-only code before image_width
# existed (same inits, perturbations and keys as here): sum |.| of each output. HART's sampler
# runs VAR's (sample/next_scale.py) for its tokens, so 'hart_images' covers both samplers.
SQUARE_GOLDEN = {'dit_out': 365.8514404296875, 'vq_xhat': 844.87744140625,
                 'var_logits': 338.54150390625, 'hart_images': 841.2215576171875}


def test_square_outputs_equal_the_old_code():
  model, params, x = _dit(0)
  out = {'dit_out': model.apply({'params': _perturb(params)}, x, jnp.array([0.3, -0.2]), LAB)}
  vm, vp, xi = _vq(0)
  out['vq_xhat'] = vm.apply({'params': vp}, xi)[0]
  cfg = next_scale.VARConfig(**VAR_KW)
  am = next_scale.build(cfg)
  batch = _var_batch(vm, vp, xi)
  ap = _perturb(nn.meta.unbox(next_scale.init(am, jax.random.key(7), batch))['params'])
  out['var_logits'] = am.apply({'params': ap}, LAB, batch['inputs'])[0]
  hm = hybrid.build(hybrid.HARTConfig(**VAR_KW, **HEAD_KW))
  hp = _perturb(nn.meta.unbox(hybrid.init(hm, jax.random.key(10), batch))['params'])
  out['hart_images'] = sample_hybrid.sample(hm, hp, vm, vp, LAB, jax.random.key(12), cfg=2.0,
                                            head_steps=2).images
  got = {k: float(jnp.abs(v).sum()) for k, v in out.items()}
  for k, v in SQUARE_GOLDEN.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, err_msg=k)
