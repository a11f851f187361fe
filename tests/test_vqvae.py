"""VAR's multi-scale residual VQ-VAE: resampling oracles, exact self-encoding of codebook
vectors, the residual scheme's error guarantee, teacher-forcing inputs == the incremental loop,
the straight-through gradient structure, dead-code restarts, and the tiny config through the CLI
(with a resume)."""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import vqvae as vq
from tests.conftest import run_python

# No downsampling (latent side = image_size) and no ResBlocks but the middle one: quick to compile.
TINY = dict(image_size=4, channels=3, base_channels=4, channel_mult=(1,), n_res_blocks=0,
            norm_groups=4, latent_dim=6, codebook_size=24)


RNG = np.random.default_rng


@functools.lru_cache(maxsize=None)
def _init(cfg: vq.VQConfig, full: bool) -> dict:
  """Numpy params with the exact tree of `vq.init` (all of it, or only the quantiser's when not
  `full`): LeCun-normal kernels, unit norm scales, zero biases. (Compiling Flax's random init
  costs seconds per model on CPU; the CLI test runs the real one.)"""
  model = vq.build(cfg)
  if full:
    args, method = (np.zeros((1, cfg.image_size, cfg.image_size, cfg.channels)),), None
  else:
    args, method = (np.zeros((1, cfg.latent_side, cfg.latent_side, cfg.latent_dim)),), 'quantize'
  shapes = jax.eval_shape(functools.partial(model.init, method=method), jax.random.key(0),
                          *args)['params']
  rng = RNG(0)

  def fill(path, a):
    name = path[-1].key
    if name in ('scale', 'bias'):
      return np.full(a.shape, float(name == 'scale'), np.float32)
    return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _model(full: bool = False, **kw):
  """(cfg, model, params) of TINY (+ kw), with a unit-scale random codebook (numpy)."""
  cfg = vq.VQConfig(**{**TINY, **kw})
  params = dict(_init(cfg, full))
  params['codebook'] = RNG(1).normal(size=(cfg.codebook_size, cfg.latent_dim)).astype(np.float32)
  return cfg, vq.build(cfg), params


@functools.partial(jax.jit, static_argnums=0)
def _quantize(model, params, f):
  return vq.quantize(model, params, f)


@functools.partial(jax.jit, static_argnums=0)
def _fhat(model, params, indices):
  return vq.indices_to_fhat(model, params, indices)


def _area_matrix(n: int, s: int) -> np.ndarray:
  """Exact area weights [s, n]: cell i covers [i n/s, (i+1) n/s), pixel j covers [j, j+1)."""
  A = np.zeros((s, n))
  for i in range(s):
    lo, hi = i * n / s, (i + 1) * n / s
    for j in range(n):
      A[i, j] = max(0.0, min(hi, j + 1) - max(lo, j)) * s / n
  return A


def _torch_bicubic_matrix(n: int, h: int, a: float = -0.75) -> np.ndarray:
  """PyTorch's upsample_bicubic2d (align_corners=False) as weights [h, n]: source coordinate
  (i + 0.5) n / h - 0.5, Keys kernel with a = -0.75, taps clamped to the edge."""
  def w(t):
    t = abs(t)
    if t <= 1:
      return ((a + 2) * t - (a + 3)) * t * t + 1
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a if t < 2 else 0.0
  M = np.zeros((h, n))
  for i in range(h):
    src = (i + 0.5) * n / h - 0.5
    x0 = math.floor(src)
    for tap in range(x0 - 1, x0 + 3):
      M[i, min(max(tap, 0), n - 1)] += w(src - tap)
  return M


def test_area_downsampling_oracles():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  block = x.reshape(1, 2, 2, 2, 2, 1).mean(axis=(2, 4))  # 2x2 block means
  np.testing.assert_allclose(vq.area_down(jnp.asarray(x), 2), block, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vq.area_down(jnp.asarray(x), 2))[0, :, :, 0],
                             [[2.5, 4.5], [10.5, 12.5]], rtol=1e-6)
  const = jnp.full((2, 8, 8, 3), 0.7)
  for s in (1, 3, 5, 6, 8):
    np.testing.assert_allclose(vq.area_down(const, s), 0.7, rtol=1e-6)
  r = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  for s in (3, 5, 6):  # non-divisible: exact fractional-area weights
    A = _area_matrix(8, s)
    want = np.einsum('ih,bhwc,jw->bijc', A, r, A)
    np.testing.assert_allclose(vq.area_down(jnp.asarray(r), s), want, atol=2e-6)


