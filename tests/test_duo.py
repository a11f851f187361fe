"""Uniform-state diffusion (paradigms/duo.py, sample/duo.py): the NELBO integrand against the
limit of the discrete KL terms, the posterior against Bayes' rule, the forward marginal by
frequency, the ancestral sampler with the exact x_theta of a known distribution (chi-square), and
the config through the trainer and `python -m sample`."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from paradigms import duo
from sample import duo as sd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 5
OPT = duo.Options(mask_id=N)


def np_posterior(x, i, a_s, a_t):
  """q(z_s = y | z_t = i, x) by Bayes' rule, float64."""
  prior = a_s * x + (1 - a_s) / N
  like = np.where(np.arange(N) == i, a_t / a_s, 0.0) + (1 - a_t / a_s) / N
  p = like * prior
  return p / p.sum()


def test_posterior_is_bayes_rule():
  rng = np.random.default_rng(0)
  x = rng.dirichlet(np.ones(N), size=3)
  z = np.array([0, 3, 4])
  got = duo.posterior(OPT, jnp.asarray(x, jnp.float32), jnp.asarray(z), 0.7, 0.4)
  want = [np_posterior(x[b], z[b], 0.7, 0.4) for b in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('t', [0.1, 0.5, 0.9])
def test_nelbo_integrand_is_the_limit_of_the_discrete_kl(t):
  """f(z_t = i) = lim KL(q(z_s | z_t, x) || q(z_s | z_t, x_theta)) / dt for every i (float64
  reference with dt = 1e-6), zero at x_theta = x, and positive otherwise."""
  rng = np.random.default_rng(1)
  x0 = 2
  x_hat = rng.dirichlet(np.ones(N))
  alpha = lambda t: 1 - (1 - 1e-3) * t  # the log-linear schedule (eps = 1e-3), in float64
  a, da, dt = alpha(t), -(1 - 1e-3), 1e-6
  a_s = alpha(t - dt)
  z = jnp.arange(N)[None]  # every state at once, as one row of N positions
  f = np.asarray(duo.nelbo_integrand(OPT, jnp.asarray(np.tile(x_hat, (1, N, 1)), jnp.float32),
                                     z, jnp.full((1, N), x0), jnp.asarray([a]),
                                     jnp.asarray([da])))[0]
  one = np.eye(N)[x0]
  for i in range(N):
    q, p = np_posterior(one, i, a_s, a), np_posterior(x_hat, i, a_s, a)
    np.testing.assert_allclose(f[i], np.sum(q * np.log(q / p)) / dt, rtol=2e-3)
  assert (f > 0).all()
  exact = duo.nelbo_integrand(OPT, jnp.asarray(np.tile(one, (1, N, 1)), jnp.float32), z,
                              jnp.full((1, N), x0), jnp.asarray([a]), jnp.asarray([da]))
  np.testing.assert_allclose(exact, 0.0, atol=1e-4)


def test_forward_marginal_matches_the_closed_form_by_frequency():
  n, x0, a = 40_000, 3, 0.35
  z = duo.perturb(jax.random.key(2), OPT, jnp.full((1, n), x0), jnp.full((1, 1), a))
  counts = np.bincount(np.asarray(z).ravel(), minlength=N)
  p = np.full(N, (1 - a) / N)
  p[x0] += a
  assert stats.chisquare(counts, n * p).pvalue > 1e-3


@dataclasses.dataclass(frozen=True)
class ExactXTheta:
  """The NELBO-optimal x_theta of one position whose clean token is distributed as `pi`.

  The posterior formula num(x) / den(x) is linear in x in both parts, so the true reverse step
  sum_x p(x | z_t) num(x) / den(x) = sum_x pi(x) num(x) / sum_x pi(x) den(x) (p(x | z_t) is
  proportional to pi(x) den(x)) is the formula at x_theta = pi, for every z_t and t. (Not
  E[x | z_t]: unlike the absorbing chain's, den(x) = N q(z_t | x) depends on x.)"""
  opt: duo.Options
  pi: tuple

  def __call__(self, params, z, t):
    return jnp.broadcast_to(jnp.asarray(self.pi), z.shape + (N,))


@pytest.mark.parametrize('steps,eta', [(2, 0.0), (16, 0.0), (8, 0.5)])
def test_ancestral_sampler_with_the_exact_x_theta_draws_the_data_distribution(steps, eta):
  """Also with the corrector (eta > 0): the mixture keeps the marginal."""
  pi = (0.4, 0.3, 0.15, 0.1, 0.05)
  n = 20_000
  out = sd.sample(ExactXTheta(OPT, pi), None, jnp.zeros((n, 0), jnp.int32), jax.random.key(4),
                  length=1, steps=steps, eta=eta)
  assert int(out.nfe) == steps + 1
  counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=N)
  assert stats.chisquare(counts, n * np.asarray(pi)).pvalue > 1e-3


def test_tiny_config_trains_and_samples_through_the_cli(tmp_path, capsys):
  from sample.__main__ import main as sample_main
  from train.cli import UserError
  from train.config import from_file
  from train.trainer import train
  c = from_file(os.path.join(ROOT, 'configs', 'duo_code.py:tiny'))
  c.data.cache_dir = str(tmp_path)
  c.train.update(steps=6, eval_every=6, ckpt_every=6, log_every=3)
  wd = str(tmp_path / 'run')
  out = train(c, wd)
  assert np.isfinite(out['loss']) and out['loss'] > 0
  capsys.readouterr()
  sample_main(['--workdir', wd, '--prompt', 'def ', '--num', '2', '--max-new-tokens', '10',
               '--steps', '3', '--strategy', 'greedy_tail', '--json'])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert len(rows) == 2 and all(len(r['tokens']) == 10 and r['nfe'] == 4 for r in rows)
  with pytest.raises(UserError, match='greedy_tail'):
    sample_main(['--workdir', wd, '--prompt', 'def ', '--strategy', 'tweedie'])
