"""DUO's Gaussian duality (paradigms/duo.py): the transformation operator T against argmax
frequencies, its inverse and derivative, soft one-hot inputs against token inputs, the
curriculum loss in its tau -> 0 limit, deterministic trajectories, the distillation rounds
(teacher refresh, delta doubling) by hand and through the trainer with a warm start, and the
few-step sampler's network-evaluation count."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paradigms import duo
from paradigms.nn.transformer import Transformer, TransformerConfig
from sample import duo as sd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 7
OPT = duo.Options(mask_id=N)


@pytest.mark.parametrize('mu', [0.0, 0.8, 2.0])
def test_transformation_is_the_argmax_frequency(mu):
  """z = argmax(mu x + eps) keeps x with probability alpha + (1 - alpha) / N, alpha = T(mu)
  (eq. 10-11): a binomial z-test over 40k draws of the library's own latent."""
  n, x0 = 40_000, 3
  w = duo.gaussian_latent(jax.random.key(0), OPT, jnp.full((1, n), x0), jnp.asarray([mu]))
  hits = int((np.asarray(w.argmax(-1)) == x0).sum())
  alpha = float(duo.transformation(mu, N))
  p = alpha + (1 - alpha) / N
  assert abs(hits - n * p) / np.sqrt(n * p * (1 - p)) < 4.0
  if mu == 0.0:
    assert abs(alpha) < 1e-6


def test_gamma_for_alpha_inverts_t_and_the_derivative_is_t_prime():
  for a in (0.05, 0.5, 0.95):
    g = duo.gamma_for_alpha(a, 257)
    assert abs(float(duo.transformation(np.exp(-g / 2), 257, np)) - a) < 1e-6
  t = jnp.asarray([0.2, 0.5, 0.8])
  _, alpha, dalpha = duo.gaussian_alpha(duo.Options(), t, (0.05, 0.95))
  h = 1e-3
  up = duo.gaussian_alpha(duo.Options(), t + h, (0.05, 0.95))[1]
  down = duo.gaussian_alpha(duo.Options(), t - h, (0.05, 0.95))[1]
  np.testing.assert_allclose(dalpha, (up - down) / (2 * h), rtol=2e-2)
  assert (np.diff(np.asarray(alpha)) < 0).all() and (np.asarray(dalpha) < 0).all()
  ends = duo.gaussian_alpha(duo.Options(), jnp.asarray([0.0, 1.0]), (0.05, 0.95))[1]
  np.testing.assert_allclose(ends, [0.95, 0.05], atol=1e-4)


def _model(vocab=N + 1):
  m = Transformer(TransformerConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2,
                                    max_len=16, mask='bidirectional', cond_dim=16))
  x = jnp.zeros((2, 6), jnp.int32)
  params = m.init(jax.random.key(1), x, cond=jnp.zeros((2, 16)))['params']
  return m, params


def test_a_one_hot_float_input_is_the_token_input():
  m, params = _model()
  x = jax.random.randint(jax.random.key(2), (2, 6), 0, N)
  cond = jnp.ones((2, 16))
  hard, _ = m.apply({'params': params}, x, cond=cond)
  soft, _ = m.apply({'params': params}, jax.nn.one_hot(x, N), cond=cond)
  np.testing.assert_allclose(soft, hard, atol=1e-5)


def test_the_curriculum_loss_at_small_tau_is_the_integrand_at_the_argmax():
  """tau -> 0 turns the soft input into one_hot(argmax w): eq. 21 becomes f at z_t, with the
  network reading z_t itself (eq. 19)."""
  m, params = _model()
  opt = duo.Options(mask_id=N, curriculum_tau=1e-4)
  x = jax.random.randint(jax.random.key(3), (4, 6), 0, N)
  rng = jax.random.key(4)
  got, _ = duo.curriculum_terms(params, x, rng, m, opt)
  t_rng, w_rng = jax.random.split(rng)
  t = duo.draw_t(t_rng, (4,), opt)
  mu, alpha, dalpha = duo.gaussian_alpha(opt, t, opt.curriculum_alpha)
  z = duo.gaussian_latent(w_rng, opt, x, mu).argmax(-1)
  hard = duo.x_theta(m, params, z, duo.loglinear_time(alpha), opt)
  want = duo.nelbo_integrand(opt, hard, z, x, alpha, dalpha).sum(1)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert (np.asarray(got) > 0).all()


