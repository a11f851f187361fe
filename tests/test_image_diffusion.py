"""Image diffusion: EDM coefficients, the eps/v/x0/EDM/flow adapters, DiT, EMA, shortcut rows,
CFG on the real denoiser, and the tiny config through the train and sample CLIs."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import image_diffusion as idf
from paradigms.nn.dit import DiT, DiTConfig, patchify, sincos_2d, unpatchify
from tests.conftest import ROOT, run_python

SIGMAS = np.array([0.002, 0.1, 0.5, 1.0, 3.0, 80.0], np.float32)


def test_edm_coefficients_closed_form():
  sd = 0.5
  c_skip, c_out, c_in, c_noise = map(np.asarray, idf.edm_precond(jnp.asarray(SIGMAS), sd))
  s = SIGMAS.astype(np.float64)
  np.testing.assert_allclose(c_skip, sd ** 2 / (s ** 2 + sd ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_out, s * sd / np.sqrt(s ** 2 + sd ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(s ** 2 + sd ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-6, atol=1e-7)
  # EDM eq. 8: lambda(sigma) c_out(sigma)^2 = 1, so ||F - F*||^2 is exactly the weighted loss.
  lam = (s ** 2 + sd ** 2) / (s * sd) ** 2
  np.testing.assert_allclose(lam * c_out.astype(np.float64) ** 2, 1.0, rtol=1e-5)


@pytest.mark.parametrize('objective', idf.OBJECTIVES)
def test_adapters_round_trip(objective):
  """F = target(x0, n, sigma) makes the denoiser return x0 exactly, at every noise level, and the
  network input is the objective's own state (VP: sqrt(abar) x0 + sqrt(1 - abar) n; flow:
  (1 - t) x0 + t n)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.uniform(k1, (len(SIGMAS), 4, 4, 3), minval=-1, maxval=1)
  n = jax.random.normal(k2, x0.shape)
  sigma = jnp.asarray(SIGMAS)
  x = x0 + sigma[:, None, None, None] * n
  F = idf.target(objective, x0, n, sigma)
  err = jnp.abs(idf.denoise(objective, F, x, sigma) - x0).max(axis=(1, 2, 3))  # [len(SIGMAS)]
  assert np.all(err <= 2e-5 * (1 + sigma)), err  # float32 rounding of x = x0 + sigma n only
  x_in, _ = idf.net_input(objective, x, sigma)
  s = sigma[:, None, None, None]
  if objective == 'flow':
    t = s / (1 + s)
    np.testing.assert_allclose(x_in, (1 - t) * x0 + t * n, atol=1e-5)
  elif objective != 'edm':
    abar = 1 / (1 + s ** 2)  # sqrt(1 - abar) = sigma sqrt(abar), without float32 cancellation
    np.testing.assert_allclose(x_in, jnp.sqrt(abar) * x0 + s * jnp.sqrt(abar) * n, atol=1e-5)


def test_vp_schedules_match_ddpm():
  abar = idf.vp_alpha_bar('linear', 1000)
  np.testing.assert_allclose(abar[0], 1 - 1e-4)
  assert abar[-1] == pytest.approx(4.04e-5, rel=0.02)  # DDPM's linear schedule ends near 4e-5
  cos = idf.vp_alpha_bar('cosine', 1000)
  assert np.all(np.diff(cos) < 0) and cos[-1] < 1e-6
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(cos[499], f(500) / f(0), rtol=1e-9)


def test_dit_shapes_params_and_patchify():
  cfg = DiTConfig(image_size=16, patch_size=4, d_model=32, n_layers=2, n_heads=2, freq_dim=32,
                  label_len=3, label_vocab=5, step_conditioning=True, max_step_index=3)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  np.testing.assert_array_equal(unpatchify(patchify(x, 4), 4, 3), x)
  # patch 0 is the top-left 4x4 block in raster order
  np.testing.assert_array_equal(patchify(x, 4)[0, 0], x[0, :4, :4].reshape(-1))
  model = DiT(cfg)
  v = model.init(jax.random.key(1), x, jnp.zeros(2), jnp.zeros((2, 3), jnp.int32),
                 jnp.zeros(2, jnp.int32))
  params = nn.meta.unbox(v)['params']
  assert sum(a.size for a in jax.tree.leaves(params)) == cfg.num_params()
  # adaLN-Zero and the zero-initialised output layer: the initial network output is exactly 0
  out = model.apply({'params': params}, x, jnp.ones(2), jnp.ones((2, 3), jnp.int32), jnp.ones(2, jnp.int32))
  assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0
  emb = sincos_2d(4, 8)
  assert emb.shape == (16, 8) and np.allclose(emb[0], [0, 0, 1, 1, 0, 0, 1, 1])


