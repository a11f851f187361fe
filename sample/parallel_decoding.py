"""Commit rules of parallel decoding for masked diffusion LMs, and the one loop that runs them.

Each step the network proposes x_hat^l ~ p_theta(. | x) at every masked position l of a region
(a tempered draw; temperature 0 = argmax) with a score s^l. A rule sorts the eligible scores,
s_(1) >= s_(2) >= ... >= s_(M) over the M masks left in the region, and commits the n best
proposals; the other positions stay masked and are proposed afresh at the next step. Nothing is
ever remasked. n is clipped to [1, M], so every step makes progress (at most M steps), and the
last allowed step (`max_steps`) commits every remaining proposal.

| rule | score s | n at step i | source |
|---|---|---|---|
| `TopK(steps)` | c | k_i = M_0 // S + [i < M_0 % S] | LLaDA low-confidence remasking (`get_num_transfer_tokens`) |
| `Threshold(tau)` | c | #{n : c_(n) >= tau} | Fast-dLLM threshold rule (Wu et al. 2025, Sec. 3.3) |
| `Factor(f)` | c | max{n : (n + 1)(1 - c_(n)) < f} | Fast-dLLM factor rule (same section) |
| `EntropyBound(gamma)` | -H | max{n : sum_{j<=n} H_(j) - max_{j<=n} H_(j) <= gamma} | EB-sampler (Ben-Hamu et al. 2025) |

M_0 is the row's number of masks in the region when the loop starts and S the step budget;
H = -sum_v p(v) log p(v) is the entropy in nats of the untempered softmax (EB-sampler's error
proxy and its budget; the order is by increasing H). The confidence c comes in two forms:
- confidence='max' (default): c = max_v softmax(logits)_v, the probability of the argmax, as
  in the papers (LLaDA's low-confidence remasking predicts by argmax; Fast-dLLM's analysis is of
  greedy decoding). It does not depend on the draw, so which positions are committed is decided
  by x alone and every committed token is an exact draw from p_theta(. | x).
- confidence='sampled': c = softmax(logits)[x_hat], the untempered probability of the drawn
  proposal, as the LLaDA and Fast-dLLM reference code compute it at temperature > 0 (their
  Gumbel draw, then `x0_p`). The commit order then depends on the draws: the position whose draw
  happened to be a frequent token ranks first, so the committed tokens are a maximum over draws,
  biased towards frequent tokens even for a context-free model (the order statistic q_j =
  (1 - G_{j-1})^2 - (1 - G_j)^2 of tests/test_parallel_decoding.py). On a weak model whose
  conditionals far from decoded text are near the unigram this collapses the text to spaces
  (arena rows confidence_topk / confidence_threshold). At temperature 0 both forms coincide.

Every count is the size of a prefix of the sorted scores: (n + 1)(1 - c_(n)) grows with n
because c_(n) falls, and sum_{j<=n} H_(j) - max_{j<=n} H_(j) = sum_{j<n} H_(j) grows with n
(ascending H), so counting the n that pass gives the largest passing n.

Against the reference code (checked): Fast-dLLM's `get_transfer_index_dynamic` keeps n while
c_(n) >= 1 - f/(n + 1), i.e. (n + 1)(1 - c_(n)) <= f, and through an off-by-one also commits all
M when only c_(M) fails; we follow the paper (strict <, and c_(M) must pass too). EB-sampler's
reference loop decodes the whole answer at once; here it also runs inside semi-AR blocks.

`decode_loop(propose, x, rng, region, rule, max_steps, mask_id, carry=None)` is the seam other
samplers (`sample.dllm_cache`) build on: `propose(rng, x [B, L]) -> (x_hat [B, L] int32,
s [B, L])`, with s = `score(logits, x_hat, rule.score)`; with a `carry` (a cache) the proposal
also takes and returns it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp


SCORES = ('max', 'sampled', 'entropy')


def score(logits, x_hat, kind: str):
  """A rule's score per position: logits [B, L, V] (untempered), x_hat [B, L] -> [B, L] float32.

  kind 'max': c = max_v softmax(logits)_v; 'sampled': c = softmax(logits)[x_hat]; 'entropy':
  -H(softmax(logits)) in nats, so that, as for c, higher means more certain (committed first)."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
  if kind == 'max':
    return jnp.exp(jnp.max(logits, axis=-1) - lse)
  if kind == 'sampled':
    picked = jnp.take_along_axis(logits, x_hat[..., None], axis=-1)[..., 0]
    return jnp.exp(picked - lse)
  if kind == 'entropy':
    p = jnp.exp(logits - lse[..., None])  # the SUBS mask logit (-1e6) gives p = 0 exactly
    return jnp.sum(p * logits, axis=-1) - lse  # -H = sum_v p_v log p_v
  raise ValueError(f'score kind must be one of {SCORES}, got {kind!r}')


# --- Rules: frozen dataclasses (static, hashable), count(s_sorted, m0, i) -> n [B] ----------------
# s_sorted [B, L]: the step's scores in descending order, -inf past the eligible ones;
# m0 [B]: masks in the region when the loop started; i []: the step index.

@dataclasses.dataclass(frozen=True)
class TopK:
  """LLaDA: k_i = M_0 // S + [i < M_0 % S] most confident; S steps empty the region."""
  steps: int
  confidence: str = 'max'  # 'max' | 'sampled' (module doc)

  @property
  def score(self) -> str:
    return self.confidence

  def count(self, s_sorted, m0, i):
    return m0 // self.steps + (i < m0 % self.steps)

  def max_steps(self, size: int) -> int:
    return self.steps


