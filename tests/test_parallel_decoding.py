"""Commit rules of parallel decoding (sample/parallel_decoding.py): the closed-form number of
tokens each rule commits on hand-made scores, one step at full confidence, progress at low
confidence, exact p_theta marginals with a draw-independent order and the closed-form bias of
the reference code's sampled confidence (chi-square), and the rules inside the samplers."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

from paradigms import masked_diffusion as md
from paradigms.nn import TransformerConfig
from sample import parallel_decoding as pd
from sample.masked_diffusion import (_propose, _threshold_loop, _topk_loop, confidence_threshold,
                                     confidence_topk, parallel_decode, semi_autoregressive)

V, MASK = 10, 9  # tokens 0..8 and the mask token 9
NEG = -1e6  # SUBS mask logit; also makes exact one-hot rows


@dataclasses.dataclass(frozen=True)
class ParamsLogits:
  """Context-free fake model: p(x0 at l) = softmax(params[l]) [L, V], whatever the context."""

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    return jnp.broadcast_to(params[:tokens.shape[1]], tokens.shape + params.shape[-1:]), cache


@dataclasses.dataclass(frozen=True)
class Adversary:
  """Sure about changing every given token, unsure at masks: touching a given token shows."""

  def __call__(self, params, tokens, cache, positions=None, ids=None):
    peaked = 30.0 * jax.nn.one_hot((tokens + 1) % MASK, V)
    logits = jnp.where((tokens != MASK)[..., None], peaked, 0.0)
    return logits.at[..., MASK].set(NEG), cache


def subs(rows):
  """[L][9] real-token logits -> [L, V] float32 with the mask's SUBS logit appended."""
  return jnp.asarray([tuple(r) + (NEG,) for r in rows], jnp.float32)


def masked(B, L):
  return jnp.full((B, L), MASK, jnp.int32)


