"""Chunked cross-entropy (paradigms/nn/xent.py, loss.xent_chunk): the same loss and gradients
as the full logits, any chunk size, and a compiled step with no [B, L, V] logits buffer."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import autoregressive as ar
from paradigms.nn import xent
from paradigms.nn.transformer import Transformer, TransformerConfig
from train.config import from_file, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**model):
  """configs/ar_code.py:tiny's model (B=8, L=32, d=32, V=258) with `model` overrides."""
  c = from_file(os.path.join(ROOT, 'configs', 'ar_code.py:tiny'))
  c.model.update(model)
  cfg = model_config(c)
  B, L = c.data.batch_size, c.data.seq_len
  tokens = jax.random.randint(jax.random.key(1), (B, L + 1), 0, cfg.vocab_size)
  model = ar.build(cfg)
  params = nn.meta.unbox(ar.init(model, jax.random.key(0), {'tokens': tokens})['params'])
  return c, model, params, {'tokens': tokens}


def _close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


@pytest.mark.parametrize('tied, chunks', [(True, (8, 5)), (False, (5, 100))])
def test_chunked_loss_and_grads_equal_the_full_logits(tied, chunks):
  """Tied, and untied with the vocabulary padded 258 -> 384 (PAD_LOGIT rows); chunk sizes that
  divide L=32 (8), do not (5: the last chunk is padded) and exceed it (100: one chunk of 32)."""
  model_kw = {} if tied else {'tie_embeddings': False, 'vocab_multiple': 128}
  c, model, params, batch = _tiny(**model_kw)
  assert model.cfg.padded_vocab == (258 if tied else 384)
  assert dict(c.loss)['xent_chunk'] == 0  # off by default in every autoregressive config

  def step(chunk):
    fn = lambda p: ar.loss(p, batch, None, model=model, z_loss=1e-2, xent_chunk=chunk)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (full, full_m), full_g = step(0)
  for chunk in chunks:
    (val, m), g = step(chunk)
    _close(val, full)
    _close(m, full_m)  # nll and log_z_sq: both outputs of the chunked pass
    _close(g, full_g)  # every param, the head / embedding included
    assert jax.tree.structure(g) == jax.tree.structure(full_g)


def test_chunked_with_dropout_input_masking_and_evaluate():
  """The rng reaches the backbone the same way (same dropout and input mask), and `evaluate`
  (what the trainer passes config.loss to as well) sums the same nats."""
  _, model, params, batch = _tiny(dropout=0.1)
  rng = jax.random.key(7)
  kw = dict(model=model, input_mask_rate=0.2)
  full = ar.loss(params, batch, rng, **kw)[0]
  chunked = ar.loss(params, batch, rng, xent_chunk=6, **kw)[0]
  _close(chunked, full)
  e_full = ar.evaluate(params, batch, None, model=model)
  e_chunk = ar.evaluate(params, batch, None, model=model, xent_chunk=7)
  _close(e_chunk, e_full)


def test_off_is_the_unchanged_full_logits_formula():
  """xent_chunk=0 computes exactly what token_nll computed before the option (bit for bit)."""
  _, model, params, batch = _tiny()
  tokens = batch['tokens']
  logits, _ = model.apply({'params': params}, tokens[:, :-1])
  log_z = jax.nn.logsumexp(logits, axis=-1)
  ref = log_z - jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
  nll, lz = ar.token_nll(model, params, tokens)
  np.testing.assert_array_equal(nll, ref)
  np.testing.assert_array_equal(lz, log_z)
  # the model's call still returns logits (samplers); features=True the states under them
  h, _ = model.apply({'params': params}, tokens[:, :-1], features=True)
  assert logits.shape == tokens[:, :-1].shape + (258,) and h.shape[-1] == model.cfg.d_model