@dataclasses.dataclass(frozen=True)
class Threshold:
  """Fast-dLLM: every proposal with c >= tau (and always the most confident one)."""
  tau: float
  confidence: str = 'max'

  @property
  def score(self) -> str:
    return self.confidence

  def count(self, s_sorted, m0, i):
    return jnp.sum(s_sorted >= self.tau, axis=1)

  def max_steps(self, size: int) -> int:
    return size


@dataclasses.dataclass(frozen=True)
class Factor:
  """Fast-dLLM factor rule: the largest n with (n + 1)(1 - c_(n)) < f."""
  f: float
  confidence: str = 'max'

  @property
  def score(self) -> str:
    return self.confidence

  def count(self, s_sorted, m0, i):
    n = jnp.arange(1, s_sorted.shape[1] + 1, dtype=jnp.float32)  # [L]
    return jnp.sum((n + 1) * (1 - s_sorted) < self.f, axis=1)  # -inf scores never pass

  def max_steps(self, size: int) -> int:
    return size


@dataclasses.dataclass(frozen=True)
class EntropyBound:
  """EB-sampler: the largest prefix (by increasing H) with sum H - max H <= gamma."""
  gamma: float
  score: ClassVar[str] = 'entropy'  # the order and the budget are both by entropy

  def count(self, s_sorted, m0, i):
    valid = jnp.isfinite(s_sorted)
    H = jnp.where(valid, -s_sorted, 0.0)  # [B, L] ascending entropies
    before = jnp.cumsum(H, axis=1) - H  # sum_{j<n} H_(j) = sum_{j<=n} H_(j) - max_{j<=n} H_(j)
    return jnp.sum(valid & (before <= self.gamma), axis=1)

  def max_steps(self, size: int) -> int:
    return size


STRATEGIES = ('topk', 'threshold', 'factor', 'eb')


def make_rule(strategy: str, *, steps: int | None = None, tau: float = 0.9, factor: float = 1.0,
              gamma: float = 0.1, confidence: str = 'max'):
  """The rule of a strategy name: 'topk' (steps), 'threshold' (tau), 'factor' (factor) or
  'eb' (gamma, nats); the first three rank by `confidence` ('max' or 'sampled', module doc)."""
  if confidence not in ('max', 'sampled'):
    raise ValueError(f"confidence must be 'max' (probability of the argmax, the papers') or "
                     f"'sampled' (probability of the drawn proposal, their code at temperature > 0)"
                     f", got {confidence!r}")
  if strategy == 'topk':
    if steps is None or steps < 1:
      raise ValueError(f"strategy='topk' needs its step count >= 1 (steps_per_block in "
                       f"semi_autoregressive, steps in parallel_decode), got {steps}")
    return TopK(steps, confidence)
  if strategy == 'threshold':
    return Threshold(tau, confidence)
  if strategy == 'factor':
    if not factor > 0:
      raise ValueError(f'factor must be > 0 (Fast-dLLM commits n while (n+1)(1-c_(n)) < factor), '
                       f'got {factor}')
    return Factor(factor, confidence)
  if strategy == 'eb':
    if not gamma >= 0:
      raise ValueError(f'gamma must be >= 0 (the entropy budget in nats), got {gamma}')
    return EntropyBound(gamma)
  raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')


def decode_loop(propose: Callable, x, rng, region, rule, max_steps: int, mask_id: int, *,
                carry: Any = None):
  """Decodes the masked positions inside `region` [B, L] bool by `rule` (module doc).

  propose(rng, x [B, L]) -> (x_hat [B, L] int32, s [B, L] the rule's score). Step i uses
  fold_in(rng, i). A `lax.while_loop` runs until the region has no mask or `max_steps` steps
  ran; the last allowed step commits every remaining proposal. Ties in s go to the lower index.
  Returns (x [B, L], nfe [] int32 = steps run, history [max_steps, B] masks left in each row
  after each step; steps after the loop ended repeat the final count).

  carry: state a proposal threads from step to step (e.g. a KV cache and its call counter).
  When given, propose(rng, x, carry) -> (x_hat, s, carry) and the final carry is returned
  too: (x, nfe, history, carry).
  """
  B, L = x.shape
  m0 = jnp.sum((x == mask_id) & region, axis=1).astype(jnp.int32)  # [B]
  step = propose if carry is not None else lambda rng, x, c: (*propose(rng, x), c)

  def cond(state):
    x, i, _, _ = state
    return (i < max_steps) & jnp.any((x == mask_id) & region)

  def body(state):
    x, i, history, c = state
    x_hat, s, c = step(jax.random.fold_in(rng, i), x, c)  # [B, L] each
    eligible = (x == mask_id) & region
    m = jnp.sum(eligible, axis=1).astype(jnp.int32)  # [B]
    s = jnp.where(eligible, s, -jnp.inf)
    order = jnp.argsort(-s, axis=1)  # stable: ties keep the lower index first
    s_sorted = jnp.take_along_axis(s, order, axis=1)
    n = jnp.clip(rule.count(s_sorted, m0, i).astype(jnp.int32), 1, m)
    n = jnp.where(i == max_steps - 1, m, n)
    rank = jnp.argsort(order, axis=1)  # [B, L] 0 = committed first
    x = jnp.where(eligible & (rank < n[:, None]), x_hat, x)
    return x, i + 1, history.at[i].set(_masks_left(x, mask_id)), c

  init = (x, jnp.zeros((), jnp.int32), jnp.zeros((max_steps, B), jnp.int32), carry)
  x, nfe, history, carry_out = jax.lax.while_loop(cond, body, init)
  history = jnp.where(jnp.arange(max_steps)[:, None] < nfe, history, _masks_left(x, mask_id))
  if carry is None:
    return x, nfe, history
  return x, nfe, history, carry_out


def _masks_left(x, mask_id):
  return jnp.sum(x == mask_id, axis=1).astype(jnp.int32)  # [B]
