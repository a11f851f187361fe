"""The arena's shared pieces (runs, compute, report) and the regularisers its `data` experiment
adds to the AR paradigm; the end-to-end smoke run of every experiment at the tiny budget."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python


def _tiny_ar(dropout=0.0):
  import flax.linen as nn
  from paradigms import autoregressive as ar
  from paradigms.nn.transformer import TransformerConfig
  model = ar.build(TransformerConfig(d_model=32, n_layers=2, n_heads=2, dropout=dropout))
  tokens = jax.random.randint(jax.random.key(0), (2, 17), 0, 256)
  params = nn.meta.unbox(ar.init(model, jax.random.key(1), {'tokens': tokens}))['params']
  return ar, model, params, {'tokens': tokens}


def test_dropout_is_random_in_training_and_off_in_evaluation():
  import dataclasses
  ar, model, params, batch = _tiny_ar(dropout=0.3)
  plain = ar.build(dataclasses.replace(model.cfg, dropout=0.0))
  l1 = float(ar.loss(params, batch, jax.random.key(2), model=model)[0])
  l2 = float(ar.loss(params, batch, jax.random.key(3), model=model)[0])
  l0 = float(ar.loss(params, batch, jax.random.key(2), model=plain)[0])
  assert l1 != l2 and l1 != l0  # different masks, different losses
  # evaluation and sampling (no 'dropout' rng) are the deterministic network
  e = ar.evaluate(params, batch, None, model=model)
  e0 = ar.evaluate(params, batch, None, model=plain)
  assert float(e['nats']) == pytest.approx(float(e0['nats']), rel=1e-6)
  assert float(e0['nats']) / float(e0['tokens']) == pytest.approx(l0, rel=1e-5)


def test_input_masking_hides_inputs_not_targets():
  ar, model, params, batch = _tiny_ar()
  tokens = batch['tokens']
  # rate -> 1: every input is MASK, so the loss is the NLL of the targets given only masks
  masked = float(ar.loss(params, batch, jax.random.key(0), model=model,
                         input_mask_rate=1 - 1e-7)[0])
  nll, _ = ar.token_nll(model, params, tokens, jnp.full_like(tokens[:, :-1], 257))
  assert masked == pytest.approx(float(nll.mean()), rel=1e-5)
  with pytest.raises(ValueError, match='input_mask_rate'):
    ar.loss(params, batch, jax.random.key(0), model=model, input_mask_rate=1.0)


def test_train_tokens_keeps_only_the_first_tokens(tmp_path):
  from pipelines import text as data
  corpus_dir = tmp_path / 'c'
  corpus_dir.mkdir()
  for i in range(40):
    (corpus_dir / f'f{i}.txt').write_text(f'file {i} ' + 'abcdefghij' * (i + 3))
  cfg = dict(source='text', files=str(corpus_dir / '*.txt'), seq_len=8, holdout_fraction=0.2,
             cache_dir=str(tmp_path / 'cache'), vocab_size=258)
  full = data.load_corpus(type('C', (), cfg)).train
  small = data.load_corpus(type('C', (), dict(cfg, train_tokens=50)))
  np.testing.assert_array_equal(small.train, full[:50])
  it = iter(data.train_dataset(small.train, seq_len=8, batch_size=4, seed=0))
  for _ in range(5):  # every window is a slice of the 50 kept tokens
    for row in next(it)['tokens']:
      assert any((np.asarray(full[s:s + 9]) == row).all() for s in range(50 - 8))
  with pytest.raises(ValueError, match='train_tokens'):
    data.load_corpus(type('C', (), dict(cfg, train_tokens=10 ** 9)))


def test_train_flops_follow_the_analytic_count():
  from arena.budgets import TEXT
  from arena.runs import text_config, train_flops
  from train.config import model_config
  spec = TEXT['tiny']
  steps, B, L = spec['train']['steps'], spec['data']['batch_size'], spec['data']['seq_len']
  ar, mdlm, bd3 = (text_config(k, spec, block_size=4 if k == 'bd3' else 0)
                   for k in ('ar', 'mdlm', 'bd3'))
  cfg = model_config(ar)
  d, n_layers, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
  n = cfg.num_params(embeddings=False) - n_layers * 2 * d - d + V * d  # matmul params + head
  assert train_flops(ar, 0) == steps * B * L * (6 * n + 6 * n_layers * L * d)  # causal half
  assert train_flops(mdlm, 0) == steps * B * L * (6 * n + 12 * n_layers * L * d)
  assert train_flops(bd3, 0) == steps * B * 2 * L * (6 * n + 6 * n_layers * 2 * L * d)


def test_pareto_and_table():
  from arena.report import pareto, table
  # (speed, loss): the fastest point, then only points that are better than every faster one
  points = [(10, 3.0), (5, 2.0), (7, 2.5), (1, 2.2), (2, 1.0), (8, 4.0)]
  assert pareto(points) == [0, 2, 1, 4]
  md = table([{'a': 1.23456, 'b': None}, {'a': float('nan'), 'b': 'x'}],
             [('a', 'A', '.2f'), ('b', 'B')])
  assert md.splitlines() == ['| A | B |', '|---|---|', '| 1.23 | - |', '| - | x |']


def test_runs_are_reused_and_a_changed_budget_refuses(tmp_path):
  from arena.runs import Context, text_config
  from arena.budgets import TEXT
  ctx = Context(budget='tiny', out=str(tmp_path / 'out'), runs=str(tmp_path / 'runs'),
                progress=False)
  spec = {**TEXT['tiny'], 'train': {**TEXT['tiny']['train'], 'steps': 3, 'eval_every': 3,
                                    'ckpt_every': 3, 'log_every': 3}}
  first = ctx.run('ar', text_config('ar', spec))
  mtime = os.path.getmtime(os.path.join(first.workdir, 'arena.json'))
  again = ctx.run('ar', text_config('ar', spec))  # finished: loaded, not trained
  assert os.path.getmtime(os.path.join(again.workdir, 'arena.json')) == mtime
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  changed = {**spec, 'model': {**spec['model'], 'd_model': 64}}
  with pytest.raises(ValueError, match='--retrain'):
    ctx.run('ar', text_config('ar', changed))


def test_arena_all_tiny_writes_the_report(tmp_path):
  """The smoke run of every experiment (`--budget tiny`): each section's markdown, JSON (with
  seed, budget and resolved configs) and plots, and the regenerated README.md linking them."""
  from arena.__main__ import EXPERIMENTS
  out, runs = tmp_path / 'report', tmp_path / 'runs'
  run_python(['-m', 'arena', 'all', '--budget', 'tiny', '--out', str(out), '--runs', str(runs),
              '--no-progress'], timeout=1500)
  readme = (out / 'README.md').read_text()
  assert re.search(r'the whole `all`, training and measuring from scratch, took \d+ min', readme)
  for name in EXPERIMENTS:
    section = (out / f'{name}.md').read_text()
    assert section.splitlines()[0] in readme
    assert 'params' in section and 'FLOPs' in section  # the honesty line
    record = json.loads((out / f'{name}.json').read_text())
    assert record['meta']['budget'] == 'tiny' and record['meta']['seed'] == 0
    plots = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', section)
    assert plots, f'{name} links no plot'
    for png in plots:
      assert (out / png).stat().st_size > 1000, png


@pytest.mark.parametrize('budget', ['tiny', 'small', 'gpu'])
def test_every_budget_builds_valid_configs(budget):
  """Every model of every experiment at every budget passes the trainer's config validation,
  so the unrun `gpu` sizes at least build (a shape error would otherwise surface on a GPU)."""
  from arena import blocks, data, images
  from arena.budgets import JUDGE, TEXT
  from arena.runs import text_config
  from train.config import validate
  configs = [text_config('ar', JUDGE[budget]), text_config('ar', TEXT[budget]),
             text_config('mdlm', TEXT[budget])]
  configs += [text_config('bd3', TEXT[budget], block_size=B) for B in blocks.BUDGET[budget]['blocks']]
  configs += [c for _, _, c in data.contestants(budget)]
  configs += list(images.configs(images.IMAGES[budget], {'vqvae': '/x', 'vqvae_single': '/y'}).values())
  from arena import embeddings as emb
  configs += [text_config(k, TEXT[budget]) for k in ('sedd', 'duo')]
  from arena.runs import duo_recipe
  recipes = {r: duo_recipe(r, TEXT[budget], lambda name: f'/runs/{name}')
             for r in ('curriculum', 'restart', 'distill')}
  (_, stage1), (_, stage2) = recipes['curriculum']
  (_, rs1), (_, rs2) = recipes['restart']  # the control: the same stages, both plain
  assert rs1.loss.curriculum_tau == 0 and rs2.loss.curriculum_tau == 0
  assert (rs1.train.steps, rs2.train.steps) == (stage1.train.steps, stage2.train.steps)
  assert rs2.train.init_from == '/runs/duo_rs1'
  (_, dcd), = recipes['distill']
  assert stage1.loss.curriculum_tau > 0 and stage2.loss.curriculum_tau == 0
  assert stage1.train.steps + stage2.train.steps == TEXT[budget]['train']['steps']
  assert stage2.train.init_from == '/runs/duo_cl1' and dcd.train.init_from == '/runs/duo'
  assert dcd.loss.distill_delta > 0 and dcd.train.steps == 5 * dcd.loss.distill_round_steps
  configs += [c for r in recipes.values() for _, c in r]
  configs += [emb.embed_config(k, TEXT[budget], emb.BUDGET[budget], '/x') for k in emb.BACKBONES]
  for c in configs:
    validate(c)
    assert c.data.seq_len % max(c.loss.get('block_size', 0), 1) == 0 if c.paradigm == 'masked_diffusion' else True


def test_a_run_saved_before_the_schema_gained_a_key_still_matches():
  from arena.runs import same_config
  saved = {'data': {'image_size': 32, 'seq_len': 128}, 'train': {'steps': 500}}
  assert same_config(saved, {'data': {'image_size': 32, 'seq_len': 128, 'prompts': False},
                             'train': {'steps': 500}})  # a key added to the schema since
  assert not same_config(saved, {'data': {'image_size': 32, 'seq_len': 256},
                                 'train': {'steps': 500}})  # a changed value
  assert not same_config(saved, {'data': {'image_size': 32}, 'train': {'steps': 500}})  # removed


def test_the_image_race_refuses_an_illegible_tokenizer(monkeypatch):
  """`check_tokenizers` scores each tokenizer's reconstructions of the race's real held-out
  strings with the judge and refuses, naming the run, under `tokenizer_bar`. The judge here is
  a stand-in: it reads a string only from an image equal to the real render (up to 1e-6 per
  pixel), so an untrained tokenizer reads nothing and an exact one reads everything."""
  import types
  import jax
  import numpy as np
  from arena.images import IMAGES, check_tokenizers, configs
  from paradigms import vqvae
  from pipelines.images import eval_batches
  cs = configs(IMAGES['tiny'], {'vqvae': '/x', 'vqvae_single': '/y'})
  m = dict(IMAGES['tiny']['measure'], num=4)
  real = eval_batches(cs['dit'].data, batch_size=m['num'], num_batches=2)[1]

  class Judge:
    def predict(self, x):
      same = np.all(np.abs(np.asarray(x) - real['image']) < 1e-6, axis=(1, 2, 3))
      return np.where(same[:, None], real['label'], 0)

  model = vqvae.build(vqvae.VQConfig(**{k: v for k, v in cs['vqvae'].model.items()
                                         if k in vqvae.VQConfig.__dataclass_fields__}))
  params = vqvae.init(model, jax.random.key(0), {'image': real['image']})['params']
  run = types.SimpleNamespace(model=model, params=params, workdir='/runs/vqvae')
  logged = []
  check_tokenizers({'vqvae': run}, Judge(), cs['dit'], dict(m, tokenizer_bar=0.0), logged.append)
  assert 'legible for 0.0% of 4' in logged[0]
  with pytest.raises(ValueError, match=r'legible for 0\.0%.*under the 50% bar.*/runs/vqvae'):
    check_tokenizers({'vqvae': run}, Judge(), cs['dit'], dict(m, tokenizer_bar=0.5), print)
  monkeypatch.setattr(vqvae, 'reconstruct', lambda model, params, x: (None, x))  # lossless
  monkeypatch.setattr('arena.images._RECONSTRUCTORS', {})  # the run's compiled decode predates it
  check_tokenizers({'exact': run}, Judge(), cs['dit'], dict(m, tokenizer_bar=1.0), logged.append)
  assert 'exact reconstructions are legible for 100.0% of 4' in logged[-1]


def test_image_settings_sweep_guidance_and_top_k_and_each_row_draws_with_its_own(monkeypatch):
  """bench.settings crosses the paradigm's options with the top-k and guidance sweeps (a token
  model: |top_k| x |cfg| rows; DiT ignores top-k), and quality_pass draws every row with the
  row's own guidance weight (w), not measure's default: the generator is a stand-in that
  records the w it is called with."""
  import types
  import numpy as np
  from arena import image_samplers as bench
  from evaluators import images as ev
  ar = types.SimpleNamespace(paradigm='raster_ar')
  rows = bench.settings(ar, None, top_k=(0, 1), cfg=(1.5, 3.0))
  assert rows == [dict(top_k=0, cfg=1.5), dict(top_k=1, cfg=1.5), dict(top_k=0, cfg=3.0),
                  dict(top_k=1, cfg=3.0)]
  dit = types.SimpleNamespace(paradigm='image_diffusion')
  model = types.SimpleNamespace(cfg=types.SimpleNamespace(step_conditioning=False))
  assert len(bench.settings(dit, model, steps=(4, 32), top_k=(0, 1), cfg=(1.5, 3.0))) == 4
  assert bench.settings(ar, None) == [dict(top_k=0)]  # no sweep: measure's cfg for every row
  seen = []

  def generate(config, model, params, rng, *, num, labels, tokenizer, cfg, **opts):
    seen.append(cfg)
    return np.zeros([num, 4, 8, 3], np.float32), 7

  monkeypatch.setattr(ev, 'generate', generate)
  monkeypatch.setattr(bench, 'score', lambda judge, x, labels, ref: {
      'fd': 0.0, 'accuracy': 0.0, 'char_accuracy': 0.0, 'by_length': {}})
  c = bench.Contestant('ar', types.SimpleNamespace(paradigm='raster_ar', data={}), None,
                       {'w': np.zeros(3)}, rows)
  ref = {'label': np.zeros([2, 3], np.int32), 'image': np.zeros([2, 4, 8, 3], np.float32)}
  out, _, _ = bench.quality_pass([c], ref=ref, judge=None,
                                 num=2, cfg=9.0, rng=None, log=lambda m: None)
  assert seen == [1.5, 1.5, 3.0, 3.0] and [r['cfg'] for r in out] == seen
  assert bench.describe(out[1]) == '7 codes, greedy, w=1.5'


def test_the_race_times_each_models_pick_and_its_few_step_setting():
  """timed_rows keeps, per model, the most legible setting and the fewest-NFE setting at the
  pick's guidance weight and top-k (one row when they coincide)."""
  from arena.images import timed_rows
  row = lambda name, nfe, w, chars, **o: dict(name=name, nfe=nfe, cfg=w, char_accuracy=chars,
                                               accuracy=chars / 2, **o)
  rows = [row('dit', 4, 1.5, 0.1), row('dit', 32, 1.5, 0.3), row('dit', 4, 3.0, 0.2),
          row('dit', 32, 3.0, 0.25), row('ar', 128, 1.5, 0.2, top_k=0),
          row('ar', 128, 1.5, 0.4, top_k=1), row('hart', 4, 3.0, 0.3, top_k=0, head_steps=8),
          row('hart', 4, 3.0, 0.1, top_k=0, head_steps=2)]
  assert sorted(set(timed_rows(rows))) == [0, 1, 5, 6, 7]