def p_value(counts, probs):
  """Chi-square goodness of fit; cells with expectation <= 5 pooled."""
  n = counts.sum()
  e = np.asarray(probs, np.float64) * n
  keep = e > 5
  obs = np.append(counts[keep], counts[~keep].sum())
  exp = np.append(e[keep], e[~keep].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  chi = float(((obs - exp) ** 2 / exp).sum())
  return float(jstats.chi2.sf(chi, len(exp) - 1))


def one_step(rule, s, eligible):
  """(count [B], committed [B, L] bool) of the first step of decode_loop given scores s [B, L]
  at the `eligible` [B, L] masks. The fake proposal writes 1 + the number of filled positions it
  sees, so the first step's commits are the positions that hold 1 + #(not eligible) at the end."""
  s, eligible = jnp.asarray(s, jnp.float32), np.asarray(eligible)
  x = jnp.where(eligible, -1, 0).astype(jnp.int32)  # mask_id -1: any proposal value is a token
  filled = lambda x: jnp.sum(x != -1, axis=1, keepdims=True)
  propose = lambda rng, x: (jnp.broadcast_to(1 + filled(x), x.shape), s)
  out, _, history = pd.decode_loop(propose, x, jax.random.key(0), jnp.ones(x.shape, bool), rule,
                                   x.shape[1], -1)
  committed = eligible & (np.asarray(out) == 1 + (~eligible).sum(1, keepdims=True))
  np.testing.assert_array_equal(committed.sum(1), eligible.sum(1) - np.asarray(history[0]))
  return committed.sum(1), committed


# --- closed-form counts ------------------------------------------------------------------------

def test_factor_commits_the_largest_n_with_n_plus_1_times_1_minus_c_below_f():
  c = [[0.75, 0.99, 0.1, 0.8, 0.7]]  # sorted .99 .8 .75 .7 .1: (n+1)(1-c) = .02 .6 1.0 1.5 4.5
  first, committed = one_step(pd.Factor(1.0), c, [[True] * 5])
  assert first[0] == 2  # n = 3 gives exactly f: the paper's rule is strict
  np.testing.assert_array_equal(committed[0], [False, True, False, True, False])
  assert one_step(pd.Factor(1.01), c, [[True] * 5])[0][0] == 3
  assert one_step(pd.Factor(0.01), c, [[True] * 5])[0][0] == 1  # always at least one


def test_eb_commits_the_largest_prefix_whose_entropy_sum_minus_max_fits_gamma():
  H = [[0.05, 0.02, 0.3, 0.01, 1.0]]  # ascending .01 .02 .05 .3 1: sum - max = 0 .01 .03 .08 .38
  s = -np.asarray(H)
  assert one_step(pd.EntropyBound(0.1), s, [[True] * 5])[0][0] == 4
  assert one_step(pd.EntropyBound(0.03), s, [[True] * 5])[0][0] == 3
  assert one_step(pd.EntropyBound(0.0), s, [[True] * 5])[0][0] == 1
  # ineligible positions (H .05 and .01 here) are neither counted nor committed: eligible
  # .02 .3 1 give sum - max = 0 .02 .32
  first, committed = one_step(pd.EntropyBound(0.1), s, [[False, True, True, False, True]])
  np.testing.assert_array_equal(committed[0], [False, True, True, False, False])


def test_threshold_commits_every_confidence_at_least_tau_or_the_best():
  c = [[0.95, 0.5, 0.91, 0.2], [0.3, 0.5, 0.4, 0.2]]
  first, committed = one_step(pd.Threshold(0.9), c, np.ones((2, 4), bool))
  np.testing.assert_array_equal(first, [2, 1])
  np.testing.assert_array_equal(committed, [[True, False, True, False], [False, True, False, False]])


@pytest.mark.parametrize('seed', range(3))
def test_random_scores_match_a_brute_force_reference(seed):
  rng = np.random.default_rng(seed)
  B, L = 64, 12
  eligible = rng.random((B, L)) < 0.7
  eligible[:, 0] = True
  c = 1 - rng.random((B, L)) ** 3 * 0.5  # confidences in (0.5, 1]
  H = rng.exponential(0.05, (B, L))
  f, gamma = 1.5, 0.12

  def brute(values, passes):
    return max([n for n in range(1, len(values) + 1) if passes(values[:n])] + [1])

  for rule, s, want in [
      (pd.Factor(f), c, lambda v: brute(np.sort(v)[::-1], lambda t: (len(t) + 1) * (1 - t[-1]) < f)),
      (pd.EntropyBound(gamma), -H, lambda v: brute(np.sort(-v), lambda t: t.sum() - t.max() <= gamma))]:
    first, committed = one_step(rule, s, eligible)
    expected = [want(s[b][eligible[b]]) for b in range(B)]
    np.testing.assert_array_equal(first, expected)
    for b in range(B):  # the committed ones are the best-scored eligible positions
      assert s[b][committed[b]].min() >= s[b][eligible[b] & ~committed[b]].max(initial=-np.inf)


# --- whole steps on fake models ----------------------------------------------------------------

RULES = [dict(strategy='threshold', tau=0.9), dict(strategy='factor', factor=1.0),
         dict(strategy='eb', gamma=0.0)]


@pytest.mark.parametrize('kw', RULES)
def test_full_confidence_commits_everything_in_one_step(kw):
  sure = subs([[0.0] + [NEG] * 8] * 7)  # exact one-hot rows: c = 1, H = 0
  out = parallel_decode(ParamsLogits(), sure, masked(3, 7), jax.random.key(0), mask_id=MASK, **kw)
  assert int(out.nfe) == 1 and np.all(np.asarray(out.tokens) == 0)


@pytest.mark.parametrize('kw', RULES + [dict(strategy='eb', gamma=0.5)])
def test_every_step_commits_at_least_one_token(kw):
  flat = subs([[0.0] * 9] * 6)  # c = 1/9, H = log 9 > 0.5: no rule accepts a second token
  out = parallel_decode(ParamsLogits(), flat, masked(2, 6), jax.random.key(1), mask_id=MASK, **kw)
  assert int(out.nfe) == 6 and np.all(np.asarray(out.tokens) != MASK)
  np.testing.assert_array_equal(out.history[:, 0], [5, 4, 3, 2, 1, 0])
  capped = parallel_decode(ParamsLogits(), flat, masked(2, 6), jax.random.key(1), mask_id=MASK,
                           max_steps=2, **kw)
  assert int(capped.nfe) == 2 and np.all(np.asarray(capped.tokens) != MASK)


MARGINALS = [(2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0),
             (0.0,) * 9,
             (-3.0, -2.0, -1.0, 0.0, 3.0, 0.0, -1.0, -2.0, -3.0),
             (1.0, 0.8, 0.6, 0.4, 0.2, 0.0, -0.2, -0.4, -0.6)]


@pytest.mark.parametrize('kw', [dict(strategy='topk', steps=4), dict(strategy='topk', steps=2),
                                dict(strategy='threshold', tau=0.3),
                                dict(strategy='factor', factor=2.5),
                                dict(strategy='eb', gamma=0.0), dict(strategy='eb', gamma=3.0)])
def test_draw_independent_orders_sample_p_theta_exactly(kw):
  """confidence='max' and EB's entropy rank positions by x alone, so on a context-free model
  every position's tokens follow p_theta (EB with gamma = 0: one token per step)."""
  n = 6000
  out = parallel_decode(ParamsLogits(), subs(MARGINALS), masked(n, 4), jax.random.key(2),
                        mask_id=MASK, **kw)
  tokens = np.asarray(out.tokens)
  for l, row in enumerate(MARGINALS):
    p = np.asarray(jax.nn.softmax(jnp.asarray(row)), np.float64)
    assert p_value(np.bincount(tokens[:, l], minlength=9), p) > 1e-4, (kw, l)
  if kw == dict(strategy='eb', gamma=0.0):
    assert int(out.nfe) == 4


def sampled_first_marginal(p):
  """Two context-free positions with the same p, top-k with one token per step, ranked by the
  drawn token's probability: position 0 wins the first step iff p(a) >= p(b) (ties to the lower
  index), the other is redrawn. P(x_0 = u) = p_u (P(p_b <= p_u) + P(p_a < p_b))."""
  le = np.array([p[p <= pu].sum() for pu in p])
  lt = np.array([p[p < pu].sum() for pu in p])
  return p * (le + (p * lt).sum())


def test_sampled_confidence_follows_its_order_statistic_and_max_does_not():
  row = (1.5, 1.0, 0.6, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2)  # distinct probabilities
  p = np.asarray(jax.nn.softmax(jnp.asarray(row)), np.float64)
  logits, n = subs([row, row]), 20000
  kw = dict(mask_id=MASK, steps=2)
  biased = confidence_topk(ParamsLogits(), logits, masked(n, 2), jax.random.key(3),
                           confidence='sampled', **kw)
  counts = np.bincount(np.asarray(biased.tokens[:, 0]), minlength=9)
  q = sampled_first_marginal(p)
  assert p_value(counts, q) > 1e-4
  assert p_value(counts, p) < 1e-6  # the bias is visible at this size
  exact = confidence_topk(ParamsLogits(), logits, masked(n, 2), jax.random.key(3), **kw)
  assert p_value(np.bincount(np.asarray(exact.tokens[:, 0]), minlength=9), p) > 1e-4


# --- the rules in the samplers -----------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_mdlm():
  model = md.build(TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4,
                                     mask='bidirectional'))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))['params']
  return params, md.LogitsFn(model, mask_id=39)


