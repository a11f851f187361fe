"""Masked-diffusion samplers: exact marginals and entropy on context-free fake models, given
tokens never change, per-step unmasking counts, NFE, the p_theta cache, semi-AR block order
and windows, and BD3 decoding with KV cache == without."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import masked_diffusion as md
from paradigms.nn import TransformerConfig
from sample.masked_diffusion import (ancestral, block_diffusion, confidence_threshold,
                                     confidence_topk, remdm, semi_autoregressive)

V, MASK = 10, 9  # fake vocabulary: tokens 0..8 and the mask token 9


def subs(logits):
  """Append the mask token's SUBS logit to each row of real-token logits."""
  return tuple(tuple(row) + (-1e6,) for row in logits)


@dataclasses.dataclass(frozen=True)
class PositionLogits:
  """A fake model whose p(x0) at position l is softmax(logits[l]), whatever the context."""
  logits: tuple  # [L][V]

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    l = jnp.asarray(self.logits, jnp.float32)[:tokens.shape[1]]
    return jnp.broadcast_to(l, tokens.shape + l.shape[-1:]), cache


@dataclasses.dataclass(frozen=True)
class ParamsLogits:
  """PositionLogits with the logits [L, V] given as `params`: a runtime value, so XLA does not
  spend seconds constant-folding a large batch through the sampler."""

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    return jnp.broadcast_to(params, tokens.shape + params.shape[-1:]), cache


@dataclasses.dataclass(frozen=True)
class Adversary:
  """Sure about changing every given token, unsure at masks: touching a given token shows."""

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    peaked = 30.0 * jax.nn.one_hot((tokens + 1) % MASK, V)
    logits = jnp.where((tokens != MASK)[..., None], peaked, 0.0)
    return logits.at[..., MASK].set(-1e6), cache


@dataclasses.dataclass(frozen=True)
class Counter:
  """Predicts, everywhere, how many unmasked tokens it sees; confidence rises with the index
  in its input. Greedy decoding then writes at each position the order it was filled in."""
  V: int = 12

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    n = jnp.sum(tokens != self.V - 1, axis=1)  # [B]
    scale = 1.0 + jnp.arange(tokens.shape[1])  # [T]
    logits = scale[None, :, None] * jax.nn.one_hot(n, self.V)[:, None, :]
    return logits.at[..., self.V - 1].set(-1e6), cache


def softmax(l):
  l = np.asarray(l, np.float64)
  p = np.exp(l - l.max())
  return p / p.sum()


MARGINALS = subs([(2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0),
                  (0.0,) * 9,
                  (-3.0, -2.0, -1.0, 0.0, 3.0, 0.0, -1.0, -2.0, -3.0)])


def check_marginals(tokens, logits, argmax_share=0.0):
  """Each position's empirical frequencies match (1 - a) softmax(logits[l]) + a onehot(argmax)
  within 5 sigma, a = argmax_share."""
  tokens = np.asarray(tokens)
  for l, row in enumerate(logits):
    p = (1 - argmax_share) * softmax(row)
    p[np.argmax(row)] += argmax_share
    freq = np.bincount(tokens[:, l], minlength=len(p)) / tokens.shape[0]
    tol = 5 * np.sqrt(p * (1 - p) / tokens.shape[0]) + 1e-3
    assert np.all(np.abs(freq - p) <= tol), (l, freq, p)


def all_masked(B, L):
  return jnp.full((B, L), MASK, jnp.int32)


@pytest.mark.parametrize('sampler,kw', [
    (ancestral, dict(steps=6, final_argmax=False)),
    (ancestral, dict(steps=6, final_argmax=False, schedule='cosine', cache_p=False)),
    (remdm, dict(steps=6, eta=1.0, final_argmax=False)),
    (confidence_topk, dict(steps=1)),
])
def test_marginals_are_exact_on_a_context_free_model(sampler, kw):
  out = sampler(PositionLogits(MARGINALS), None, all_masked(8000, 3), jax.random.key(0),
                mask_id=MASK, **kw)  # 8,000 draws per position
  check_marginals(out.tokens, MARGINALS)


def test_by_default_the_positions_left_for_the_last_step_take_the_argmax():
  """Log-linear: a position is still masked at t = 1/S with probability 1/S; those get argmax."""
  S = 5
  out = ancestral(PositionLogits(MARGINALS), None, all_masked(8000, 3), jax.random.key(0),
                  mask_id=MASK, steps=S)
  check_marginals(out.tokens, MARGINALS, argmax_share=1 / S)