def test_upsampling_is_pytorch_bicubic_and_keeps_constants():
  z = np.random.default_rng(1).normal(size=(2, 3, 3, 4)).astype(np.float32)
  M = _torch_bicubic_matrix(3, 8)
  want = np.einsum('ih,bhwc,jw->bijc', M, z, M)
  np.testing.assert_allclose(vq.upsample(jnp.asarray(z), 8, 'bicubic'), want, atol=2e-6)
  for method in vq.UPSAMPLE:
    np.testing.assert_allclose(vq.upsample(jnp.full((1, 2, 2, 1), -0.3), 8, method), -0.3,
                               rtol=1e-6)
  assert vq.upsample(z, 3) is z  # s = h: the identity


def test_config_validation_and_var_phi_sharing():
  cfg = vq.VQConfig()
  assert cfg.latent_side == 8 and cfg.num_tokens == 1 + 4 + 9 + 16 + 36 + 64
  # VAR's 4 partially shared phis over 6 scales: ticks 1/12, 13/36, 23/36, 11/12.
  assert [cfg.phi_index(k) for k in range(6)] == [0, 0, 1, 2, 3, 3]
  assert vq.VQConfig(n_phi=0).num_phi == 6 and vq.VQConfig(phi_ratio=0.0).num_phi == 0
  assert vq.VQConfig(scales=[1, 2, 8], channel_mult=[1, 2, 2], n_phi=3).scales == (1, 2, 8)
  with pytest.raises(ValueError, match='model.scales'):
    vq.VQConfig(scales=(1, 2, 4))  # does not end at the latent side 8
  with pytest.raises(ValueError, match='model.scales'):
    vq.VQConfig(scales=(1, 3, 2, 8))
  with pytest.raises(ValueError, match='model.n_phi'):
    vq.VQConfig(scales=(4, 8), n_phi=4)
  with pytest.raises(ValueError, match='model.upsample'):
    vq.VQConfig(upsample='area')


@pytest.mark.parametrize('upsample', ['bicubic', 'nearest'])
def test_codebook_vectors_encode_to_themselves_single_scale(upsample):
  cfg, model, params = _model(scales=(4,), phi_ratio=0.0, upsample=upsample)
  idx = RNG(2).integers(0, cfg.codebook_size, (3, 4, 4))
  f = params['codebook'][idx]  # [3, 4, 4, Cz]
  indices, f_hat, _ = _quantize(model, params, f)
  np.testing.assert_array_equal(indices[0], idx)
  np.testing.assert_array_equal(f_hat, f)