def test_the_image_verdict_and_picks_follow_multi_character_strings():
  """Held-out single characters are a few prompts drawn again and again, so the AR-vs-diffusion
  verdict and each model's pick follow strings of 2+ characters: here AR reads more characters
  (it gets the repeated single characters) but far fewer 2-character strings, and the verdict
  is 'against' the seed's claim; the pick is the setting with more 2-character strings."""
  from arena import images_report as rep
  from arena.images import legibility_pick
  cell = lambda a1, a2: {1: {'accuracy': a1, 'count': 100}, 2: {'accuracy': a2, 'count': 100}}
  row = lambda name, paradigm, a1, a2, **o: {
      'name': name, 'paradigm': paradigm, 'nfe': 4, 'cfg': 1.5, 'top_k': 1,
      'by_length': cell(a1, a2), 'accuracy': (a1 + a2) / 2, 'char_accuracy': (a1 + 2 * a2) / 3,
      **o}
  picks = {'raster_ar': row('raster_ar', 'raster_ar', 1.0, 0.2),
           'var': row('var', 'next_scale', 0.5, 0.1),
           'maskgit': row('maskgit', 'maskgit', 0.0, 0.6, steps=4),
           'dit': row('dit', 'image_diffusion', 0.0, 0.0, sampler='euler', steps=4),
           'transfusion': row('transfusion', 'transfusion', 0.0, 0.0, sampler='euler', steps=4),
           'hart': row('hart', 'hybrid', 0.0, 0.1, head_steps=2)}
  assert picks['raster_ar']['char_accuracy'] > picks['maskgit']['char_accuracy']
  assert rep.multi(picks['maskgit']) == (0.6, 100)
  refs = [{'name': 'real', 'accuracy': 1.0}]
  text = rep.findings(list(picks.values()), picks, {}, [], refs)
  assert 'best diffusion model (MaskGIT' in text and 'against the seed' in text, text
  close = dict(picks, maskgit=row('maskgit', 'maskgit', 0.0, 0.25, steps=4))
  assert 'no evidence for or against' in rep.findings([], close, {}, [], refs)
  rows = [row('ar', 'raster_ar', 1.0, 0.2), row('ar', 'raster_ar', 0.0, 0.3, top_k=0)]
  assert legibility_pick(rows, 'ar') is rows[1]