def test_max_and_sampled_confidence_agree_at_temperature_0(tiny_mdlm):
  params, f = tiny_mdlm
  x = jnp.full((3, 12), 39, jnp.int32).at[:, :2].set(5)
  for sampler, kw in [(confidence_topk, dict(steps=4)), (confidence_threshold, dict(tau=0.05)),
                      (semi_autoregressive, dict(block_len=4, strategy='factor', factor=3.0))]:
    a, b = (sampler(f, params, x, jax.random.key(4), mask_id=39, temperature=0.0, confidence=c,
                    **kw) for c in ('max', 'sampled'))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert int(a.nfe) == int(b.nfe)


@pytest.mark.parametrize('kw', [dict(strategy='factor', factor=2.0), dict(strategy='eb', gamma=0.5)])
def test_one_semi_ar_block_over_the_region_is_parallel_decode(tiny_mdlm, kw):
  params, f = tiny_mdlm
  x = jnp.full((3, 12), 39, jnp.int32).at[:, :2].set(5)
  whole = parallel_decode(f, params, x, jax.random.key(5), mask_id=39, temperature=0.0, **kw)
  semi = semi_autoregressive(f, params, x, jax.random.key(5), mask_id=39, temperature=0.0,
                             block_len=10, **kw)
  np.testing.assert_array_equal(whole.tokens, semi.tokens)
  assert int(whole.nfe) == int(semi.nfe)


