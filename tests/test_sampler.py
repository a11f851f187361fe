"""The autoregressive sampler: exact marginals under temperature/top-k/top-p, entropy not
lowered, EOS handling, determinism, and cached decode == recompute."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import autoregressive as ar
from paradigms.nn import TransformerConfig
from sample.autoregressive import generate
from sample.categorical import sample_categorical


@dataclasses.dataclass(frozen=True)
class FixedLogits:
  """A fake model whose next-token distribution ignores the context."""
  logits: tuple

  def __call__(self, params, tokens, cache):
    l = jnp.asarray(self.logits, jnp.float32)
    return jnp.broadcast_to(l, tokens.shape + l.shape), cache


@dataclasses.dataclass(frozen=True)
class Successor:
  """A fake model that always predicts token + 1 (mod V)."""
  V: int = 10

  def __call__(self, params, tokens, cache):
    return 20.0 * jax.nn.one_hot((tokens + 1) % self.V, self.V), cache


def expected(logits, temperature=1.0, top_k=0, top_p=1.0):
  """The target distribution, computed independently in float64 numpy."""
  l = np.asarray(logits, np.float64) / temperature
  p = np.exp(l - l.max())
  p /= p.sum()
  order = np.argsort(-p, kind='stable')
  keep = np.zeros_like(p, bool)
  keep[order[:top_k or len(p)]] = True
  q = np.where(keep, p, 0)
  q /= q.sum()
  mass_before = np.cumsum(q[order]) - q[order]
  drop = order[mass_before >= top_p]
  q[drop] = 0
  return q / q.sum()


LOGITS = (2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, -4.0)


@pytest.mark.parametrize('temperature,top_k,top_p', [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 0, 1.0), (1.0, 4, 1.0), (1.0, 0, 0.8), (1.3, 6, 0.9)])
def test_generate_marginals_match_the_target(temperature, top_k, top_p):
  B, N = 2000, 10  # 20,000 independent draws
  out = generate(FixedLogits(LOGITS), None, jnp.zeros((B, 1), jnp.int32), jax.random.key(0),
                 jnp.zeros(()), max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p)
  draws = np.asarray(out.tokens[:, 1:]).ravel()
  freq = np.bincount(draws, minlength=len(LOGITS)) / draws.size
  p = expected(LOGITS, temperature, top_k, top_p)
  tol = 5 * np.sqrt(p * (1 - p) / draws.size) + 1e-3
  assert np.all(np.abs(freq - p) <= tol), (freq, p)
  assert np.all(freq[p == 0] == 0)  # filtered tokens never appear
  assert int(out.nfe) == N  # prefill + N - 1 decode steps


def test_sample_entropy_is_not_lowered_on_a_long_tail():
  V, n = 512, 200_000
  logits = -1.5 * np.log(np.arange(1, V + 1))  # Zipf(1.5): a long tail of rare tokens
  draws = np.asarray(sample_categorical(jax.random.key(1), jnp.broadcast_to(jnp.asarray(logits), (n, V))))
  p = expected(logits)
  freq = np.bincount(draws, minlength=V) / n
  h_true = -(p * np.log(p)).sum()
  nz = freq[freq > 0]
  h_emp = -(nz * np.log(nz)).sum() + (nz.size - 1) / (2 * n)  # Miller-Madow bias correction
  assert abs(h_emp - h_true) < 0.01, (h_emp, h_true)
  tail = p[64:].sum()  # mass of the rarest 448 tokens is reproduced
  assert abs(freq[64:].sum() - tail) < 5 * np.sqrt(tail * (1 - tail) / n)


def test_greedy_and_determinism():
  prompt = jnp.zeros((3, 1), jnp.int32)
  g = generate(FixedLogits(LOGITS), None, prompt, jax.random.key(0), jnp.zeros(()),
               max_new_tokens=5, greedy=True)
  assert np.all(np.asarray(g.tokens[:, 1:]) == 0)
  a = generate(FixedLogits(LOGITS), None, prompt, jax.random.key(7), jnp.zeros(()), max_new_tokens=30)
  b = generate(FixedLogits(LOGITS), None, prompt, jax.random.key(7), jnp.zeros(()), max_new_tokens=30)
  c = generate(FixedLogits(LOGITS), None, prompt, jax.random.key(8), jnp.zeros(()), max_new_tokens=30)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_eos_stops_each_sequence_and_pads_with_eos():
  prompt = jnp.asarray([[0], [3], [6]], jnp.int32)  # successor chains reach EOS=7 at different times
  out = generate(Successor(), None, prompt, jax.random.key(0), jnp.zeros(()), max_new_tokens=12,
                 greedy=True, eos_id=7)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  np.testing.assert_array_equal(lengths, [1 + 7, 1 + 4, 1 + 1])
  np.testing.assert_array_equal(tokens[1, :6], [3, 4, 5, 6, 7, 7])
  assert np.all(tokens[0, 8:] == 7) and np.all(tokens[2, 2:] == 7)
  assert int(out.nfe) < 12  # the loop exits once every sequence is done


def test_cached_decode_equals_recompute_on_a_real_model():
  cfg = TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
  model = ar.build(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))['params']
  prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, 50)
  kw = dict(max_new_tokens=20, temperature=1.0, top_k=20)
  cached = generate(ar.LogitsFn(model), params, prompt, jax.random.key(2), model.init_cache(2, 25), **kw)
  full = generate(ar.LogitsFn(model), params, prompt, jax.random.key(2), None, use_cache=False, **kw)
  np.testing.assert_array_equal(cached.tokens, full.tokens)
  np.testing.assert_array_equal(cached.tokens[:, :5], prompt)


def test_bad_sampling_arguments_fail_clearly():
  with pytest.raises(ValueError, match='top_p'):
    sample_categorical(jax.random.key(0), jnp.zeros((2, 5)), top_p=1.5)
  with pytest.raises(ValueError, match='top_k'):
    sample_categorical(jax.random.key(0), jnp.zeros((2, 5)), top_k=9)
  with pytest.raises(ValueError, match='use_cache'):
    generate(FixedLogits(LOGITS), None, jnp.zeros((1, 1), jnp.int32), jax.random.key(0),
             max_new_tokens=2)
