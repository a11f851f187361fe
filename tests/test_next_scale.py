"""VAR next-scale prediction: the level mask, KV-cached == full forward, the CFG ramp, the
sampler (deterministic, NFE = K, inputs == the tokenizer's teacher forcing) and the CLI path."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import train_tiny_on_tokens
from paradigms import next_scale as ns
from sample import next_scale as sns



def tiny_var(scales=(1, 2, 4), V=13, Cz=4, S=2, layers=2, prefix=False):
  return ns.VARConfig(scales=scales, codebook_size=V, latent_dim=Cz, label_len=S, label_vocab=5,
                      d_model=32, n_layers=layers, n_heads=2, prompt_prefix=prefix)


def random_params(model, seed=0):
  """Random params of the initialised shapes, drawn in numpy (nothing to compile): normals of
  std 0.2, norm scales near 1. Not the init itself: adaLN-Zero starts every block as the
  identity, which would hide the attention pattern."""
  label = jnp.zeros((1, model.cfg.label_len), jnp.int32)
  shapes = jax.eval_shape(lambda r: nn.meta.unbox(ns.init(model, r, {'label': label}))['params'],
                          jax.random.key(0))
  return numpy_params(shapes, seed)


def numpy_params(shapes, seed):
  rng = np.random.default_rng(seed)

  def draw(path, s):
    x = rng.normal(size=s.shape).astype(np.float32)
    return jnp.asarray(1 + 0.1 * x if path[-1].key == 'scale' else 0.2 * x)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def teacher_inputs(cfg, B, seed=2):
  return jax.random.normal(jax.random.key(seed), (B, cfg.num_tokens - cfg.first_len,
                                                  cfg.latent_dim))


@pytest.mark.parametrize('prefix', [False, True])
def test_param_count_shapes_and_kv_cached_scales_equal_the_full_forward(prefix):
  cfg = tiny_var(scales=(1, 2, 3, 5), prefix=prefix)
  model = ns.build(cfg)
  params = random_params(model, seed=3)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  assert cfg.offsets == (0, 1, 5, 14, 39) and list(cfg.level_ids()[:6]) == [0, 1, 1, 1, 1, 2]
  B, off, n0 = 3, cfg.offsets, cfg.first_len
  label = jnp.array([[1, 2], [4, 0], [0, 0]])
  inputs = teacher_inputs(cfg, B)

  @jax.jit
  def run(p):
    full, none = model.apply({'params': p}, label, inputs)
    h, _ = model.apply({'params': p}, label, inputs, features=True)
    cache, parts = model.init_cache(B), []
    for k in range(cfg.num_scales):  # one scale at a time against the cache
      x = None if k == 0 else inputs[:, off[k] - n0:off[k + 1] - n0]
      logits, cache = model.apply({'params': p}, label, x, scale=k, cache=cache)
      parts.append(logits)
    return full, none, h, jnp.concatenate(parts, axis=1), cache.index

  full, none, h, cached, index = run(params)
  assert full.shape == (B, 39, 13) and full.dtype == jnp.float32 and none is None
  assert h.shape == (B, 39, 32)
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
  assert int(index[0]) == cfg.num_tokens + (cfg.label_len if prefix else 0)


def test_prompt_prefix_is_seen_by_every_level_slot_by_slot():
  """With prompt_prefix the prompt's tokens lead the sequence: changing slot j's embedding of
  its id, with the pooled condition c held fixed by an equal and opposite change of another
  slot's id embedding, still changes every level's logits (the prefix is attended token by
  token); without the prefix the same swap leaves every logit unchanged (c alone conditions)."""
  for prefix in (False, True):
    cfg = tiny_var(scales=(1, 2, 3), prefix=prefix)
    model = ns.build(cfg)
    params = random_params(model, seed=5)
    label, inputs = jnp.array([[1, 3]]), teacher_inputs(cfg, 1)
    f = jax.jit(lambda p: model.apply({'params': p}, label, inputs)[0][0])  # [L, V]
    d = jax.random.normal(jax.random.key(9), (32,))
    table = params['label_embed'].at[0, 1].add(d).at[1, 3].add(-d)  # sum c unchanged
    changed = np.abs(np.asarray(f(dict(params, label_embed=table)) - f(params))).max(axis=-1)
    if prefix:
      assert (changed > 1e-4).all(), changed
    else:
      np.testing.assert_allclose(changed, 0, atol=1e-5)


def test_level_mask_property_over_random_scale_schedules():
  """Token i depends on the input at position j iff level(j) <= level(i): perturbing position
  j's embedding (its row of E_pos, so level 0's start rows are covered too) leaves exactly the
  earlier levels' logits unchanged, through the real attention path."""
  rng = np.random.default_rng(0)
  for trial in range(3):
    K = int(rng.integers(2, 5))
    scales = tuple(sorted(rng.choice(np.arange(1, 6), K, replace=False).tolist()))
    cfg = tiny_var(scales=scales, layers=1 + trial % 2)
    model = ns.build(cfg)
    params = random_params(model, seed=trial)
    label, inputs = jnp.array([[1, 3]]), teacher_inputs(cfg, 1, seed=trial)
    f = jax.jit(lambda p: model.apply({'params': p}, label, inputs)[0][0])  # [L, V]
    base = f(params)
    level = cfg.level_ids()
    for j in rng.choice(cfg.num_tokens, 3, replace=False).tolist() + [0]:
      bumped = dict(params, pos_embed=params['pos_embed'].at[j].add(1.0))
      changed = np.abs(np.asarray(f(bumped) - base)).max(axis=-1) > 1e-5  # [L]
      np.testing.assert_array_equal(changed, level >= level[j],
                                    err_msg=f'scales {scales}, perturbed position {j}')


