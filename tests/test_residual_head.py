"""HART's residual head (MAR's diffusion head) against a conditional Gaussian oracle.

Data: r | z ~ N(A z, s^2 I). In VE coordinates x = r + sigma n the optimal denoiser is
D*(x; sigma, z) = A z + s^2 / (s^2 + sigma^2) (x - A z), and the flow loss ||F - F*||^2 with
F* = n - r has the per-dimension Bayes risk Var(F* | x) = (1 + sigma)^2 s^2 / (s^2 + sigma^2).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from paradigms import image_diffusion as idf
from paradigms.nn.residual_head import HeadConfig, ResidualHead
from sample import image_diffusion as sampler

S = 0.3  # the residual's conditional std
A = np.array([[0.8, -0.5, 0.0, 0.3], [0.2, 0.4, -0.7, 0.0]], np.float32)  # [Cz=2, Z=4]
OPTS = idf.Options(objective='flow', label_dropout=0.0)


def _data(rng, n):
  kz, kr = jax.random.split(rng)
  z = jax.random.normal(kz, (n, 4))
  return {'image': z @ A.T + S * jax.random.normal(kr, (n, 2)), 'label': z}


class _Oracle(nn.Module):
  """The exact flow network for the Gaussian: F = (x_t - D*) / t from D* in VE coordinates."""
  cfg: HeadConfig = HeadConfig(token_dim=2, cond_dim=4)

  @nn.compact
  def __call__(self, x_t, t, z, step=None):
    sigma = (t / (1 - t))[:, None]
    x = x_t * (1 + sigma)  # VE state
    mu = z @ A.T
    d = mu + S ** 2 / (S ** 2 + sigma ** 2) * (x - mu)
    return (x_t - d) / t[:, None]


def _bayes_risk(sigma):
  return (1 + sigma) ** 2 * S ** 2 / (S ** 2 + sigma ** 2)


def test_head_parameter_count_and_zero_init_output():
  cfg = HeadConfig(token_dim=3, cond_dim=5, width=16, depth=2, freq_dim=8)
  head = ResidualHead(cfg)
  params = head.init(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), jnp.ones((4, 5)))['params']
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  out = head.apply({'params': params}, jnp.ones((4, 3)), jnp.ones(4), jnp.ones((4, 5)))
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero / zero output layer


def test_diffusion_loss_of_the_oracle_is_the_bayes_risk():
  """The head's loss path (image_diffusion.per_example_loss on [N, Cz] tokens) at the exact
  denoiser equals the closed-form minimum, averaged over the logit-normal sigma draws."""
  oracle = _Oracle()
  batch = _data(jax.random.key(1), 200_000)
  per, sigma = idf.per_example_loss({}, batch, jax.random.key(2), model=oracle, opts=OPTS)
  expect = np.mean(_bayes_risk(np.asarray(sigma, np.float64)))
  assert abs(float(per.mean()) - expect) < 0.01 * expect, (float(per.mean()), expect)
  # and a wrong denoiser (F off by 0.1 per dimension) is measurably worse
  per_bad, _ = idf.per_example_loss({}, batch, jax.random.key(2), model=_Shifted(), opts=OPTS)
  assert float(per_bad.mean()) > float(per.mean()) + 0.009  # + 0.1^2 per dimension


class _Shifted(_Oracle):
  @nn.compact
  def __call__(self, x_t, t, z, step=None):
    return super().__call__(x_t, t, z) + 0.1


def test_eight_steps_of_the_oracle_give_the_conditional_gaussian():
  """HART samples its residual in 8 steps. With the exact denoiser, DPM-Solver++(2M) on a flow
  grid shifted toward low noise (shift 0.3, the hybrid's default) gives mean A z and std s to
  1%. Plain uniform-grid Euler does not: the residual is small (s = 0.3 against unit noise), its
  flow path bends near t ~ s^2, and 8 uniform Euler steps give std 0.24 (measured)."""
  den = idf.Denoiser(_Oracle(), 'flow')
  z = jnp.broadcast_to(jnp.array([[1.0, -0.5, 0.25, 2.0]]), (20_000, 4))
  out = sampler.sample('dpmpp_2m', den, {}, sampler.flow_sigmas(8, shift=0.3), (20_000, 2), z,
                       jax.random.key(3))
  x = np.asarray(out.x)
  np.testing.assert_allclose(x.mean(0), np.asarray(z[0] @ A.T), atol=0.01)
  np.testing.assert_allclose(x.std(0), S, rtol=0.02)
  assert int(out.nfe) == 8
  euler = sampler.sample('euler', den, {}, sampler.flow_sigmas(8), (20_000, 2), z,
                         jax.random.key(3))
  assert np.asarray(euler.x).std(0).max() < 0.85 * S  # why the default is not uniform Euler


def test_trained_head_reaches_the_bayes_risk_and_samples_the_conditional():
  """A small head trained for 800 steps on the Gaussian: held-out loss within 15% of the Bayes
  risk, and its 8-step samples' conditional mean within 0.1 and std within 25% of the truth."""
  cfg = HeadConfig(token_dim=2, cond_dim=4, width=64, depth=2, freq_dim=32)
  head = ResidualHead(cfg)
  x, z = jnp.zeros((1, 2)), jnp.zeros((1, 4))
  params = head.init(jax.random.key(0), x, jnp.zeros(1), z)['params']
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, 800))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, rng):
    kd, kl = jax.random.split(rng)
    loss = lambda p: idf.per_example_loss(p, _data(kd, 256), kl, model=head, opts=OPTS)[0].mean()
    g = jax.grad(loss)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt

  for i in range(800):
    params, opt = step(params, opt, jax.random.key(100 + i))
  batch = _data(jax.random.key(7), 50_000)
  per, sigma = idf.per_example_loss(params, batch, jax.random.key(8), model=head, opts=OPTS)
  risk = float(np.mean(_bayes_risk(np.asarray(sigma, np.float64))))
  assert float(per.mean()) < 1.15 * risk, (float(per.mean()), risk)
  z = jnp.broadcast_to(jnp.array([[0.5, -1.0, 0.5, 1.0]]), (10_000, 4))
  out = sampler.sample('dpmpp_2m', idf.Denoiser(head, 'flow'), params,
                       sampler.flow_sigmas(8, shift=0.3), (10_000, 2), z, jax.random.key(9))
  x = np.asarray(out.x)
  np.testing.assert_allclose(x.mean(0), np.asarray(z[0] @ A.T), atol=0.1)
  np.testing.assert_allclose(x.std(0), S, rtol=0.25)