@pytest.mark.parametrize('sampler,kw', [(ancestral, dict(cache_p=False)), (ancestral, {}),
                                        (remdm, dict(eta=1.0)), (remdm, dict(eta=0.3))])
def test_masked_fraction_follows_the_forward_process(sampler, kw):
  """After step t -> s a fraction 1 - alpha_s is masked (ReMDM preserves these marginals)."""
  S, n = 8, 6000
  out = sampler(PositionLogits(MARGINALS), None, all_masked(n // 3, 3), jax.random.key(1),
                mask_id=MASK, steps=S, **kw)
  frac = np.asarray(out.history).sum(1) / n  # [S]
  s = np.arange(S - 1, -1, -1) / S
  q = 1 - np.asarray(md.schedule('loglinear')(s)[0], np.float64)
  assert np.all(np.abs(frac - q) <= 5 * np.sqrt(q * (1 - q) / n) + 1e-9), (frac, q)


@pytest.mark.parametrize('sampler', [ancestral, remdm])
def test_the_last_step_fills_every_mask_even_when_alpha_0_is_below_1(sampler):
  """Cosine is clamped to alpha_0 = 1 - 1e-4, so without the explicit fill a position would
  stay masked with probability (1 - alpha_0)/(1 - alpha_1) = 1e-4: ~20 of these 200,000."""
  out = sampler(ParamsLogits(), jnp.asarray(MARGINALS[:1]), all_masked(200_000, 1),
                jax.random.key(2), mask_id=MASK, steps=2, schedule='cosine')
  assert np.all(np.asarray(out.tokens) != MASK)


def test_confidence_topk_over_several_steps_is_biased_towards_likely_tokens():
  """Committing the most confident draws first (confidence='sampled', the reference code's at
  temperature 1) is not sampling p, even context-free. ('max', the default, is unbiased:
  tests/test_parallel_decoding.py.)"""
  L = 4
  logits = subs([MARGINALS[0][:-1]] * L)
  out = confidence_topk(PositionLogits(logits), None, all_masked(5000, L), jax.random.key(1),
                        mask_id=MASK, steps=L, confidence='sampled')
  draws = np.asarray(out.tokens).ravel()
  p0 = softmax(logits[0])[0]
  assert np.mean(draws == 0) > p0 + 10 * np.sqrt(p0 * (1 - p0) / draws.size)


def test_sample_entropy_is_not_lowered():
  Vz = 256
  logits = tuple(-1.5 * np.log(np.arange(1, Vz))) + (-1e6,)  # Zipf(1.5) tail; mask = Vz - 1
  n = 20_000
  out = ancestral(PositionLogits((logits,)), None, jnp.full((n, 1), Vz - 1, jnp.int32),
                  jax.random.key(2), mask_id=Vz - 1, steps=4, final_argmax=False)
  draws = np.asarray(out.tokens[:, 0])
  p = softmax(logits)
  freq = np.bincount(draws, minlength=Vz) / n
  h_true = -(p[p > 0] * np.log(p[p > 0])).sum()
  nz = freq[freq > 0]
  h_emp = -(nz * np.log(nz)).sum() + (nz.size - 1) / (2 * n)  # Miller-Madow
  assert abs(h_emp - h_true) < 0.05, (h_emp, h_true)


def test_the_last_step_fills_by_argmax_unless_told_otherwise():
  x = all_masked(500, 3)
  hard = ancestral(PositionLogits(MARGINALS), None, x, jax.random.key(3), mask_id=MASK, steps=1)
  want = [np.argmax(row) for row in MARGINALS]
  assert np.all(np.asarray(hard.tokens) == want)
  soft = ancestral(PositionLogits(MARGINALS), None, x, jax.random.key(3), mask_id=MASK, steps=1,
                   final_argmax=False)
  assert not np.all(np.asarray(soft.tokens) == want)


def infill_pattern(B=4, L=12):
  """Given prefix (2) and suffix (2) tokens, and a random pattern in between."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, MASK, (B, L))
  hole = rng.random((B, L)) < 0.6
  hole[:, :2] = hole[:, -2:] = False
  hole[:, 2] = True  # at least one hole per row
  return jnp.asarray(np.where(hole, MASK, x), jnp.int32)


@pytest.mark.parametrize('sampler,kw', [
    (ancestral, dict(steps=5)),
    (ancestral, dict(steps=5, cache_p=False, schedule='cosine')),
    (remdm, dict(steps=5, eta=1.0)),
    (confidence_topk, dict(steps=3)),
    (confidence_threshold, dict(tau=0.5)),
    (semi_autoregressive, dict(block_len=3, steps_per_block=2)),
    (semi_autoregressive, dict(block_len=3, strategy='threshold', tau=0.5, window=6)),
])
def test_given_tokens_never_change(sampler, kw):
  x = infill_pattern()
  out = sampler(Adversary(), None, x, jax.random.key(4), mask_id=MASK, **kw)
  tokens, x = np.asarray(out.tokens), np.asarray(x)
  given = x != MASK
  np.testing.assert_array_equal(tokens[given], x[given])
  assert np.all(tokens != MASK)


@pytest.mark.parametrize('use_cache', [True, False])
def test_block_diffusion_keeps_the_prompt(use_cache):
  prompt = jnp.asarray(np.random.default_rng(1).integers(0, MASK, (3, 4)), jnp.int32)
  out = block_diffusion(Adversary(), None, prompt, jax.random.key(5),
                        jnp.zeros(()) if use_cache else None, mask_id=MASK, block_size=2,
                        num_blocks=3, steps_per_block=2, use_cache=use_cache)
  np.testing.assert_array_equal(out.tokens[:, :4], prompt)
  assert out.tokens.shape == (3, 10) and np.all(np.asarray(out.tokens) != MASK)
  assert int(out.nfe) == (1 + 3 * (2 + 1) if use_cache else 3 * 2)


def llada_counts(M, steps):
  """Masks left after each step under LLaDA's get_num_transfer_tokens: [steps, B]."""
  M = np.asarray(M)
  k = np.stack([M // steps + (i < M % steps) for i in range(steps)])  # [steps, B]
  return M[None] - np.cumsum(k, axis=0)


@pytest.mark.parametrize('steps', [1, 3, 4, 8])
def test_confidence_topk_unmasks_the_promised_number_per_step(steps):
  x = np.full((3, 6), 11)
  x[1, 0] = 0  # rows with 6, 5 and 3 masks
  x[2, :3] = 0
  out = confidence_topk(Counter(), None, jnp.asarray(x, jnp.int32), jax.random.key(6),
                        mask_id=11, steps=steps, temperature=0.0)
  M = (x == 11).sum(1)
  np.testing.assert_array_equal(out.history, llada_counts(M, steps))
  assert np.all(np.asarray(out.tokens) != 11)
  assert int(out.nfe) == min(steps, M.max())  # steps where nobody unmasks are skipped


def test_confidence_topk_commits_the_most_confident_first():
  out = confidence_topk(Counter(), None, jnp.full((1, 6), 11, jnp.int32), jax.random.key(0),
                        mask_id=11, steps=3, temperature=0.0)
  np.testing.assert_array_equal(out.tokens[0], [4, 4, 2, 2, 0, 0])


def test_confidence_threshold_always_progresses_and_can_finish_at_once():
  flat = PositionLogits(subs([(0.0,) * 9] * 7))  # every confidence 1/9 < tau
  out = confidence_threshold(flat, None, all_masked(2, 7), jax.random.key(7), mask_id=MASK, tau=0.9)
  assert int(out.nfe) == 7 and np.all(np.asarray(out.tokens) != MASK)
  np.testing.assert_array_equal(out.history[:, 0], [6, 5, 4, 3, 2, 1, 0])
  capped = confidence_threshold(flat, None, all_masked(2, 7), jax.random.key(7), mask_id=MASK,
                                tau=0.9, max_steps=3)
  assert int(capped.nfe) == 3 and np.all(np.asarray(capped.tokens) != MASK)
  sure = PositionLogits(subs([(30.0,) + (0.0,) * 8] * 7))
  out = confidence_threshold(sure, None, all_masked(2, 7), jax.random.key(7), mask_id=MASK, tau=0.9)
  assert int(out.nfe) == 1
  assert np.all(np.asarray(out.tokens) == 0)


def test_nfe_counts():
  f, x, key = PositionLogits(MARGINALS), all_masked(2, 3), jax.random.key(8)
  assert int(ancestral(f, None, x, key, mask_id=MASK, steps=7, cache_p=False).nfe) == 7
  assert int(remdm(f, None, x, key, mask_id=MASK, steps=7).nfe) == 7
  assert int(confidence_topk(f, None, x, key, mask_id=MASK, steps=3).nfe) == 3


@pytest.mark.parametrize('strategy', ['topk', 'threshold'])
def test_semi_autoregressive_decodes_blocks_left_to_right(strategy):
  kw = dict(mask_id=11, temperature=0.0, strategy=strategy, steps_per_block=2, tau=1.01)
  out = semi_autoregressive(Counter(), None, jnp.full((1, 6), 11, jnp.int32), jax.random.key(0),
                            block_len=2, **kw)
  np.testing.assert_array_equal(out.tokens[0], [1, 0, 3, 2, 5, 4])
  assert int(out.nfe) == 6
  # blocks start at the first masked position (after a given prefix), not at 0
  x = jnp.asarray([[0, 0] + [11] * 6], jnp.int32)
  out = semi_autoregressive(Counter(), None, x, jax.random.key(0), block_len=3,
                            **{**kw, 'steps_per_block': 3})
  np.testing.assert_array_equal(out.tokens[0], [0, 0, 4, 3, 2, 7, 6, 5])
  # window: the network sees only the 4 tokens ending at the current block
  out = semi_autoregressive(Counter(), None, jnp.full((1, 8), 11, jnp.int32), jax.random.key(0),
                            block_len=2, window=4, **kw)
  np.testing.assert_array_equal(out.tokens[0], [1, 0, 3, 2, 3, 2, 3, 2])


@pytest.fixture(scope='module')
def tiny_mdlm():
  model = md.build(TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4,
                                     mask='bidirectional'))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))['params']
  return model, params, md.LogitsFn(model, mask_id=39)


