"""SEDD (paradigms/sedd.py, sample/sedd.py): the score entropy against a direct loop over states
written from the paper's formula, its zero at the true ratios, the forward marginal by frequency,
reverse rates that sum to zero, the Tweedie sampler with the exact score of a known distribution
(chi-square), and the config through the trainer and `python -m sample`."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from paradigms import sedd
from sample import sedd as ss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M = 5  # real tokens 0..4 (the mask of the absorbing chain is 5)


def options(graph):
  return sedd.Options(graph=graph, schedule='geometric' if graph == 'uniform' else 'loglinear',
                      mask_id=M)


def np_transition(graph, x0, s):
  """p_{t|0}(. | x0) written out for one position: [N]."""
  if graph == 'uniform':
    p = np.full(M, (1 - np.exp(-s)) / M)
    p[x0] += np.exp(-s)
    return p
  p = np.zeros(M + 1)
  p[x0], p[M] = np.exp(-s), 1 - np.exp(-s)
  return p


def np_score_entropy(graph, l, x, x0, s):
  """sum_{y != x} w(x, y) [e^l_y - r_y l_y + K(r_y)], K(a) = a (log a - 1), one position."""
  p = np_transition(graph, x0, s)
  N = len(p)
  total = 0.0
  for y in range(N):
    if y == x:
      continue
    w = 1.0 / N if graph == 'uniform' else float(x == M and y != M)
    r = p[y] / p[x]
    K = r * (np.log(r) - 1) if r > 0 else 0.0
    total += w * (np.exp(l[y]) - r * l[y] + K)
  return total


@pytest.mark.parametrize('graph', ['uniform', 'absorb'])
def test_score_entropy_matches_the_formula_and_vanishes_at_the_true_ratios(graph):
  opt = options(graph)
  N = opt.num_states
  rng = np.random.default_rng(0)
  B, L = 3, 4
  x0 = rng.integers(0, M, (B, L))
  x = np.where(rng.random((B, L)) < 0.6, M if graph == 'absorb' else rng.integers(0, M, (B, L)),
               x0)
  s = np.array([0.1, 0.7, 3.0])
  l = rng.normal(size=(B, L, N))
  got = sedd.score_entropy(opt, jnp.asarray(l, jnp.float32), jnp.asarray(x), jnp.asarray(x0),
                           jnp.asarray(s, jnp.float32))
  want = [[np_score_entropy(graph, l[b, i], x[b, i], x0[b, i], s[b]) for i in range(L)]
          for b in range(B)]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
  # the true log ratios log p(y|x0)/p(x|x0) give exactly 0, and any other score more
  p = np.stack([[np_transition(graph, x0[b, i], s[b]) for i in range(L)] for b in range(B)])
  ratio = p / np.take_along_axis(p, x[..., None], -1)
  true = np.log(np.maximum(ratio, 1e-30))
  at_true = sedd.score_entropy(opt, jnp.asarray(true, jnp.float32), jnp.asarray(x),
                               jnp.asarray(x0), jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(at_true, 0.0, atol=1e-5)
  assert (np.asarray(got) >= np.asarray(at_true) - 1e-6).all()


@pytest.mark.parametrize('graph', ['uniform', 'absorb'])
def test_forward_marginal_matches_the_closed_form_by_frequency(graph):
  opt = options(graph)
  n, x0, s = 40_000, 2, 0.8
  x = sedd.perturb(jax.random.key(1), opt, jnp.full((1, n), x0), jnp.full((1, 1), s))
  counts = np.bincount(np.asarray(x).ravel(), minlength=opt.num_states)
  p = np_transition(graph, x0, s)
  keep = p > 0
  assert counts[~keep].sum() == 0
  assert stats.chisquare(counts[keep], n * p[keep]).pvalue > 1e-3


@pytest.mark.parametrize('graph', ['uniform', 'absorb'])
def test_reverse_rates_sum_to_zero_per_row(graph):
  opt = options(graph)
  x = jnp.arange(opt.num_states)
  score = jnp.exp(jax.random.normal(jax.random.key(0), (opt.num_states, opt.num_states)))
  R = np.asarray(ss.reverse_rate(opt, x, score))
  np.testing.assert_allclose(R.sum(-1), 0.0, atol=1e-5)
  off = R - np.diag(np.diag(R))
  assert (off >= 0).all() and (np.diag(R) <= 0).all()
  if graph == 'absorb':  # only a mask can jump, and only to a real token
    assert (R[:M] == 0).all() and R[M, M] < 0 and (R[M, :M] > 0).all()


@dataclasses.dataclass(frozen=True)
class ExactScore:
  """The exact log score of one-position data distributed as `pi` (a tuple over the M tokens)."""
  opt: sedd.Options
  pi: tuple

  def __call__(self, params, x, t, sigma):
    N = self.opt.num_states
    pi = jnp.asarray(self.pi)
    p_t = sum(pi[k] * sedd.transition(self.opt, jnp.asarray(k), sigma) for k in range(M))  # [B, N]
    logp = jnp.log(jnp.maximum(p_t, 1e-30))[:, None, :]  # [B, 1, N]
    return logp - jnp.take_along_axis(logp, x[..., None], -1)


@pytest.mark.parametrize('graph,method,steps', [('uniform', 'tweedie', 32), ('absorb', 'tweedie', 4),
                                                ('uniform', 'euler', 128), ('absorb', 'euler', 128)])
def test_sampler_with_the_exact_score_draws_the_data_distribution(graph, method, steps):
  opt = options(graph)
  pi = (0.4, 0.3, 0.15, 0.1, 0.05)
  n = 20_000
  out = ss.sample(ExactScore(opt, pi), None, jnp.zeros((n, 0), jnp.int32), jax.random.key(3),
                  length=1, steps=steps, method=method)
  assert int(out.nfe) == steps + 1
  counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=opt.num_states)
  assert counts[M:].sum() == 0  # no mask survives, no state outside the tokens
  assert stats.chisquare(counts[:M], n * np.asarray(pi)).pvalue > 1e-3


def test_prompt_is_kept_and_bad_arguments_fail():
  opt = options('uniform')
  prompt = jnp.array([[1, 2], [3, 4]])
  out = ss.sample(ExactScore(opt, (0.2,) * 5), None, prompt, jax.random.key(0), length=5, steps=2)
  np.testing.assert_array_equal(out.tokens[:, :2], prompt)
  with pytest.raises(ValueError, match='method'):
    ss.sample(ExactScore(opt, (0.2,) * 5), None, prompt, jax.random.key(0), length=5,
              method='ddim')
  with pytest.raises(ValueError, match='graph'):
    sedd.Options(graph='gaussian')


def test_tiny_config_trains_evaluates_and_samples_through_the_cli(tmp_path, capsys):
  from sample.__main__ import main as sample_main
  from train.config import from_file
  from train.trainer import train
  for variant in ('', ',absorb'):
    c = from_file(os.path.join(ROOT, 'configs', f'sedd_code.py:tiny{variant}'))
    c.data.cache_dir = str(tmp_path)
    c.train.update(steps=6, eval_every=6, ckpt_every=6, log_every=3)
    wd = str(tmp_path / f'run{variant}')
    out = train(c, wd)
    assert np.isfinite(out['loss']) and out['loss'] > 0
    capsys.readouterr()
    sample_main(['--workdir', wd, '--prompt', 'def ', '--num', '2', '--max-new-tokens', '12',
                 '--steps', '3', '--json'])
    import json
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and all(len(r['tokens']) == 12 and r['nfe'] == 4 for r in rows)
    assert all(bytes(r['prompt_tokens']) == b'def ' for r in rows)