def test_codebook_vectors_encode_to_themselves_multi_scale():
  """f = e[a] + up(u-pattern) + w-pattern, where the 2x2 map of +-u averages to 0 over the grid
  and every 2x2 block of the +-w map averages to 0: exact area means recover each scale's code
  (nearest upsampling, phi = identity), and f_hat == f."""
  cfg, model, params = _model(scales=(1, 2, 4), phi_ratio=0.0, upsample='nearest')
  E = params['codebook']
  E[6], E[8] = -E[5], -E[7]  # u = e5, w = e7 and their negatives
  a0 = np.array([[[3]], [[11]]])  # [B=2, 1, 1]
  a1 = np.array([[[5, 6], [6, 5]], [[6, 5], [5, 6]]])  # [2, 2, 2], each sums to 0 in e
  a2 = np.tile(np.array([[7, 8], [8, 7]]), (2, 2))[None].repeat(2, 0)  # [2, 4, 4]
  a2[1] = 15 - a2[1]  # the second image: [[8, 7], [7, 8]] blocks
  up = lambda a: np.repeat(np.repeat(E[a], 4 // a.shape[1], 1), 4 // a.shape[1], 2)
  f = up(a0) + up(a1) + E[a2]  # [2, 4, 4, Cz]
  indices, f_hat, _ = _quantize(model, params, f)
  for got, want in zip(indices, (a0, a1, a2)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(f_hat, f, atol=1e-5)


def test_quantisation_error_never_grows_with_scales():
  """With nearest upsampling, s_k | h, phi = identity and a zero code, scale k can only lower
  ||f - f_hat||^2 in each s_k-block: ||r - up(c)||^2 = ||r - mean||^2 + n ||mean - c||^2 and
  c = 0 is a candidate. So the error per image is non-increasing in k (a wrong residual, e.g.
  quantising f instead of f - f_hat, breaks it)."""
  cfg, model, params = _model(image_size=8, scales=(1, 2, 4, 8), phi_ratio=0.0,
                              upsample='nearest', codebook_size=64)
  params['codebook'][0] = 0.0
  coarse = RNG(4).normal(size=(4, 2, 2, cfg.latent_dim)) * 2  # plus a coarse component
  f = RNG(3).normal(size=(4, 8, 8, cfg.latent_dim)) + coarse.repeat(4, 1).repeat(4, 2)
  f = f.astype(np.float32)
  indices, _, _ = _quantize(model, params, f)
  errs = [np.sum(f ** 2, axis=(1, 2, 3))]  # [B] per scale, from f_hat_0 = 0
  errs += [np.sum((f - np.asarray(_fhat(model, params, indices[:k + 1]))) ** 2, axis=(1, 2, 3))
           for k in range(4)]
  errs = np.stack(errs)
  assert np.all(np.diff(errs, axis=0) <= 1e-4 * errs[:-1]), errs
  assert np.all(errs[-1] < 0.8 * errs[0]), errs  # and it does fall


def test_fhat_from_indices_and_token_round_trip():
  cfg, model, params = _model(full=True, scales=(1, 2, 3, 4))  # bicubic, 4 partially shared phis
  x = RNG(5).uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
  tokens, f, f_hat = jax.jit(lambda p, x: vq.residual(model, p, x))(params, x)
  indices, f_hat2, aux = _quantize(model, params, f)
  np.testing.assert_allclose(f_hat2, f_hat, atol=1e-6)
  assert [i.shape for i in indices] == [(3, s, s) for s in cfg.scales]
  assert aux['counts'].shape == (4, cfg.codebook_size)
  np.testing.assert_array_equal(aux['counts'].sum(axis=1), [3 * s * s for s in cfg.scales])
  assert aux['residuals'].shape == (3, cfg.num_tokens, cfg.latent_dim)
  np.testing.assert_allclose(_fhat(model, params, indices), f_hat, atol=1e-6)
  assert tokens.shape == (3, cfg.num_tokens) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, vq.flatten_indices(indices))
  np.testing.assert_array_equal(tokens[:, 1:5], indices[1].reshape(3, 4))  # scale-major raster
  for a, b in zip(vq.split_indices(tokens, cfg.scales), indices):
    np.testing.assert_array_equal(a, b)
  x_hat, _ = jax.jit(model.apply)({'params': params}, x)  # D(f_hat)
  decoded = jax.jit(lambda p, t: vq.decode_tokens(model, p, t))(params, tokens)
  np.testing.assert_allclose(decoded, x_hat, atol=1e-5)


def test_teacher_forcing_inputs_equal_the_incremental_loop():
  cfg, model, params = _model(full=True, scales=(1, 2, 3, 4))
  B, Cz = 3, cfg.latent_dim
  indices = tuple(RNG(10 + k).integers(0, cfg.codebook_size, (B, s, s)).astype(np.int32)
                  for k, s in enumerate(cfg.scales))
  full = jax.jit(lambda p, i: vq.next_scale_inputs(model, p, i))(params, indices)
  assert full.shape == (B, cfg.num_tokens - 1, Cz)

  @jax.jit
  def loop(p, i):
    f_hat, outs = None, []
    for k, s in enumerate(cfg.scales):
      f_hat, nxt = vq.add_scale(model, p, f_hat, i[k].reshape(B, s * s), k)
      assert (nxt is None) == (k == len(cfg.scales) - 1)
      outs += [] if nxt is None else [nxt]
    return jnp.concatenate(outs, axis=1), f_hat

  inc, f_hat = loop(params, indices)
  np.testing.assert_allclose(inc, full, atol=1e-6, rtol=0)
  np.testing.assert_allclose(f_hat, _fhat(model, params, indices), atol=1e-6)
  # Independently: block k is the exact-area mean of the first k scales' f_hat.
  start = 0
  for k, s in enumerate(cfg.scales[1:], start=1):
    prefix = np.asarray(_fhat(model, params, indices[:k]))
    A = _area_matrix(4, s)
    want = np.einsum('ih,bhwc,jw->bijc', A, prefix, A).reshape(B, s * s, Cz)
    np.testing.assert_allclose(full[:, start:start + s * s], want, atol=2e-6)
    start += s * s


def test_straight_through_gradients():
  """The decoder's gradient reaches the encoder through f_st; the codebook and phi learn only
  from the VQ terms (vq_weight = 0 leaves them without gradient)."""
  cfg, model, params = _model(full=True, scales=(1, 2, 4), n_phi=3)
  batch = {'image': RNG(6).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)}
  norm = lambda t: sum(float(np.sum(np.asarray(a) ** 2)) for a in jax.tree.leaves(t))
  grad = jax.jit(jax.grad(lambda p, w: vq.loss(p, batch, jax.random.key(0), model=model,
                                                  vq_weight=w, num_features=7), has_aux=True),
                 static_argnums=1)
  for w in (0.0, 1.0):
    g, m = grad(params, w)
    assert norm(g['encoder']) > 0 and norm(g['decoder']) > 0
    assert (norm(g['codebook']) > 0) == (w > 0) and (norm(g['phis_0']) > 0) == (w > 0)
  assert m['_counts'].shape == (cfg.codebook_size,) and m['_features'].shape == (7, 6)
  assert float(m['_counts'].sum()) == 2 * cfg.num_tokens and 0 < float(m['usage']) <= 1


def test_dead_codes_are_restarted_from_features():
  cfg, model, params = _model(scales=(1, 2, 4), n_phi=3)
  V, Cz = cfg.codebook_size, cfg.latent_dim
  dead = np.zeros(V, bool)
  dead[[2, 5, 17]] = True
  extra = vq.init_extra(model, params)
  np.testing.assert_allclose(extra['usage'].sum(), 1.0, rtol=1e-6)
  extra = {'usage': np.where(dead, 1e-6 / V, 1.0 / V).astype(np.float32)}
  counts = np.where(dead, 0.0, 5.0).astype(np.float32)
  feats = (RNG(7).normal(size=(9, Cz)) * 3).astype(np.float32)
  opts = dict(usage_decay=0.9, dead_threshold=0.05, reinit_noise=1e-3)
  update = jax.jit(lambda p, x, a, r: vq.after_update(p, x, a, r, model=model, **opts))
  new_p, new_x, m = update(params, extra, {'_counts': counts, '_features': feats},
                           jax.random.key(8))
  assert float(m['dead_codes']) == 3
  old, new = np.asarray(params['codebook']), np.asarray(new_p['codebook'])
  np.testing.assert_array_equal(new[~dead], old[~dead])  # live codes untouched
  rms = float(np.sqrt(np.mean(feats ** 2)))
  for v in np.flatnonzero(dead):  # each restarted code is a feature row plus tiny noise
    gap = np.abs(np.asarray(feats) - new[v]).max(axis=1)
    assert gap.min() < 5e-3 * rms and np.abs(new[v] - old[v]).max() > 0.1
  usage = np.asarray(new_x['usage'])
  live_usage = 0.9 / V + 0.1 * 5.0 / (5.0 * (V - 3))
  np.testing.assert_allclose(usage[~dead], live_usage, rtol=1e-5)
  expected_reset = (live_usage * (V - 3) + 3 * 0.9e-6 / V) / V  # the mean share after the EMA
  np.testing.assert_allclose(usage[dead], expected_reset, rtol=1e-5)
  p2, _, m2 = update(params, {'usage': np.full(V, 1.0 / V, np.float32)},  # no dead codes
                     {'_counts': np.ones(V, np.float32), '_features': feats}, jax.random.key(9))
  np.testing.assert_array_equal(p2['codebook'], params['codebook'])
  assert float(m2['dead_codes']) == 0


def test_tiny_config_trains_and_resumes_through_the_cli(tmp_path):
  work = str(tmp_path / 'run')
  args = ['-m', 'train', '--config', 'configs/vqvae_glyphs.py:tiny', '--workdir', work,
          f'--config.data.cache_dir={tmp_path / "cache"}']
  run_python(args + ['--config.train.stop_at=10'], timeout=900)
  proc = run_python(args, timeout=900)
  assert 'resumed from' in proc.stdout
  rows = [json.loads(line) for line in open(os.path.join(work, 'metrics.jsonl'))]
  train = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in train] == [10, 20]
  assert all(np.isfinite(r['loss']) and 0 < r['usage'] <= 1 and 'dead_codes' in r
             for r in train)
  evals = [r for r in rows if 'eval_mse' in r]
  assert [r['step'] for r in evals] == [10, 20] and all(r['eval_mse'] > 0 for r in evals)
  assert 'eval_usage' in evals[-1] and 'eval_psnr' in evals[-1]