def test_cached_p_theta_is_exact_and_saves_calls(tiny_mdlm):
  model, params, f = tiny_mdlm
  x = jnp.full((3, 6), 39, jnp.int32).at[:, 0].set(5)
  kw = dict(mask_id=39, steps=40)
  cached = ancestral(f, params, x, jax.random.key(9), **kw)
  plain = ancestral(f, params, x, jax.random.key(9), cache_p=False, **kw)
  np.testing.assert_array_equal(cached.tokens, plain.tokens)
  assert int(plain.nfe) == 40
  # a call at step k happens iff k == 0 or some token changed at step k - 1
  left = np.concatenate([np.full((1, 3), 5), np.asarray(cached.history)]).sum(1)
  assert int(cached.nfe) == 1 + np.sum(left[1:-1] != left[:-2]) < 40


def test_block_diffusion_with_cache_equals_without(tiny_mdlm):
  model, params, f = tiny_mdlm
  B, P, Bk, N, S = 2, 4, 2, 3, 3
  prompt = jax.random.randint(jax.random.key(10), (B, P), 0, 39)
  kw = dict(mask_id=39, block_size=Bk, num_blocks=N, steps_per_block=S, top_k=20)
  cached = block_diffusion(f, params, prompt, jax.random.key(11), model.init_cache(B, P + N * Bk),
                           **kw)
  full = block_diffusion(f, params, prompt, jax.random.key(11), use_cache=False, **kw)
  np.testing.assert_array_equal(cached.tokens, full.tokens)
  np.testing.assert_array_equal(cached.tokens[:, :P], prompt)
  assert np.all(np.asarray(cached.tokens) != 39)
  assert int(cached.nfe) == 1 + N * (S + 1) and int(full.nfe) == N * S
  other = block_diffusion(f, params, prompt, jax.random.key(12), use_cache=False, **kw)
  assert not np.array_equal(np.asarray(other.tokens), np.asarray(full.tokens))


def test_bad_arguments_fail_clearly():
  f, x = PositionLogits(MARGINALS), all_masked(1, 3)
  with pytest.raises(ValueError, match='temperature'):
    ancestral(f, None, x, jax.random.key(0), mask_id=MASK, steps=2, temperature=-1.0)
  with pytest.raises(ValueError, match='eta'):
    remdm(f, None, x, jax.random.key(0), mask_id=MASK, steps=2, eta=2.0)
  with pytest.raises(ValueError, match='strategy'):
    semi_autoregressive(f, None, x, jax.random.key(0), mask_id=MASK, block_len=1, strategy='x')
  with pytest.raises(ValueError, match='multiple of block_size'):
    block_diffusion(f, None, jnp.zeros((1, 3), jnp.int32), jax.random.key(0), jnp.zeros(()),
                    mask_id=MASK, block_size=2, num_blocks=1, steps_per_block=1)
  with pytest.raises(ValueError, match='use_cache'):
    block_diffusion(f, None, jnp.zeros((1, 2), jnp.int32), jax.random.key(0), mask_id=MASK,
                    block_size=2, num_blocks=1, steps_per_block=1)