def _tiny_model(**kw):
  cfg = DiTConfig(image_size=8, patch_size=4, d_model=16, n_layers=1, n_heads=2, freq_dim=16,
                  label_len=2, label_vocab=4, **kw)
  model = DiT(cfg)
  x = jnp.zeros((2, 8, 8, 3))
  step = jnp.zeros(2, jnp.int32) if cfg.step_conditioning else None
  params = nn.meta.unbox(model.init(jax.random.key(0), x, jnp.zeros(2), jnp.zeros((2, 2), jnp.int32), step))['params']
  # make the output layer non-zero so the network output depends on its inputs
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  return model, params


def test_cfg_weight_one_is_conditional_on_the_real_denoiser():
  from sample import image_diffusion as sd
  model, params = _tiny_model()
  D = idf.Denoiser(model, 'edm')
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
  sigma = jnp.array([0.7, 2.0])
  label = jnp.array([[1, 2], [3, 0]])
  np.testing.assert_allclose(sd.cfg_denoiser(D, 1.0, 0)(params, x, sigma, label),
                             D(params, x, sigma, label), atol=1e-6)
  guided = sd.cfg_denoiser(D, 3.0, 0)(params, x, sigma, label)
  d_c, d_u = D(params, x, sigma, label), D(params, x, sigma, jnp.zeros_like(label))
  np.testing.assert_allclose(guided, d_u + 3.0 * (d_c - d_u), atol=1e-5)


def test_shortcut_rows_and_loss():
  """Shortcut bootstrap rows get step index k < log2 M and flow times on their grid; the rest
  are flow matching at the finest step. The loss is finite and has gradients."""
  opts = idf.Options(objective='flow', shortcut_fraction=0.5, shortcut_steps=8)
  model, params = _tiny_model(step_conditioning=True, max_step_index=3)
  batch = {'image': jax.random.uniform(jax.random.key(1), (8, 8, 8, 3), minval=-1, maxval=1),
           'label': jnp.ones((8, 2), jnp.int32)}
  loss, grads = jax.value_and_grad(
      lambda p: idf.loss(p, batch, jax.random.key(2), model=model, **vars(opts))[0])(params)
  assert np.isfinite(float(loss)) and float(optax_norm(grads)) > 0
  with pytest.raises(ValueError, match='step_conditioning'):
    idf.loss(params, batch, jax.random.key(2), model=_tiny_model()[0], **vars(opts))
  with pytest.raises(ValueError, match="objective='flow'"):
    idf.Options(objective='edm', shortcut_fraction=0.25)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree)))


def test_ema_update_matches_formula():
  """EDM half-life EMA: e_1 = beta e_0 + (1 - beta) theta_1 with beta = 0.5 ** (B / halflife),
  and with EDM's ramp-up the half-life is min(halflife, step * B * ratio)."""
  from train.config import ema_beta, from_file
  from train.state import make_mesh, setup
  import paradigms
  c = from_file(os.path.join(ROOT, 'configs', 'dit_glyphs.py:tiny'))
  B, H = c.data.batch_size, c.train.ema_halflife_nimg
  assert float(ema_beta(c, 0)) == 0.0  # ramp-up: the first average is the first params
  assert float(ema_beta(c, 100)) == pytest.approx(0.5 ** (B / min(H, 100 * B * 0.05)), rel=1e-6)
  assert float(ema_beta(c, 10 ** 6)) == pytest.approx(0.5 ** (B / H), rel=1e-6)
  c.train.ema_rampup_ratio = 0.0
  beta = 0.5 ** (B / H)
  assert float(ema_beta(c, 0)) == pytest.approx(beta, rel=1e-6)
  s = setup(c, paradigms.get(c.paradigm), make_mesh((1, 1, 1), jax.devices()[:1]))
  state0 = s.init(jax.random.key(0))
  ema0 = jax.device_get(state0.ema)
  batch = {'image': np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           'label': np.ones((8, 3), np.int32)}
  state1, _ = s.train_step(state0, batch, jax.random.key(1))
  expect = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, ema0, jax.device_get(state1.params))
  for a, b in zip(jax.tree.leaves(jax.device_get(state1.ema)), jax.tree.leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_tiny_config_trains_and_samples_through_the_cli(tmp_path):
  work = str(tmp_path / 'run')
  run_python(['-m', 'train', '--config', 'configs/dit_glyphs.py:tiny', '--workdir', work,
              f'--config.data.cache_dir={tmp_path / "cache"}'])
  rows = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
  assert any('eval_mse' in r for r in rows) and any('judge_fd' in r for r in rows)
  first = next(r['loss'] for r in rows if 'loss' in r)
  last = [r['loss'] for r in rows if 'loss' in r][-1]
  assert last < first  # the denoising loss falls
  out = str(tmp_path / 'grid.png')
  proc = run_python(['-m', 'sample', '--workdir', work, '--num', '4', '--out', out, '--sampler',
                     'euler', '--steps', '3', '--cfg', '2.0', '--label', '7A'])
  from PIL import Image
  img = Image.open(out)
  assert img.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 x 2 grid of 16 px with 2 px padding
  assert '3 network evaluations' in proc.stderr


def test_image_grid_zoom_repeats_each_pixel():
  from evaluators.images import image_grid
  x = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)
  one = np.asarray(image_grid(x, cols=3))
  three = np.asarray(image_grid(x, cols=3, zoom=3))
  assert one.shape == (2 * 6 + 2, 3 * 6 + 2, 3)  # 2 rows x 3 cols of 4 px, 2 px padding
  np.testing.assert_array_equal(three, one.repeat(3, axis=0).repeat(3, axis=1))
  with pytest.raises(ValueError, match='zoom=0'):
    image_grid(x, zoom=0)