def test_cfg_ramp_identities():
  l_c = jax.random.normal(jax.random.key(0), (2, 4, 7))
  l_u = jax.random.normal(jax.random.key(1), (2, 4, 7))
  K = 5
  for w in (0.0, 1.0, 2.5):
    np.testing.assert_array_equal(sns.guided_logits(l_c, l_u, 0, K, w), l_c)  # t_0 = 0
  for k in range(K):
    np.testing.assert_array_equal(sns.guided_logits(l_c, l_u, k, K, 1.0), l_c)  # w = 1: off
  # the last scale takes the full weight, l_u + w (l_c - l_u); scale k a linear share of it
  np.testing.assert_allclose(sns.guided_logits(l_c, l_u, K - 1, K, 3.0), l_u + 3 * (l_c - l_u),
                             atol=1e-5)
  np.testing.assert_allclose(sns.guided_logits(l_c, l_u, 2, K, 3.0), 2 * l_c - l_u, atol=1e-5)
  np.testing.assert_allclose(sns.guided_logits(l_c, l_u, 0, 1, 3.0), 3 * l_c - 2 * l_u,
                             atol=1e-5)  # K = 1: the only scale is the last


@dataclasses.dataclass(frozen=True)
class BlockTokenizer(sns.Tokenizer):
  """A closed-form multi-scale residual tokenizer (scales dividing the side): nearest up,
  block-mean down, f_hat += up(e[idx]); decode repeats f_hat's first 3 channels 2x."""
  scales: tuple = (1, 2, 4)

  def start(self, params, batch):
    return jnp.zeros((batch, self.scales[-1], self.scales[-1], params.shape[1]))

  def add_scale(self, params, f_hat, idx, k):
    B, side, _, Cz = f_hat.shape
    s = self.scales[k]
    z = params[idx].reshape(B, s, s, Cz)
    f_hat = f_hat + jnp.repeat(jnp.repeat(z, side // s, 1), side // s, 2)
    if k + 1 == len(self.scales):
      return f_hat, None
    n = self.scales[k + 1]
    down = f_hat.reshape(B, n, side // n, n, side // n, Cz).mean(axis=(2, 4))
    return f_hat, down.reshape(B, n * n, Cz)

  def decode(self, params, f_hat):
    return jnp.repeat(jnp.repeat(f_hat[..., :3], 2, 1), 2, 2)


class CountingVAR(ns.VAR):
  """VAR that counts its network passes while the sampler is traced."""
  calls = []

  def __call__(self, label, inputs=None, **kw):
    CountingVAR.calls.append(kw.get('scale'))
    return super().__call__(label, inputs, **kw)


@pytest.fixture(scope='module')
def var_setup():
  """(model, params, tokenizer, codebook): a tiny VAR over the closed-form tokenizer, shared so
  the sampler compiles once per setting."""
  cfg = tiny_var()
  model = CountingVAR(cfg)
  params = random_params(model, seed=7)
  codebook = jax.random.normal(jax.random.key(5), (cfg.codebook_size, cfg.latent_dim))
  return model, params, BlockTokenizer(model=None, scales=cfg.scales), codebook


def test_sampler_is_deterministic_one_pass_per_scale_and_builds_the_inputs(var_setup):
  model, params, tok, codebook = var_setup
  cfg = model.cfg
  label = jnp.array([[1, 2], [3, 4], [2, 0], [0, 0]])
  CountingVAR.calls.clear()
  a = sns.sample(model, params, tok, codebook, label, jax.random.key(0), cfg=3.0, top_k=8)
  assert CountingVAR.calls == [0, 1, 2]  # one network pass per scale, traced once
  b = sns.sample(model, params, tok, codebook, label, jax.random.key(0), cfg=3.0, top_k=8)
  c = sns.sample(model, params, tok, codebook, label, jax.random.key(1), cfg=3.0, top_k=8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.tokens, c.tokens)
  assert a.tokens.shape == (4, 21) and a.tokens.dtype == jnp.int32
  assert a.inputs.shape == (4, 20, 4) and a.images.shape == (4, 8, 8, 3)
  assert int(a.nfe) == 3 and int(a.rows) == 8
  # the inputs the sampler fed are the teacher-forcing inputs of its own tokens
  f_hat, expect = tok.start(codebook, 4), []
  for k in range(cfg.num_scales):
    f_hat, nxt = tok.add_scale(codebook, f_hat, a.tokens[:, cfg.offsets[k]:cfg.offsets[k + 1]], k)
    expect += [] if nxt is None else [nxt]
  np.testing.assert_allclose(a.inputs, jnp.concatenate(expect, 1), atol=1e-6)
  np.testing.assert_allclose(a.f_hat, f_hat, atol=1e-6)


def test_cfg_first_scale_is_conditional_and_null_label_guidance_is_a_no_op(var_setup):
  model, params, tok, codebook = var_setup
  label = jnp.array([[1, 2], [3, 4], [2, 0], [0, 0]])
  run = lambda lab, w: sns.sample(model, params, tok, codebook, lab, jax.random.key(3), cfg=w,
                                  top_k=8)
  plain, guided = run(label, 1.0), run(label, 3.0)
  n0 = model.cfg.first_len
  np.testing.assert_array_equal(guided.tokens[:, :n0], plain.tokens[:, :n0])  # t_0 = 0
  assert not np.array_equal(guided.tokens, plain.tokens)  # guidance acts on later scales
  null = jnp.zeros_like(label)  # conditional == unconditional: any weight gives the same draw
  np.testing.assert_array_equal(run(null, 3.0).tokens, run(null, 1.0).tokens)


def test_loss_metrics_and_label_dropout():
  cfg = tiny_var()
  model = ns.build(cfg)
  params = random_params(model)
  B = 4
  batch = {'tokens': jax.random.randint(jax.random.key(0), (B, cfg.num_tokens), 0, 13),
           'inputs': teacher_inputs(cfg, B), 'label': jnp.array([[1, 2]] * B)}
  null = dict(batch, label=jnp.zeros_like(batch['label']))

  @jax.jit
  def run(p, r):
    total, m = ns.loss(p, batch, r, model=model, label_dropout=0.0)
    dropped = ns.loss(p, batch, r, model=model, label_dropout=0.999)[0]  # every label dropped
    null_total = ns.loss(p, null, r, model=model, label_dropout=0.0)[0]
    logits = model.apply({'params': p}, batch['label'], batch['inputs'])[0]
    return total, m, dropped, null_total, logits, ns.evaluate(p, batch, None, model=model)

  total, m, dropped, null_total, logits, e = run(params, jax.random.key(0))
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['tokens'][..., None], -1)
  np.testing.assert_allclose(total, nll.mean(), rtol=1e-5)
  hit = np.asarray(jnp.argmax(logits, -1) == batch['tokens'])
  np.testing.assert_allclose(m['acc_2x2'], hit[:, 1:5].mean(), rtol=1e-6)
  assert {'acc_1x1', 'acc_2x2', 'acc_4x4', 'accuracy', 'bits_per_token'} <= set(m)
  np.testing.assert_allclose(e['nats'] / e['tokens'], total, rtol=1e-5)
  np.testing.assert_allclose(dropped, null_total, rtol=1e-5)  # the null label (all slots 0)
  assert abs(float(dropped) - float(total)) > 1e-4  # the label matters
  with pytest.raises(ValueError, match='model.scales'):
    ns.loss(params, dict(batch, inputs=batch['inputs'][:, :-1]), jax.random.key(0), model=model)


def test_tokenizer_errors_name_the_fix(tmp_path):
  from train.checkpoint import tokenizer_spec
  with pytest.raises(ValueError, match='vqvae_glyphs'):
    tokenizer_spec('')
  with pytest.raises(FileNotFoundError, match='python -m train --config configs/vqvae_glyphs'):
    tokenizer_spec(str(tmp_path / 'missing'))
  (tmp_path / 'config.json').write_text(json.dumps(
      {'paradigm': 'vqvae', 'model': {'scales': [1, 2], 'latent_dim': 4, 'codebook_size': 9}}))
  spec = tokenizer_spec(str(tmp_path))
  assert spec['scales'] == (1, 2)
  with pytest.raises(ValueError, match=r"--config.model.scales='\(1,2\)'"):
    ns.check_tokenizer(tiny_var(V=9), spec)


# --- With the real VQ-VAE ----------------------------------------------------------------------

def test_sampler_inputs_equal_the_vqvaes_teacher_forcing():
  from paradigms import vqvae
  vcfg = vqvae.VQConfig(image_size=8, channels=3, base_channels=8, channel_mult=(1, 2),
                        norm_groups=4, latent_dim=4, codebook_size=13, scales=(1, 2, 4), n_phi=3)
  vq = vqvae.build(vcfg)
  vq_params = numpy_params(jax.eval_shape(
      lambda r: nn.meta.unbox(vq.init(r, jnp.zeros((1, 8, 8, 3))))['params'], jax.random.key(0)), 1)
  cfg = tiny_var()
  model = ns.build(cfg)
  params = random_params(model)
  out = sns.sample(model, params, vq, vq_params, jnp.array([[1, 2], [0, 0]]), jax.random.key(4),
                   cfg=2.0, top_p=0.9)

  @jax.jit
  def reference(p, tokens):  # the tokenizer's own teacher forcing and decoding of the tokens
    indices = vqvae.split_indices(tokens, cfg.scales)
    f_hat = vqvae.indices_to_fhat(vq, p, indices)
    return (vqvae.next_scale_inputs(vq, p, indices), f_hat,
            vq.apply({'params': p}, f_hat, method='decode'))

  inputs, f_hat, images = reference(vq_params, out.tokens)
  np.testing.assert_allclose(out.inputs, inputs, atol=1e-5)
  np.testing.assert_allclose(out.f_hat, f_hat, atol=1e-5)
  np.testing.assert_allclose(out.images, images, atol=1e-5)
  assert out.images.shape == (2, 8, 8, 3) and int(out.nfe) == 3


def test_tiny_tokenizer_var_and_cli_end_to_end(tmp_path, capsys):
  """configs/vqvae_glyphs.py:tiny -> configs/var_glyphs.py:tiny on its tokens (judge included)
  -> `python -m sample` (in-process: the same main()) writes the PNG grid. Also: the tokenized
  stream keeps grain's resumable state, and its eval batches carry the same mapping."""
  from sample.__main__ import main as sample_main
  from pipelines.sources import open_data
  c, t2 = train_tiny_on_tokens(tmp_path, 'var_glyphs.py:tiny')
  rows = [json.loads(l) for l in open(os.path.join(t2, 'metrics.jsonl'))]
  assert any('eval_bits_per_token' in r for r in rows)
  judged = [r for r in rows if 'judge_fd' in r]
  assert judged and judged[-1]['judge_nfe'] == len(c.model.scales)
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert losses[-1] < losses[0]

  out = str(tmp_path / 'g.png')
  sample_main(['--workdir', t2, '--num', '4', '--out', out, '--cfg', '2.0', '--top-k', '20',
               '--label', '7A', '--zoom', '2'])
  from PIL import Image
  side = c.data.image_size
  assert Image.open(out).size == (2 * (2 * side + 3 * 2),) * 2  # 2 x 2 grid, 2 px pad, zoom 2
  assert f'{len(c.model.scales)} network evaluations of 8 rows' in capsys.readouterr().err

  # the tokenizer run's CLI: held-out images beside decode(f_hat), which the judge reads
  from paradigms import vqvae
  from evaluators.images import reference, to_uint8
  from train.checkpoint import load_run
  tc, vq_model, vq_params = load_run(c.data.tokenizer)
  sample_main(['--workdir', c.data.tokenizer, '--num', '3', '--out', out, '--judge'])
  grid = np.asarray(Image.open(out))
  assert grid.shape == (2 * (side + 2) + 2, 4 * (side + 2) + 2, 3)  # 3 pairs on a 4-wide grid
  x = reference(tc, 3)['image']
  _, _, f_hat = vqvae.residual(vq_model, vq_params, x)
  want = to_uint8(vqvae.decode(vq_model, vq_params, f_hat))
  tiles = [grid[2:2 + side, 2 + j * (side + 2):2 + j * (side + 2) + side] for j in range(4)]
  np.testing.assert_array_equal(tiles[0], to_uint8(x[0]))
  for got, ref in ((tiles[1], want[0]), (tiles[3], want[1])):
    assert np.abs(got.astype(int) - ref).max() <= 1  # rounding of the jitted decode
  printed = capsys.readouterr().out
  assert printed.count('by length') == 3 and 'real: fd=0.0000' in printed
  assert 'decode(f): fd=' in printed and 'decode(f_hat): fd=' in printed
  with pytest.raises(ValueError, match='drop --label'):  # one line at the CLI (run_main)
    sample_main(['--workdir', c.data.tokenizer, '--num', '3', '--out', out, '--label', '7A'])

  c.data.tokenizer_residual = True
  from train.checkpoint import load_tokenizer
  data = open_data(c.data, load_tokenizer(c))
  it = iter(data.train_dataset(batch_size=4, seed=1))
  next(it)
  state = it.get_state()
  want = next(it)
  L, n0, Cz = sum(s * s for s in c.model.scales), c.model.scales[0] ** 2, c.model.latent_dim
  assert want['tokens'].shape == (4, L) and want['inputs'].shape == (4, L - n0, Cz)
  assert want['residual'].shape == (4, c.model.scales[-1] ** 2, Cz) and 'image' not in want
  again = iter(data.train_dataset(batch_size=4, seed=1))
  again.set_state(state)
  got = next(again)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  ev = data.eval_batches(batch_size=4, num_batches=1)[0]
  assert set(ev) == set(want) and ev['tokens'].max() < c.model.codebook_size

  # HART warm-started from this VAR (train.init_from/init_into): its 'var' subtree is the VAR's
  # EMA params exactly, in the params and the EMA; the head keeps its fresh init.
  import paradigms
  from tests.conftest import ROOT
  from train.checkpoint import load_run, warm_start
  from train.config import from_file
  from train.state import make_mesh, setup
  h = from_file(os.path.join(ROOT, 'configs', 'hart_glyphs.py:tiny'))
  h.data.update(tokenizer=c.data.tokenizer, cache_dir=c.data.cache_dir)
  s = setup(h, paradigms.get('hybrid'), make_mesh(h.mesh.shape))
  fresh = s.init(jax.random.key(0))
  state = warm_start(fresh, t2, 'var')
  var_params = load_run(t2)[2]
  for tree in (state.params, state.ema):
    jax.tree.map(np.testing.assert_array_equal, tree['var'], var_params)
    jax.tree.map(np.testing.assert_array_equal, tree['head'], fresh.params['head'])
  from pipelines.sources import open_data
  from train.state import device_batch
  from train.checkpoint import load_tokenizer
  batch = next(iter(open_data(h.data, load_tokenizer(h)).train_dataset(batch_size=h.data.batch_size, seed=0)))
  state, metrics = s.train_step(state, device_batch(batch, s.batch_sharding), jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))  # params and EMA are donated: no shared buffers