def test_features_follow_shift_logits_and_the_padded_head():
  """With Dream's shift_logits, untied and padded, `output_head(cfg)(h)` from features=True is
  the model's own logits, so chunked_nll equals the NLL of those logits."""
  cfg = TransformerConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, mask='bidirectional',
                          shift_logits=True, tie_embeddings=False, vocab_multiple=32)
  model = Transformer(cfg)
  x = jax.random.randint(jax.random.key(0), (3, 11), 0, 50)
  params = nn.meta.unbox(model.init(jax.random.key(1), x)['params'])
  logits, _ = model.apply({'params': params}, x)
  h, _ = model.apply({'params': params}, x, features=True)
  np.testing.assert_allclose(xent.output_head(cfg)(params['embed'], h), logits, rtol=1e-6,
                             atol=1e-6)
  assert float(logits[..., 50:].max()) == -1e6  # the 14 padding rows
  nll, lz = xent.chunked_nll(xent.output_head(cfg), params['embed'], h, x, 4)
  ref_nll, ref_lz = xent.nll_from_logits(logits, x)
  _close((nll, lz), (ref_nll, ref_lz))


@pytest.mark.parametrize('bad', [-1, 2.5, True, '8'])
def test_bad_chunk_names_the_key(bad):
  model, batch = ar.build(TransformerConfig()), {'tokens': jnp.zeros((2, 9), jnp.int32)}
  with pytest.raises(ValueError, match='loss.xent_chunk'):  # checked before the model runs
    ar.loss(None, batch, None, model=model, xent_chunk=bad)
  with pytest.raises(ValueError, match='loss.xent_chunk'):
    ar.evaluate(None, batch, None, model=model, xent_chunk=bad)


def test_compiled_step_holds_no_full_logits_buffer():
  """At V=4096, B*L=32*32=1024, d=32 the full logits are 16 MiB; the jitted value-and-grad step
  with xent_chunk=4 needs less temporary memory than that in all (unchunked: more)."""
  cfg = TransformerConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, max_len=32)
  model = ar.build(cfg)
  B, L, V = 32, 32, cfg.vocab_size
  tokens = jax.ShapeDtypeStruct((B, L + 1), jnp.int32)
  params = jax.eval_shape(lambda: nn.meta.unbox(
      ar.init(model, jax.random.key(0), {'tokens': jnp.zeros((B, L + 1), jnp.int32)})['params']))
  logits_bytes = B * L * V * 4

  def compiled(chunk):
    fn = lambda p, t: ar.loss(p, {'tokens': t}, None, model=model, xent_chunk=chunk)[0]
    return jax.jit(jax.value_and_grad(fn)).lower(params, tokens).compile()

  full, chunked = compiled(0), compiled(4)
  full_temp = full.memory_analysis().temp_size_in_bytes
  chunk_temp = chunked.memory_analysis().temp_size_in_bytes
  assert full_temp >= logits_bytes > chunk_temp, (full_temp, chunk_temp, logits_bytes)
  assert f'f32[{B},{L},{V}]' in full.as_text()
  assert f'f32[{B},{L},{V}]' not in chunked.as_text()
  assert f'f32[{B * L},{V}]' not in chunked.as_text()


def test_trainer_runs_the_chunked_loss_and_eval(tmp_path, monkeypatch):
  """--config.loss.xent_chunk reaches the trainer's jitted train step and its evaluation (both
  trace the chunked path, under the trainer's mesh and logical-axis rules)."""
  from train.trainer import train
  traced = []
  chunked_nll = xent.chunked_nll
  monkeypatch.setattr(xent, 'chunked_nll', lambda *a: traced.append(a[-1]) or chunked_nll(*a))
  c = from_file(os.path.join(ROOT, 'configs', 'ar_code.py:tiny'))
  c.train.update(steps=2, eval_every=2, ckpt_every=2, log_every=1)
  c.loss.xent_chunk = 5
  metrics = train(c, str(tmp_path / 'run'))
  assert traced.count(5) >= 2, traced  # the loss (train step) and evaluate
  assert np.isfinite(metrics['eval_bpb']) and np.isfinite(metrics['loss'])