def test_a_trajectory_flips_each_token_at_most_once():
  """Along one eps, a position that reads x at the noisier mu reads x at every cleaner mu; at
  a huge mu every position reads x (App. A.7)."""
  x = jax.random.randint(jax.random.key(5), (8, 64), 0, N)
  mus = [jnp.full((8,), v) for v in (0.2, 0.6, 1.2, 2.5, 50.0)]
  zs = duo.trajectory(jax.random.key(6), OPT, x, *mus)
  hit = [np.asarray(z) == np.asarray(x) for z in zs]
  for noisy, clean in zip(hit, hit[1:]):
    assert (clean | ~noisy).all()
  assert hit[-1].all() and 0 < hit[0].mean() < 1
  first = np.asarray(zs[0])  # where a token has not flipped yet it is argmax(eps), as at mu ~ 0
  for z, h in zip(zs[1:], hit[1:]):
    np.testing.assert_array_equal(np.asarray(z)[~h], first[~h])


def test_distillation_rounds_refresh_the_teacher_and_double_delta():
  opt = dict(mask_id=N, distill_delta=1 / 64, distill_round_steps=3)
  m, params = _model()
  extra = duo.init_extra(m, params, **opt)
  moved = jax.tree.map(lambda a: a + 1.0, params)
  for k in range(1, 7):
    _, extra, _ = duo.after_update(moved, extra, {}, None, model=m, **opt)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(extra['teacher']),
                                                     jax.tree.leaves(moved)))
    assert int(extra['k']) == k and same == (k >= 3)
  o = duo.Options(**opt)
  assert [float(duo.distill_delta(o, k)) for k in (0, 2, 3, 6)] == [1 / 64, 1 / 64, 2 / 64, 4 / 64]
  assert duo.init_extra(m, params, mask_id=N) is None


def test_the_distilled_sampler_spends_steps_plus_one_network_calls():
  m, params = _model()
  fn = sd.XThetaFn(m, OPT)
  calls = []

  class Counting:
    opt = OPT

    def __call__(self, p, z, t):
      jax.debug.callback(lambda: calls.append(1))
      return fn(p, z, t)

  for steps in (2, 4):
    calls.clear()
    out = sd.sample(Counting(), params, jnp.zeros((2, 1), jnp.int32), jax.random.key(0),
                    length=6, steps=steps, greedy_tail=True)
    jax.block_until_ready(out.tokens)
    assert len(calls) == int(out.nfe) == steps + 1


def test_distillation_through_the_trainer_starts_from_the_warm_run(tmp_path):
  """A tiny run, then `duo_code.py:tiny,distill` from it: the teacher is the warm start's params
  at the first update (gap 0; a teacher left at the random init would not be), drifts within a
  round and is refreshed at the next (gap 0 again), and delta doubles per round."""
  from train.config import from_file
  from train.trainer import train
  base = from_file(os.path.join(ROOT, 'configs', 'duo_code.py:tiny'))
  base.data.cache_dir = str(tmp_path)
  base.train.update(steps=3, eval_every=3, ckpt_every=3, log_every=3)
  train(base, str(tmp_path / 'base'))
  c = from_file(os.path.join(ROOT, 'configs', 'duo_code.py:tiny,distill'))
  c.data.cache_dir = str(tmp_path)
  c.train.update(steps=4, eval_every=4, ckpt_every=4, log_every=1, warmup_steps=0,
                 init_from=str(tmp_path / 'base'))
  wd = tmp_path / 'dcd'
  out = train(c, str(wd))
  assert np.isfinite(out['loss'])
  rows = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  rows = [r for r in rows if 'teacher_gap' in r]
  gaps = [r['teacher_gap'] for r in rows]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert gaps[0] == 0.0 and gaps[1] > 0 and gaps[2] == 0.0 and gaps[3] > 0
  assert [r['delta'] for r in rows] == [1 / 64, 1 / 64, 2 / 64, 2 / 64]