@pytest.mark.parametrize('kw', [dict(strategy='factor', factor=1.0), dict(strategy='eb', gamma=0.1),
                                dict(strategy='topk', steps_per_block=2, confidence='sampled')])
def test_semi_ar_with_new_rules_keeps_given_tokens(kw):
  rng = np.random.default_rng(0)
  x = rng.integers(0, MASK, (4, 12))
  hole = rng.random((4, 12)) < 0.6
  hole[:, :2] = hole[:, -2:] = False
  hole[:, 2] = True
  x = jnp.asarray(np.where(hole, MASK, x), jnp.int32)
  out = semi_autoregressive(Adversary(), None, x, jax.random.key(6), mask_id=MASK, block_len=3,
                            window=6, **kw)
  tokens = np.asarray(out.tokens)
  np.testing.assert_array_equal(tokens[~hole], np.asarray(x)[~hole])
  assert np.all(tokens != MASK)


def test_loop_names_other_samplers_import_still_work():
  """sample/dllm_cache.py builds on _propose, _topk_loop and _threshold_loop."""
  logits = subs(MARGINALS)
  x = masked(2, 4)
  propose = lambda rng, x: _propose(ParamsLogits(), logits, x, rng, 0, 4, 1.0, 0, 1.0)
  region = jnp.ones(x.shape, bool)
  y, nfe, history = _topk_loop(propose, x, jax.random.key(7), region, 2, MASK)
  assert int(nfe) == 2 and history.shape == (2, 2) and np.all(np.asarray(y) != MASK)
  y, nfe, history = _threshold_loop(propose, x, jax.random.key(7), region, 4, 1.1, MASK)
  assert int(nfe) == 4 and np.all(np.asarray(y) != MASK)


def test_bad_rule_arguments_fail_clearly():
  f, x, key = ParamsLogits(), masked(1, 3), jax.random.key(0)
  logits = subs(MARGINALS[:3])
  with pytest.raises(ValueError, match='factor must be > 0'):
    parallel_decode(f, logits, x, key, mask_id=MASK, strategy='factor', factor=0.0)
  with pytest.raises(ValueError, match='gamma must be >= 0'):
    parallel_decode(f, logits, x, key, mask_id=MASK, strategy='eb', gamma=-1.0)
  with pytest.raises(ValueError, match='steps_per_block'):
    semi_autoregressive(f, logits, x, key, mask_id=MASK, block_len=2, strategy='topk')
  with pytest.raises(ValueError, match='confidence must be'):
    confidence_topk(f, logits, x, key, mask_id=MASK, steps=2, confidence='gumbel')
  with pytest.raises(ValueError, match='strategy must be one of'):
    parallel_decode(f, logits, x, key, mask_id=MASK, strategy='margin')


def test_a_carry_is_threaded_through_the_proposals_without_changing_them():
  """decode_loop(carry=): what sample/dllm_cache.py threads (its KV cache and call counter)."""
  logits = subs(MARGINALS)
  x, region, key = masked(3, 4), jnp.ones((3, 4), bool), jax.random.key(8)
  plain = lambda rng, x: _propose(ParamsLogits(), logits, x, rng, 0, 4, 1.0, 0, 1.0, 'entropy')
  counted = lambda rng, x, calls: (*plain(rng, x), calls + 1)
  rule = pd.EntropyBound(0.5)
  y, nfe, history = pd.decode_loop(plain, x, key, region, rule, 4, MASK)
  y2, nfe2, history2, calls = pd.decode_loop(counted, x, key, region, rule, 4, MASK,
                                             carry=jnp.zeros((), jnp.int32))
  np.testing.assert_array_equal(y, y2)
  np.testing.assert_array_equal(history, history2)
  assert int(nfe) == int(nfe2) == int(calls)