def test_cli_judge_scores_the_grid_it_drew_with_the_requested_labels(monkeypatch, capsys,
                                                                   tmp_path):
  """--label 7A --judge must judge the grid's own samples against '7A' (it once judged a fresh
  batch drawn for held-out labels). A stand-in judge reads '7A' in every image, the held-out
  labels are '01', and the stand-in generator records what it was asked for."""
  import argparse
  import types
  import ml_collections
  from evaluators import glyph_judge, images
  from pipelines.glyphs import encode_text
  from sample import __main__ as sample_cli
  alphabet, S = '01A7', 3
  seven_a = encode_text('7A', alphabet, S)

  class Reads7A(glyph_judge.Judge):
    def _forward(self, x):
      n = len(x)  # (features [N, F], per-slot ids [N, S])
      return np.asarray(x, np.float32).reshape(n, -1)[:, :4], np.stack([seven_a] * n)

  judge = Reads7A(module=None, params={}, image_size=8, alphabet=alphabet, max_chars=S)
  held = {'image': np.zeros((4, 8, 8, 3), np.float32),
          'label': np.stack([encode_text('01', alphabet, S)] * 4)}
  asked = {}

  def fake_generate(config, model, params, rng, *, num, labels, **kw):
    asked['labels'] = np.asarray(labels)
    return np.random.default_rng(0).uniform(-1, 1, (num, 8, 8, 3)).astype(np.float32), 3

  monkeypatch.setattr(images, 'reference', lambda config, num: held)
  monkeypatch.setattr(images, 'load_judge', lambda config, steps=0: judge)
  monkeypatch.setattr(images, 'generate', fake_generate)
  config = ml_collections.ConfigDict({
      'data': {'source': 'glyphs', 'alphabet': alphabet, 'max_chars': S},
      'judge': {'name': 'glyphs', 'sampler': 'euler', 'steps': 3, 'train_steps': 0}})
  model = types.SimpleNamespace(cfg=types.SimpleNamespace(step_conditioning=False))
  args = argparse.Namespace(sampler='', steps=0, cfg_interval='', cfg=1.0, num=4, label=['7A'],
                            prompt='',
                            judge=True, zoom=1, out=str(tmp_path / 'g.png'))
  sample_cli.image_cli(args, config, model, None, None)
  out = capsys.readouterr().out
  np.testing.assert_array_equal(asked['labels'], np.stack([seven_a] * 4))
  assert 'accuracy=1.0000' in out and 'char_accuracy=1.0000' in out and 'nfe=3' in out
  assert '2: 1.000 / 1.000 (4)' in out
  args.label = []  # no --label: the held-out labels are requested, and '7A' is misread
  sample_cli.image_cli(args, config, model, None, None)
  assert 'accuracy=0.0000' in capsys.readouterr().out
  np.testing.assert_array_equal(asked['labels'], held['label'])
  config.judge.name = ''
  args.judge = True
  with pytest.raises(ValueError, match='drop --judge'):  # one line at the CLI (run_main)
    sample_cli.image_cli(args, config, model, None, None)


def test_label_ids_past_the_embedding_table_are_refused(tmp_path):
  """npz class ids 0..6 need label_vocab 8 (1-based, 0 = null); a smaller table would clamp the
  ids silently inside jit, so the trainer refuses and says what to set."""
  rng = np.random.default_rng(0)
  path = tmp_path / 'd.npz'
  np.savez(path, images=rng.integers(0, 255, (20, 16, 16, 3), np.uint8),
           labels=np.arange(20) % 7)
  proc = run_python(['-m', 'train', '--config', 'configs/dit_glyphs.py:tiny', '--workdir',
                     str(tmp_path / 'run'), '--config.data.source=npz',
                     f'--config.data.path={path}',
                     '--config.model.label_vocab=4'], check=False)
  assert proc.returncode != 0 and '--config.model.label_vocab=8' in proc.stderr
  from evaluators.images import parse_labels
  import ml_collections
  cfg = ml_collections.ConfigDict({'data': {'source': 'npz', 'max_chars': 3},
                                   'model': {'label_vocab': 8}})
  assert parse_labels(cfg, ['6'], 2).tolist() == [[7, 0, 0]] * 2
  with pytest.raises(ValueError, match='outside'):
    parse_labels(cfg, ['7'], 2)
