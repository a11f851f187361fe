"""Speculative decoding (sample/speculative.py): lossless in distribution (chi-square over the
first two tokens, 20k draws) and identical to greedy AR when greedy, with both drafters; a
deliberately wrong residual rule must fail the same test."""
import functools

import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

from paradigms import masked_diffusion as mdp
from paradigms.autoregressive import LogitsFn
from paradigms.nn.transformer import Transformer, TransformerConfig
from sample import autoregressive as ar
from sample import speculative as sp
from sample.categorical import filtered_probs

V = 6


def _model(vocab, d, layers, seed, mask='causal'):
  m = Transformer(TransformerConfig(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=2,
                                    max_len=64, mask=mask))
  # jitted: op-by-op init compiles the layer scan on its own, which segfaulted inside XLA's
  # CPU compiler in a long-lived test worker (CI and locally, always at this fixture)
  params = jax.jit(m.init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))['params']
  # larger logits than the init's, so p is far from uniform and p != q
  params = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, params)
  return m, params


@pytest.fixture(scope='module')
def models():
  target = _model(V, 32, 2, 0)
  draft = _model(V, 16, 1, 7)
  bd3 = _model(V + 1, 16, 1, 9, mask='bidirectional')  # id V is its MASK
  return target, draft, bd3


def _drafter(kind, models):
  (_, _), (dm, dp), (bm, bp) = models
  if kind == 'ar':
    return sp.ARDrafter(LogitsFn(dm)), dm, dp
  return sp.BlockDrafter(mdp.LogitsFn(bm, mask_id=V), mask_id=V, block_size=2, steps=2), bm, bp


def _exact_two(m, params, prompt, **filt):
  """p(x1, x2 | prompt) of plain sampling: [V, V]."""
  full = lambda x: m.apply({'params': params}, x)[0][:, -1]
  p1, i1 = filtered_probs(full(prompt), **filt)
  p1 = _dense(p1, i1)[0]
  seqs = jnp.concatenate([jnp.repeat(prompt, V, 0), jnp.arange(V)[:, None]], axis=1)
  p2, i2 = filtered_probs(full(seqs), **filt)
  return np.asarray(p1[:, None] * _dense(p2, i2))


def _dense(p, ids):
  if ids is None:
    return p
  return jnp.zeros(p.shape[:-1] + (V,)).at[jnp.arange(p.shape[0])[:, None], ids].set(p)


def _spec_counts(models, kind, n, gamma, **filt):
  (m, params) = models[0]
  drafter, dm, dp = _drafter(kind, models)
  prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
  one = lambda r: sp.speculative_generate(
      LogitsFn(m), params, drafter, dp, prompt, r, m.init_cache(1, 12), dm.init_cache(1, 12),
      gamma=gamma, max_new_tokens=2, **filt).tokens[0, 3:5]
  toks = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(5), n)))
  counts = np.zeros((V, V))
  np.add.at(counts, (toks[:, 0], toks[:, 1]), 1)
  return counts, _exact_two(m, params, prompt, **filt)


def _p_value(counts, probs):
  n = counts.sum()
  e = probs.ravel() * n
  keep = e > 5  # the usual validity rule; the rest pooled
  obs = np.append(counts.ravel()[keep], counts.ravel()[~keep].sum())
  exp = np.append(e[keep], e[~keep].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  chi = float(((obs - exp) ** 2 / exp).sum())
  return float(jstats.chi2.sf(chi, len(exp) - 1))


@pytest.mark.parametrize('kind,gamma,filt', [
    ('ar', 2, dict(temperature=1.0)),
    ('ar', 3, dict(temperature=0.7, top_k=4)),
    ('bd3', 2, dict(temperature=1.0, top_p=0.9)),
])
def test_speculative_sampling_is_lossless(models, kind, gamma, filt):
  counts, probs = _spec_counts(models, kind, 20_000, gamma, **filt)
  assert counts.sum() == 20_000
  assert _p_value(counts, probs) > 0.01


def test_wrong_residual_fails_the_same_test(models, monkeypatch):
  """Drawing the correction from p instead of max(0, p - q) over-samples the drafter's
  tokens: the chi-square test must see it."""
  right = sp.accept_and_correct

  def wrong(rng, p, q, d, greedy):
    n, _ = right(rng, p, q, d, greedy)
    y = sp._draw(jax.random.fold_in(rng, 1), p, greedy)  # ignores q
    return n, y

  monkeypatch.setattr(sp, 'accept_and_correct', wrong)
  jax.clear_caches()
  counts, probs = _spec_counts(models, 'ar', 20_000, 2, temperature=1.0)
  jax.clear_caches()
  assert _p_value(counts, probs) < 1e-4


@pytest.mark.parametrize('kind', ['ar', 'bd3'])
@pytest.mark.parametrize('gamma', [1, 3, 4])
def test_greedy_speculative_equals_greedy_ar(models, kind, gamma):
  (m, params) = models[0]
  drafter, dm, dp = _drafter(kind, models)
  prompt = jax.random.randint(jax.random.key(3), (4, 5), 0, V)
  N = 17
  base = ar.generate(LogitsFn(m), params, prompt, jax.random.key(0), m.init_cache(4, 5 + N),
                     max_new_tokens=N, greedy=True, eos_id=0)
  size = 5 + N + gamma + 1
  out = sp.speculative_generate(LogitsFn(m), params, drafter, dp, prompt, jax.random.key(0),
                                m.init_cache(4, size), dm.init_cache(4, size), gamma=gamma,
                                max_new_tokens=N, greedy=True, eos_id=0)
  np.testing.assert_array_equal(out.tokens, base.tokens)
  np.testing.assert_array_equal(out.lengths, base.lengths)
  # each round emits m + 1 tokens: 1 + rounds + accepted >= every row's generated count
  assert int(out.rounds) + int(out.accepted) + 1 >= int(jnp.max(out.lengths)) - 5
  assert 0 <= float(out.acceptance_rate) <= 1


def test_self_drafting_accepts_everything(models):
  """A drafter equal to the target is always right: alpha = 1, one target call per gamma + 1
  tokens."""
  (m, params) = models[0]
  prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
  out = sp.speculative_generate(LogitsFn(m), params, sp.ARDrafter(LogitsFn(m)), params, prompt,
                                jax.random.key(0), m.init_cache(1, 24), m.init_cache(1, 24),
                                gamma=4, max_new_tokens=16, temperature=1.0)
  assert float(out.acceptance_rate) == pytest.approx(1.0)
  assert int(out.nfe) == 1 + 3  # prefill (token 1), then 3 rounds of 5 tokens


def test_bad_arguments(models):
  (m, params) = models[0]
  drafter, dm, dp = _drafter('ar', models)
  prompt = jnp.asarray([[1, 2]], jnp.int32)
  call = functools.partial(sp.speculative_generate, LogitsFn(m), params, drafter, dp, prompt,
                           jax.random.key(0), max_new_tokens=4)
  with pytest.raises(ValueError, match='gamma must be >= 1'):
    call(m.init_cache(1, 20), dm.init_cache(1, 20), gamma=0)
  with pytest.raises(ValueError, match='room for'):
    call(m.init_cache(1, 6), dm.init_cache(1, 20), gamma=2)
