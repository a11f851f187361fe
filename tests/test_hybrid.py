"""HART (paradigms/hybrid.py, sample/hybrid.py): its discrete part is exactly VAR, the head's
loss reaches the transformer, the sampler's tokens are VAR's and its image is decode(f_hat + r),
and the tiny config trains and samples through the CLI. The head itself is checked against a
Gaussian oracle in tests/test_residual_head.py."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paradigms import hybrid, next_scale
from sample import hybrid as hybrid_sampler
from sample import next_scale as var_sampler
from tests.conftest import train_tiny_on_tokens

CFG = hybrid.HARTConfig(scales=(1, 2, 4), codebook_size=13, latent_dim=4, label_len=2,
                        label_vocab=5, d_model=32, n_layers=2, n_heads=2, head_width=16,
                        head_depth=2, head_freq_dim=8)


def _batch(B=3, seed=0):
  rng = np.random.default_rng(seed)
  L, n = CFG.num_tokens, CFG.residual_len
  return {'tokens': jnp.asarray(rng.integers(0, 13, (B, L)), jnp.int32),
          'inputs': jnp.asarray(rng.normal(size=(B, L - 1, 4)), jnp.float32),
          'label': jnp.asarray(rng.integers(0, 5, (B, 2)), jnp.int32),
          'residual': jnp.asarray(0.2 * rng.normal(size=(B, n, 4)), jnp.float32)}


def _params(seed=0):
  model = hybrid.build(CFG)
  params = nn.meta.unbox(hybrid.init(model, jax.random.key(seed), _batch()))['params']
  # perturb every leaf so zero-initialised outputs (adaLN-Zero, head) do not hide mistakes
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(tree, noisy)


def test_param_count_and_the_discrete_part_is_exactly_var():
  model, params = _params()
  assert sum(x.size for x in jax.tree.leaves(params)) == CFG.num_params()
  batch = _batch()
  _, m = hybrid.loss(params, batch, jax.random.key(0), model=model, label_dropout=0.0)
  var = next_scale.build(next_scale.VARConfig(**{f: getattr(CFG, f) for f in (
      'scales', 'codebook_size', 'latent_dim', 'label_len', 'label_vocab', 'd_model', 'n_layers',
      'n_heads')}))
  nll, _ = next_scale.token_nll(var, params['var'], batch, batch['label'])
  np.testing.assert_allclose(m['nll'], nll.mean(), rtol=1e-5)
  ev = hybrid.evaluate(params, batch, jax.random.key(0), model=model)
  np.testing.assert_allclose(ev['nats'], nll.sum(), rtol=1e-5)
  assert ev['count'] == 3 * CFG.residual_len * hybrid.Options().diffusion_mul


def test_head_loss_trains_the_transformer_and_the_token_embedding():
  """The head conditions on z = h + E_tok[token]: its loss alone (weight 1, CE dropped by
  differentiating only the head term) has gradients in the blocks and in E_tok."""
  model, params = _params()
  batch = _batch()

  def head_only(p):
    _, _, per = hybrid._losses(p, batch, jax.random.key(3), model, hybrid.Options(),
                                 batch['label'])
    return per.mean()

  g = jax.grad(head_only)(params)
  assert float(jnp.abs(g['token_embed']).sum()) > 0
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g['var']['layers']))
  assert float(jnp.abs(g['var']['head_w']).sum()) == 0  # the token logits play no part


class _FakeTokenizer(var_sampler.Tokenizer):
  """Closed-form tokenizer: codebook rows are fixed vectors; decode is the identity on f."""

  def start(self, params, batch):
    return jnp.zeros((batch, 4, 4, 4), jnp.float32)

  def add_scale(self, params, f_hat, idx, k):
    s = CFG.scales[k]
    e = jnp.sin(jnp.arange(13)[:, None] + jnp.arange(4)[None])[idx].reshape(-1, s, s, 4)
    f_hat = f_hat + jax.image.resize(e, f_hat.shape, 'nearest')
    if k + 1 == len(CFG.scales):
      return f_hat, None
    t = CFG.scales[k + 1]
    return f_hat, jax.image.resize(f_hat, (f_hat.shape[0], t, t, 4), 'linear').reshape(-1, t * t, 4)

  def decode(self, params, f_hat):
    return f_hat


def test_sampler_tokens_are_vars_and_the_image_is_decode_of_f_hat_plus_residual():
  model, params = _params()
  label = jnp.array([[1, 2], [3, 0]], jnp.int32)
  tok = _FakeTokenizer(None)
  out = hybrid_sampler.sample(model, params, tok, None, label, jax.random.key(5), cfg=2.0,
                              top_k=5, head_steps=4)
  k_var, _ = jax.random.split(jax.random.key(5))
  ref = var_sampler.sample(model, params, tok, None, label, k_var, cfg=2.0, top_k=5)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.f_hat, ref.f_hat, atol=1e-6)
  np.testing.assert_allclose(out.images, out.f_hat + out.residual, atol=1e-6)
  assert int(out.nfe) == len(CFG.scales) and int(out.head_nfe) == 4  # dpmpp_2m: 1 per step
  assert float(jnp.abs(out.residual).max()) > 0
  again = hybrid_sampler.sample(model, params, tok, None, label, jax.random.key(5), cfg=2.0,
                                top_k=5, head_steps=4)
  np.testing.assert_array_equal(again.images, out.images)  # deterministic given rng


def test_tiny_hart_trains_and_samples_through_the_cli(tmp_path, capsys):
  from sample.__main__ import main as sample_main
  c, t2 = train_tiny_on_tokens(tmp_path, 'hart_glyphs.py:tiny')
  rows = [json.loads(l) for l in open(os.path.join(t2, 'metrics.jsonl'))]
  assert any('eval_bits_per_token' in r and 'eval_head_mse' in r for r in rows)
  assert any('judge_fd' in r for r in rows)
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert losses[-1] < losses[0]
  out = str(tmp_path / 'g.png')
  sample_main(['--workdir', t2, '--num', '4', '--out', out, '--steps', '3', '--label', '7A'])
  from PIL import Image
  side = c.data.image_size
  assert Image.open(out).size == (2 * side + 3 * 2, 2 * side + 3 * 2)
  assert f'{len(c.model.scales)} network evaluations' in capsys.readouterr().err
