"""MaskGIT over VQ codes (paradigms/maskgit.py, sample/maskgit.py): the cosine schedule reveals
exactly the planned number of codes per step, confidence-based selection, CFG logits against two
separate passes, and the masked-token loss against a direct evaluation (no loss on prompt or
unmasked positions)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import maskgit
from sample import maskgit as smg

S, V, LV = 3, 16, 6


class Data:
  max_chars = S


def tiny(h=4, width=32, size=16, n_layers=2):
  cfg = maskgit.Config(scales=(h,), image_size=size, image_width=width, codebook_size=V,
                       latent_dim=4, label_len=S, label_vocab=LV, d_model=32, n_layers=n_layers,
                       n_heads=2)
  model = maskgit.build(cfg)
  batch = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), maskgit.example_batch(2, Data, cfg))
  params = jax.jit(maskgit.init, static_argnums=0)(model, jax.random.key(0), batch)['params']
  return model, params


apply = jax.jit(lambda model, params, z: model.apply({'params': params}, z)[0], static_argnums=0)


def labels(B, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, S), 0, LV)


def reference_plan(N, T):
  """MaskGIT's masks-left after each step, written out independently."""
  left, out = N, []
  for t in range(T):
    n = math.floor(math.cos(math.pi / 2 * (t + 1) / T) * N) if t < T - 1 else 0
    if t < T - 1:
      n = max(1, min(left - 1, n))
    out.append(n)
    left = n
  return out


def test_plan_is_the_cosine_schedule():
  assert list(smg.mask_plan(64, 8)) == [62, 59, 53, 45, 35, 24, 12, 0]  # floor(64 cos(pi t/16))
  for N, T in ((64, 8), (32, 12), (8, 8), (5, 1), (256, 16)):
    assert list(smg.mask_plan(N, T)) == reference_plan(N, T)
  with pytest.raises(ValueError, match='steps'):
    smg.mask_plan(4, 5)


@pytest.mark.parametrize('steps,cfg,tau', [(8, 2.0, 0.0), (12, 1.0, 4.5)])
def test_schedule_reveals_the_planned_number_per_step(steps, cfg, tau):
  model, params = tiny()  # 4 x 8 = 32 codes
  B, N = 3, 32
  out = smg.generate_tokens(model, params, labels(B), jax.random.key(3), steps=steps, cfg=cfg,
                            temperature=1.0, choice_temperature=tau)
  plan = np.asarray(reference_plan(N, steps))
  np.testing.assert_array_equal(np.asarray(out.history), np.broadcast_to(plan[:, None], (steps, B)))
  revealed = -np.diff(np.concatenate([[N], plan]))  # codes committed at each step
  assert revealed.min() >= 1 and revealed.sum() == N
  assert int(out.nfe) == steps and int(out.rows) == (2 * B if cfg != 1 else B)
  assert bool(jnp.all((out.tokens >= 0) & (out.tokens < V)))  # no [MASK] left


def test_one_step_is_the_argmax_of_two_separate_passes():
  """steps=1, temperature 0: every code is argmax(l_null + w (l_cond - l_null)) of the all-mask
  input, the two streams computed here by two separate forwards."""
  model, params = tiny()
  B, N, w = 2, 32, 3.0
  label = labels(B, seed=5)
  out = smg.generate_tokens(model, params, label, jax.random.key(0), steps=1, cfg=w,
                            temperature=0.0)
  y = jnp.full((B, N), model.cfg.mask_id)
  l_c = apply(model, params, maskgit.masked_inputs(model.cfg, y, label, y == y))[:, S:]
  l_u = apply(model, params, maskgit.masked_inputs(model.cfg, y, 0 * label, y == y))[:, S:]
  np.testing.assert_array_equal(out.tokens, jnp.argmax(l_u + w * (l_c - l_u), axis=-1))


def test_first_step_commits_the_most_confident_codes():
  model, params = tiny()
  B, N, T = 2, 32, 2
  label = labels(B, seed=6)
  out = smg.generate_tokens(model, params, label, jax.random.key(0), steps=T, temperature=0.0)
  y = jnp.full((B, N), model.cfg.mask_id)
  logits = apply(model, params, maskgit.masked_inputs(model.cfg, y, label, y == y))[:, S:]
  conf = np.asarray(jnp.max(jax.nn.log_softmax(logits, -1), -1))  # greedy: p of the argmax
  first = N - smg.mask_plan(N, T)[0]
  top = np.argsort(-conf, axis=1, kind='stable')[:, :first]
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(out.tokens), top, 1),
                                np.take_along_axis(np.asarray(jnp.argmax(logits, -1)), top, 1))


def test_masked_token_loss_ignores_prompt_and_visible_positions():
  model, params = tiny()
  B, N = 4, 32
  tokens = jax.random.randint(jax.random.key(7), (B, N), 0, V)
  label = labels(B, seed=8)
  r = jnp.array([0.05, 0.3, 0.6, 0.95])
  masked = maskgit.random_mask(jax.random.key(9), r, N)
  want_n = np.ceil(np.cos(np.pi / 2 * np.asarray(r)) * N).clip(1, N)
  np.testing.assert_array_equal(np.asarray(masked.sum(1)), want_n)  # ceil(gamma(r) N) each
  nll, _ = jax.jit(maskgit.masked_nll, static_argnums=0)(model, params, tokens, label, masked)
  logits = np.asarray(apply(model, params, maskgit.masked_inputs(model.cfg, tokens, label,
                                                                 masked)), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [B, S + N, V]
  m = np.asarray(masked)
  want = np.where(m, -np.take_along_axis(logp[:, S:], np.asarray(tokens)[..., None], -1)[..., 0],
                  0.0)
  np.testing.assert_allclose(np.asarray(nll), want, rtol=1e-5, atol=1e-6)
  # the loss is the mean over masked codes of the batch, at the schedule's ratios
  batch = {'tokens': tokens, 'label': label, 'inputs': jnp.zeros((B, 0, 4))}
  loss = jax.jit(maskgit.loss, static_argnames=('model', 'label_dropout'))
  ce, metrics = loss(params, batch, jax.random.key(1), model=model, label_dropout=0.0)
  assert np.isfinite(float(ce)) and 0 < float(metrics['mask_ratio']) <= 1
  sums = jax.jit(maskgit.evaluate, static_argnames=('model',))(params, batch, jax.random.key(2),
                                                               model=model)
  assert set(sums) == {'masked_nll_sum', 'masked_accuracy_sum', 'count'}
  assert float(sums['count']) == B and np.isfinite(float(sums['masked_nll_sum']))


def test_wrong_model_kind_is_refused():
  from paradigms import raster_ar
  cfg = raster_ar.Config(scales=(2,), codebook_size=V, label_len=S, label_vocab=LV, d_model=32,
                         n_layers=1, n_heads=2)
  with pytest.raises(ValueError, match='MaskGIT'):
    smg.generate_tokens(raster_ar.build(cfg), {}, labels(1), jax.random.key(0))
