"""Masked and block diffusion losses against the papers' equations."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import masked_diffusion as md
from paradigms.nn import TransformerConfig

V, MASK = 40, 39
CFG = TransformerConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, mask='bidirectional')


def _model(cfg=CFG, seed=0):
  model = md.build(cfg)
  params = nn.meta.unbox(md.init(model, jax.random.key(seed),
                                 {'tokens': jnp.zeros((1, 9), jnp.int32)}))['params']
  return model, params


def _x0(B, L, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, L), 0, MASK)


def _np_log_softmax_subs(logits):
  l = np.asarray(logits, np.float64).copy()
  l[..., MASK] = -1e6
  l -= l.max(-1, keepdims=True)
  return l - np.log(np.exp(l).sum(-1, keepdims=True))


@pytest.mark.parametrize('schedule', ['linear', 'loglinear', 'cosine', 'polynomial'])
def test_nelbo_equals_a_direct_numpy_evaluation(schedule):
  model, params = _model()
  x0 = _x0(2, 8)
  t = jnp.asarray([[0.3], [0.8]])
  masked = jnp.asarray([[1, 0, 1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 0, 1, 1]], bool)
  opt = md.Options(mask_id=MASK, schedule=schedule)
  got = md.nelbo_given(params, x0, t, masked, model, opt)
  # the equation, evaluated directly: w(t) * sum_{masked} -log p(x^l | z_t), w = -a'(t)/(1-a(t))
  z = np.where(masked, MASK, x0)
  logits, _ = model.apply({'params': params}, jnp.asarray(z))
  logp = _np_log_softmax_subs(logits)
  tt = np.asarray(t, np.float64)[:, 0]
  alpha = {'linear': lambda t: 1 - t, 'loglinear': lambda t: 1 - (1 - 1e-3) * t,
           'cosine': lambda t: (1 - 2e-4) * (1 - np.cos(np.pi / 2 * (1 - t))) + 1e-4,
           'polynomial': lambda t: 1 - t ** 2}[schedule]
  h = 1e-6
  w = -(alpha(tt + h) - alpha(tt - h)) / (2 * h) / (1 - alpha(tt))  # numerical alpha'
  nll = -np.take_along_axis(logp, np.asarray(x0)[..., None], -1)[..., 0]
  want = w * np.where(masked, nll, 0).sum(1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4)


def test_discrete_time_weight_matches_md4():
  opt = md.Options(schedule='linear', discrete_steps=10)
  t = jnp.asarray([0.3, 1.0])
  # T (alpha_s - alpha_t)/(1 - alpha_t) with alpha = 1 - t: T * (1/T) / t = 1/t
  np.testing.assert_allclose(np.asarray(md.position_weights(t, opt)), [1 / 0.3, 1.0], rtol=1e-5)
  d = np.asarray(md.draw_t(jax.random.key(0), (1000,), opt))
  assert set(np.round(d * 10).astype(int)) <= set(range(1, 11)) and np.allclose(d * 10, np.round(d * 10))


@pytest.mark.parametrize('schedule', ['loglinear', 'cosine'])
def test_uniform_predictor_nelbo_is_closed_form(schedule):
  """All-zero params predict uniformly over the V-1 real tokens, so every masked token costs
  log(V-1) nats and E[L] = E_t[-alpha'_t] log(V-1) = (alpha(t_eps) - alpha(1))/(1 - t_eps) log(V-1)."""
  model, params = _model()
  params = jax.tree.map(jnp.zeros_like, params)
  x0 = _x0(1024, 256)  # the 1/t weight makes the estimator noisy: sd ~0.5% here
  opt = dict(mask_id=MASK, schedule=schedule)
  loss, _ = md.loss(params, {'tokens': jnp.pad(x0, ((0, 0), (0, 1)))}, jax.random.key(3),
                    model=model, **opt)
  a = md.schedule(schedule)
  expect = float(a(jnp.asarray(1e-3))[0] - a(jnp.asarray(1.0))[0]) / (1 - 1e-3) * np.log(V - 1)
  assert abs(float(loss) - expect) < 0.02 * expect


def test_antithetic_t_is_stratified():
  t = np.sort(np.asarray(md.draw_t(jax.random.key(0), (4, 8), md.Options(t_eps=0.0))).ravel())
  np.testing.assert_allclose(np.diff(t), 1 / 32, atol=1e-6)


def _forbidden(L, B):
  """What each query must NOT see, from first principles (index-by-index)."""
  bad = np.zeros((2 * L, 2 * L), bool)
  for q in range(2 * L):
    for k in range(2 * L):
      qt, kt = q < L, k < L  # in the noisy half?
      bq, bk = (q % L) // B, (k % L) // B
      if qt and kt:
        bad[q, k] = bq != bk  # noisy tokens see only their own noisy block
      elif qt and not kt:
        bad[q, k] = bk >= bq  # a noisy block must not see its own (or later) clean tokens
      elif not qt and kt:
        bad[q, k] = True  # clean tokens never see noise
      else:
        bad[q, k] = bk > bq  # clean tokens are block-causal
  return bad


def test_bd3_mask_never_leaks_over_random_sizes():
  rng = np.random.default_rng(0)
  for _ in range(25):
    B = int(rng.integers(1, 6))
    L = B * int(rng.integers(1, 7))
    m, bad = md.bd3_mask(L, B), _forbidden(L, B)
    assert not np.any(m & bad), (L, B)
    assert np.all(m | bad), (L, B)  # and everything allowed is seen


def test_bd3_with_block_size_L_is_mdlm():
  model, params = _model()
  x0, L = _x0(2, 8), 8
  z = jnp.where(jax.random.bernoulli(jax.random.key(5), 0.5, x0.shape), MASK, x0)
  mdlm, _ = model.apply({'params': params}, z)
  pos = jnp.broadcast_to(jnp.concatenate([jnp.arange(L)] * 2), (2, 2 * L))
  bd3, _ = model.apply({'params': params}, jnp.concatenate([z, x0], 1), positions=pos,
                       attn_mask=jnp.asarray(md.bd3_mask(L, L))[None, None])
  np.testing.assert_allclose(np.asarray(bd3[:, :L]), np.asarray(mdlm), atol=2e-5)


def test_bd3_block_size_1_all_masked_is_left_to_right_nll():
  """BD3-LM identity: B = 1 with every token masked gives exactly the AR factorisation's NLL
  -1/L sum_l log p(x^l | x^{<l}) of the same weights, evaluated one position at a time."""
  model, params = _model()
  x0, L = _x0(2, 8), 8
  loss, _ = md.loss(params, {'tokens': jnp.pad(x0, ((0, 0), (0, 1)))}, jax.random.key(0),
                    model=model, mask_id=MASK, block_size=1, mask_all=True)
  fn, nll = md.LogitsFn(model, MASK), 0.0
  for l in range(L):  # [x^0 .. x^{l-1}, m] with block-causal ids: exactly what BD3 lets l see
    inp = jnp.concatenate([x0[:, :l], jnp.full((2, 1), MASK)], 1)
    ids = jnp.broadcast_to(jnp.arange(l + 1), (2, l + 1))
    logits, _ = fn(params, inp, None, positions=ids, ids=ids)
    logp = _np_log_softmax_subs(logits[:, -1])
    nll += -logp[np.arange(2), np.asarray(x0[:, l])].mean()
  np.testing.assert_allclose(float(loss), nll / L, rtol=1e-5)


def test_parameter_counts_match_the_ar_model():
  from train.config import from_file, model_config
  ar = model_config(from_file('configs/ar_code.py:small'))
  for spec in ('configs/mdlm_code.py:small', 'configs/bd3lm_code.py:small,4'):
    assert model_config(from_file(spec)).num_params() == ar.num_params()


def test_bad_options_fail_clearly():
  model, params = _model()
  batch = {'tokens': jnp.zeros((2, 9), jnp.int32)}
  with pytest.raises(ValueError, match='block_size=3 must divide'):
    md.loss(params, batch, jax.random.key(0), model=model, mask_id=MASK, block_size=3)
  with pytest.raises(ValueError, match='schedule'):
    md.loss(params, batch, jax.random.key(0), model=model, mask_id=MASK, schedule='cubic')
  with pytest.raises(ValueError, match='bidirectional'):
    md.build(dataclasses.replace(CFG, mask='causal'))
