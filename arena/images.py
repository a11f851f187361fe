"""The `images` experiment: DiT (an NFE sweep + a shortcut few-step model) vs VAR vs HART.

    python -m arena images --budget small --out arena/report

Claims under test (the seed's): VAR is ~20x faster than raster AR and far faster than DiT;
HART has 4.5-7.7x the throughput of diffusion; autoregressive models have an edge at text in
images. Five runs on one glyph set (same image size, alphabet, max_chars, jitter), trained by
the one trainer:
  vqvae     the multi-scale residual VQ-VAE (configs/vqvae_glyphs.py): VAR's and HART's
            tokenizer; its own training cost is stated apart from theirs;
  dit       a DiT rectified-flow model (configs/dit_glyphs.py), sampled with Euler at an NFE
            sweep and one 2nd-order sampler (DPM-Solver++(2M), Lu et al. 2022);
  shortcut  a shortcut DiT (Frans et al. 2024; `dit_glyphs.py:P,shortcut`), the few-step model,
            Euler at 1, 2, 4 steps (a separate model: its self-consistency share of the batch
            costs it many-step quality, so it does not stand in for the flow model's sweep);
  var       VAR next-scale prediction (configs/var_glyphs.py) over `vqvae`: NFE = K scales;
  hart      HART (configs/hart_glyphs.py): VAR + the residual diffusion head, head 2 and 8 steps.
The four generators share the Transformer width, depth and heads (parameters within ~15%; HART
adds its head and token embedding), the batch and the step count (the same training images);
DiT's patch grid equals the tokenizer's latent grid (the finest VAR scale). Training FLOPs are
analytic (arena.runs.image_flops_per_example), the tokenizer's from XLA's cost analysis.

Measurement (arena/image_samplers.py, shared with benchmarks/image_samplers.py): every setting
draws `num` images for the labels of `num` held-out glyphs with one seed and guidance weight
`cfg` (VAR's ramped form for VAR and HART), scored by the glyph judge: classifier FD, strings and
characters read, both by string length; images/s is the median of `repeats` timed calls after
a compiling one. Reference rows: a second held-out set of real glyphs (the judge's ceiling and
FD's floor) and its VQ-VAE reconstructions, discrete (decode f_hat: VAR's ceiling) and
continuous (decode f: HART's ceiling).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from arena import image_samplers as bench
from arena import report
from arena.runs import apply, config_file

MODELS = ('dit', 'shortcut', 'var', 'hart')
TOKENIZER_FIELDS = ('scales', 'codebook_size', 'latent_dim')  # VAR / HART model <- the VQ-VAE
LABELS = {'dit': 'DiT (flow)', 'shortcut': 'DiT shortcut', 'var': 'VAR', 'hart': 'HART',
          'real': 'real glyphs (2nd held-out set)', 'vq': 'VQ-VAE reconstruction (f_hat)',
          'vq_f': 'VQ-VAE decode of f (no quantisation)'}

# Per budget: the glyph set, the tokenizer, the generators' shared backbone and training, and
# the measurement.
#   tiny   a smoke run: untrained models (~20 s a run, mostly compilation), 16 samples.
#   small  ~12-15 minutes on a 2-core CPU shared with another job, all in: 16px glyphs, whose
#          4x4 patch / latent grid keeps T at 19 (DiT) and 21 (VAR: scales 1, 2, 4) tokens. Sized
#          by timing 40 steps of each (batch 32, shared CPU): tokenizer 68k params ~30 steps/s;
#          DiT 738k ~9 steps/s, shortcut 739k ~10, VAR 723k ~7.5, HART 819k ~6.5 (800 steps:
#          1.5-2 min each); measurement ~1.5 min; the 16px glyph judge trains once (~2 min,
#          cached). Expect nothing legible: 26k training images is ~1/10 of what made the 32px
#          DiT preset read single characters, and the tokenizer (21 dB after 1500 steps) has
#          its reconstructions read at ~10% (1-char strings ~30%); the judge reads real 16px
#          strings at ~98 / 90 / 40% for 1 / 2 / 3 characters.
#   gpu    one GPU (not yet run): 32px, the base tokenizer, d=512 x 12 layers, 40k x 256 images.
IMAGES = {
    'tiny': dict(
        preset='tiny', data=dict(image_size=16, jitter=0.3, stroke=0.0),
        vqvae=dict(data=dict(batch_size=8), train=dict(steps=8, ckpt_every=8, eval_every=8)),
        backbone=dict(d_model=32, n_layers=1, n_heads=2), dit=dict(patch_size=4, freq_dim=32),
        hart=dict(head_width=16, head_depth=1, head_freq_dim=32),
        train=dict(steps=6, warmup_steps=2, lr=1e-3, log_every=3, eval_every=6, eval_batches=1,
                   ckpt_every=6, ema_halflife_nimg=500.0),
        batch_size=8,
        measure=dict(num=16, repeats=1, cfg=3.0, euler=(1, 2), second=('dpmpp_2m', 2),
                     shortcut=(1, 2), head_steps=(2,), judge_steps=20, grid=16)),
    'small': dict(
        preset='small', data=dict(image_size=16, jitter=0.3, stroke=0.0),
        vqvae=dict(data=dict(batch_size=32),
                   model=dict(base_channels=16, n_res_blocks=0, norm_groups=8, scales=(1, 2, 4),
                              n_phi=3),
                   train=dict(steps=1500, warmup_steps=50, eval_every=1500, eval_batches=4,
                              ckpt_every=750)),
        backbone=dict(d_model=96, n_layers=4, n_heads=4), dit=dict(patch_size=4),
        hart=dict(head_width=64, head_depth=2),
        train=dict(steps=800, warmup_steps=50, lr=1e-3, log_every=50, eval_every=800,
                   eval_batches=4, ckpt_every=400, ema_halflife_nimg=5000.0),
        batch_size=32,
        measure=dict(num=256, repeats=2, cfg=3.0, euler=(1, 2, 4, 8, 16), second=('dpmpp_2m', 8),
                     shortcut=(1, 2, 4), head_steps=(2, 8), judge_steps=0, grid=36)),
    'gpu': dict(
        preset='base', data=dict(image_size=32, jitter=0.3, stroke=0.0),
        vqvae=dict(train=dict(steps=20_000)),
        backbone=dict(d_model=512, n_layers=12, n_heads=8, dtype='bfloat16'),
        dit=dict(patch_size=4),
        hart=dict(head_width=384, head_depth=3, head_freq_dim=256),
        train=dict(steps=40_000, warmup_steps=1000, lr=3e-4, log_every=100, eval_every=5000,
                   eval_batches=16, ckpt_every=5000, ema_halflife_nimg=500_000.0),
        batch_size=256,
        measure=dict(num=1024, repeats=3, cfg=3.0, euler=(1, 2, 4, 8, 16, 32),
                     second=('dpmpp_2m', 16), shortcut=(1, 2, 4, 8), head_steps=(2, 8),
                     judge_steps=0, grid=64)),
}


def configs(spec: dict, tokenizer: str) -> dict:
  """{'vqvae', 'dit', 'shortcut', 'var', 'hart'} -> ConfigDicts of one budget's `spec`; VAR and
  HART read the tokenizer run at `tokenizer` and copy its shape fields."""
  p, data = spec['preset'], spec['data']
  vq = apply(config_file(f'vqvae_glyphs.py:{p}'), {**spec['vqvae'], 'data': {
      **data, **spec['vqvae'].get('data', {})}})
  gen_data = {**data, 'batch_size': spec['batch_size']}
  tok = {k: vq.model[k] for k in TOKENIZER_FIELDS}  # configs/var_glyphs.py copies the same
  out = {'vqvae': vq}
  for name, file, model in [('dit', 'dit_glyphs.py:{p}', spec['dit']),
                            ('shortcut', 'dit_glyphs.py:{p},shortcut', spec['dit']),
                            ('var', 'var_glyphs.py:{p}', tok),
                            ('hart', 'hart_glyphs.py:{p}', {**tok, **spec['hart']})]:
    c = config_file(file.format(p=p))
    d = dict(gen_data, tokenizer=tokenizer) if name in ('var', 'hart') else gen_data
    apply(c, {'data': d, 'model': {**spec['backbone'], **model}, 'train': spec['train']})
    c.judge.name = ''  # the experiment measures every model itself, after training
    out[name] = c
  return out


def tokenizer_flops(run) -> tuple[float, float]:
  """(training FLOPs, FLOPs to encode one image) of the VQ-VAE run: XLA's cost analysis of one
  image's forward (encode, quantise, decode), x 3 for forward + backward, x steps x batch; and
  of one encode + quantise (what every VAR / HART training image costs the data pipeline)."""
  import jax
  import jax.numpy as jnp
  from paradigms import vqvae
  d = run.config.data
  x = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)

  def flops(fn) -> float:
    cost = jax.jit(fn).lower(run.params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', float('nan')))

  fwd = flops(lambda p, x: run.model.apply({'params': p}, x))
  enc = flops(lambda p, x: vqvae.residual(run.model, p, x))
  t = run.config.train
  return 3 * fwd * t.steps * d.batch_size, enc


def reference_rows(vq_run, judge, ref: dict, num: int) -> tuple[list[dict], np.ndarray]:
  """Scores of a second held-out set of `num` real glyphs and of its VQ-VAE reconstructions
  against the reference set `ref` (module doc). Returns (rows, the discrete reconstructions
  [num, H, W, C] of ref's own images, for the tokenizer's sample grid)."""
  import jax
  from paradigms import vqvae
  from pipelines.images import eval_batches

  @jax.jit
  def recon(p, x):  # x [B, H, W, C] -> (decode(f_hat), decode(f)), both [B, H, W, C]
    return vqvae.reconstruct(vq_run.model, p, x)[::-1]

  real = eval_batches(vq_run.config.data, batch_size=num, num_batches=2)[1]
  x_hat, x_f = recon(vq_run.params, real['image'])
  shown = {'real': real['image'], 'vq': np.asarray(x_hat), 'vq_f': np.asarray(x_f)}
  rows = [{'name': k, **bench.score(judge, x, real['label'], ref['image'])}
          for k, x in shown.items()]
  return rows, np.asarray(recon(vq_run.params, ref['image'])[0])


def legibility_pick(rows: list[dict], name: str) -> dict:
  """The model's setting with the most characters read (ties: strings read, then speed)."""
  mine = [r for r in rows if r['name'] == name]
  key = lambda r: (_num(r['char_accuracy']), _num(r['accuracy']), r.get('images_per_s', 0.0))
  return max(mine, key=key)


def run(ctx) -> report.Section:
  spec = IMAGES[ctx.budget]
  m = spec['measure']
  cs = configs(spec, ctx.workdir('vqvae'))
  runs = {name: ctx.run(name, c) for name, c in cs.items()}  # the tokenizer first
  gens = [runs[k] for k in MODELS]
  tok_train, tok_encode = tokenizer_flops(runs['vqvae'])
  runs['vqvae'].train_flops = tok_train  # convolutions: not the 6 N per image fallback
  ctx.log('images: ' + '; '.join(r.describe() for r in gens))
  dit_settings = ([dict(sampler='euler', steps=n) for n in m['euler']] +
                  [dict(sampler=m['second'][0], steps=m['second'][1])])
  contestants = []
  for name in MODELS:
    r = runs[name]
    opts = (dit_settings if name == 'dit' else
            bench.settings(r.config, r.model, steps=m['shortcut'], head_steps=m['head_steps']))
    tokenizer = (runs['vqvae'].model, runs['vqvae'].params) if r.config.data.tokenizer else None
    contestants.append(bench.Contestant(name, r.config, r.model, r.params, opts, tokenizer))
  result = bench.measure(contestants, num=m['num'], cfg=m['cfg'], seed=ctx.seed,
                         repeats=m['repeats'], judge_steps=m['judge_steps'], keep_samples=True,
                         log=ctx.log)
  rows = result.rows
  refs, vq_grid = reference_rows(runs['vqvae'], result.judge, result.reference, m['num'])
  picks = {name: legibility_pick(rows, name) for name in MODELS}
  plots, texts = _draw(ctx.out, rows, refs, picks, result, vq_grid, m['grid'],
                       cs['dit'].data.alphabet)
  compute = (report.compute_line(gens) + f' Tokenizer (VAR and HART only): vqvae '
             f'{runs["vqvae"].n_params:,} params / {tok_train:.2e} FLOPs to train (XLA cost '
             f'analysis), plus {tok_encode:.2e} FLOPs to encode each VAR/HART training image.')
  md = _markdown(ctx.budget, spec, rows, refs, picks, runs, compute, plots, texts, result, m)
  return report.Section(
      name='images', title='Images: DiT vs shortcut vs VAR vs HART (speed, FD, legibility)',
      markdown=md, plots=list(plots.values()),
      results={'budget_spec': spec, 'seed': ctx.seed, 'rows': rows, 'reference_rows': refs,
               'legibility': {k: _by_length(v) for k, v in picks.items()},
               'judge': {'info': result.judge.info, 'image_size': result.judge.image_size},
               'runs': {k: _run_record(r) for k, r in runs.items()},
               'tokenizer_flops': {'train': tok_train, 'encode_per_image': tok_encode}})


# --- Report ----------------------------------------------------------------------------------

def _num(v) -> float:
  return -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pct(v) -> float | None:
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v


def _by_length(row: dict) -> dict:
  return {'setting': bench.describe(row) if 'nfe' in row else 'reference',
          **{str(n): v for n, v in row['by_length'].items()}}


def _run_record(r) -> dict:
  return {'workdir': r.workdir, 'n_params': r.n_params, 'train_flops': r.train_flops,
          'train_seconds': r.train_seconds, 'eval': r.eval,
          'config': json.loads(r.config.to_json_best_effort())}


def _texts(labels, alphabet: str) -> list[str]:
  return [''.join(alphabet[i - 1] for i in row if i > 0) for row in np.asarray(labels)]


def _draw(out, rows, refs, picks, result, vq_grid, grid: int, alphabet: str) -> tuple[dict, str]:
  """The speed-FD plot, the legibility plot and one sample grid per model (+ the real glyphs
  and their VQ-VAE reconstructions);
  returns ({what: file name}, the grid's requested strings in reading order)."""
  from evaluators.images import image_grid
  plots = {}
  series, notes = {}, {}
  for name in MODELS:  # one line per model and sampler, points in NFE order
    mine = [r for r in rows if r['name'] == name and 'images_per_s' in r]
    for sampler in dict.fromkeys(r.get('sampler') for r in mine):
      pts = [r for r in mine if r.get('sampler') == sampler]
      label = LABELS[name] + (f' {sampler}' if name == 'dit' else '')
      series[label] = ([r['images_per_s'] for r in pts], [r['fd'] for r in pts])
      notes[label] = [f'NFE {r["nfe"]}' + (f'+{r["head_steps"]}h' if 'head_steps' in r else '')
                      for r in pts]
  real_fd = next(r['fd'] for r in refs if r['name'] == 'real')
  plots['speed'] = report.plot(os.path.join(out, 'images_speed_fd.png'), series,
                               xlabel='images / s (log)', ylabel='classifier FD (lower is better)',
                               title='Images: speed vs quality', logx=True,
                               hlines={'two real sets': real_fd}, annotate=notes)
  lengths = sorted(rows[0]['by_length'])
  leg = {f'{LABELS[k]} ({bench.describe(r)})': (lengths, [_pct(r['by_length'][n]['accuracy'])
                                                         for n in lengths])
         for k, r in picks.items()}
  for r in refs:
    leg[LABELS[r['name']]] = (lengths, [_pct(r['by_length'][n]['accuracy']) for n in lengths])
  plots['legibility'] = report.plot(os.path.join(out, 'images_legibility.png'), leg,
                                    xlabel='string length (characters)',
                                    ylabel='% of strings read by the judge',
                                    title='Legibility vs string length (dashed: references)',
                                    style={LABELS[r['name']]: 's--' for r in refs},
                                    xticks=lengths)
  size = result.reference['image'].shape[1]
  scale = max(1, 64 // size)  # small glyphs shown enlarged, pixels kept sharp
  shown = {k: result.samples[next(i for i, x in enumerate(rows) if x is r)]
           for k, r in picks.items()}
  shown['real'], shown['vq'] = result.reference['image'], vq_grid
  for k, x in shown.items():
    img = image_grid(np.clip(x[:grid], -1, 1))
    path = os.path.join(out, f'images_grid_{k}.png')
    img.resize((img.width * scale, img.height * scale), 0).save(path)
    plots[f'grid_{k}'] = os.path.basename(path)
  return plots, ' '.join(_texts(result.reference['label'][:grid], alphabet))


def _markdown(budget, spec, rows, refs, picks, runs, compute, plots, texts, result, m) -> str:
  gens = [runs[k] for k in MODELS]
  table_rows = []
  for r in rows:
    table_rows.append({'model': LABELS[r['name']], 'setting': bench.describe(r), 'nfe': r['nfe'],
                       'ips': r.get('images_per_s'), 'fd': r['fd'],
                       'acc': _pct(r['accuracy']), 'chars': _pct(r['char_accuracy'])})
  for r in refs:
    table_rows.append({'model': LABELS[r['name']], 'setting': 'reference', 'fd': r['fd'],
                       'acc': _pct(r['accuracy']), 'chars': _pct(r['char_accuracy'])})
  speed = report.table(table_rows, [('model', 'model'), ('setting', 'sampler / steps'),
                                    ('nfe', 'NFE'), ('ips', 'images/s', '.4g'),
                                    ('fd', 'FD', '.4g'), ('acc', 'strings read %', '.1f'),
                                    ('chars', 'characters read %', '.1f')])
  lengths = sorted(rows[0]['by_length'])
  leg_rows = []
  for k, r in [*picks.items(), *((x['name'], x) for x in refs)]:
    row = {'model': LABELS[k], 'setting': bench.describe(r) if 'nfe' in r else 'reference'}
    for n in lengths:
      b = r['by_length'][n]
      row[f's{n}'] = (f'{report.fmt(_pct(b["accuracy"]), ".1f")} / '
                      f'{report.fmt(_pct(b["char_accuracy"]), ".1f")} (n={b["count"]})')
    leg_rows.append(row)
  legibility = report.table(leg_rows, [('model', 'model'), ('setting', 'setting')] +
                            [(f's{n}', f'{n} char{"s" if n > 1 else ""}: strings / chars %')
                             for n in lengths])
  n_params = [r.n_params for r in gens]
  spread = max(n_params) / min(n_params) - 1
  vq_eval = runs['vqvae'].eval
  alt = {**LABELS, 'real': 'real glyphs', 'vq': 'their VQ-VAE reconstructions'}
  grids = ' '.join(f'![{alt[k]}]({plots[f"grid_{k}"]})' for k in (*MODELS, 'real', 'vq'))
  s = spec['data']
  parts = [
      f'Budget `{budget}`: {s["image_size"]}px glyphs (jitter {s["jitter"]}, 1-'
      f'{result.reference["label"].shape[1]} characters), every generator trained '
      f'{spec["train"]["steps"]} steps x batch {spec["batch_size"]} '
      f'({spec["train"]["steps"] * spec["batch_size"]:,} images) on the shared backbone '
      f'(d={spec["backbone"]["d_model"]}, {spec["backbone"]["n_layers"]} layers); parameter '
      f'counts within {100 * spread:.0f}% of each other. {m["num"]} samples per setting for the '
      f'same labels and seed, guidance w={m["cfg"]} for all; the judge reads '
      f'{_fmt_pct(result.judge.info.get("eval_accuracy"))} of its own held-out strings (full '
      f'size and position spread). Tokenizer: '
      f'held-out PSNR {report.fmt(vq_eval.get("eval_psnr"), ".1f")} dB.',
      '### Speed vs quality', speed, compute,
      f'![speed vs FD]({plots["speed"]})',
      '### Legibility vs string length',
      'Each model at its setting with the most characters read (the diffusion models choose '
      'among more settings, which favours them slightly). Cells: % of strings / % of '
      'characters read, n = samples of that length.', legibility, compute,
      f'![legibility]({plots["legibility"]})',
      f'Sample grids ({", ".join(LABELS[k] for k in MODELS)}, then the real glyphs and their '
      f'VQ-VAE reconstructions; requested '
      f'strings in reading order: `{texts}`):', grids,
      '### Findings', _findings(rows, picks, refs, runs, m)]
  return '\n\n'.join(parts)


def _fmt_pct(v) -> str:
  p = _pct(v)
  return '-' if p is None else f'{p:.1f}%'


def _lengths_text(row: dict) -> str:
  """'98 / 90 / 40%': strings read by length 1, 2, 3."""
  return ' / '.join(report.fmt(_pct(b['accuracy']), '.0f')
                    for _, b in sorted(row['by_length'].items())) + '%'


def _chars(row: dict) -> int:
  """Characters requested over the row's samples (the denominator of char_accuracy)."""
  return sum(n * b['count'] for n, b in row['by_length'].items())


def _findings(rows, picks, refs, runs, m) -> str:
  """3-4 sentences computed from the numbers (the claims are in the module doc)."""
  by = lambda name: [r for r in rows if r['name'] == name]
  ips = lambda r: r.get('images_per_s', float('nan'))
  out = []
  dit_best = min(by('dit'), key=lambda r: r['fd'])
  for name, claim, bar in [('var', 'far faster than DiT', 2.0),
                           ('hart', '4.5-7.7x the throughput of diffusion', 4.5)]:
    r = min(by(name), key=lambda r: r['fd'])
    # the fastest DiT setting (flow or shortcut) at least as good in FD: equal-quality speed
    ok = [x for x in by('dit') + by('shortcut') if x['fd'] <= r['fd']]
    match = max(ok, key=ips) if ok else None
    ratio = ips(r) / ips(match if match is not None else dit_best)
    text = (f'{LABELS[name]} ({bench.describe(r)}) draws {ips(r):.3g} images/s at FD '
            f'{r["fd"]:.4g}, {ips(r) / ips(dit_best):.3g}x the images/s of DiT\'s best-FD '
            f'setting ({bench.describe(dit_best)}, FD {dit_best["fd"]:.4g})')
    if match is not None:
      text += (f' and {ratio:.3g}x the fastest DiT setting at least as good in FD '
               f'({LABELS[match["name"]]} {bench.describe(match)}, FD {match["fd"]:.4g})')
    else:
      text += ' (no DiT setting reaches its FD)'
    verdict = 'consistent with' if ratio >= bar else 'against'
    out.append(f'{text}: {verdict} the claim that it is {claim}.')
  v = runs['var'].model.cfg
  side, K = v.scales[-1], v.num_scales
  out.append(f'Raster AR is not among these runs; over the same {side}x{side} token grid it '
             f'would take {side * side} sequential passes to VAR\'s {K} ({side * side / K:.2g}x '
             'the NFE; the ~20x of the VAR paper is at 256px, 16x16 tokens over 10 scales).')
  ar = max((picks['var'], picks['hart']), key=lambda r: _num(r['char_accuracy']))
  dif = max((picks['dit'], picks['shortcut']), key=lambda r: _num(r['char_accuracy']))
  pa, pb, na, nb = _num(ar['char_accuracy']), _num(dif['char_accuracy']), _chars(ar), _chars(dif)
  pool = (pa * na + pb * nb) / max(na + nb, 1)
  se = math.sqrt(max(pool * (1 - pool), 0.0) * (1 / max(na, 1) + 1 / max(nb, 1)))
  if min(pa, pb) < 0 or abs(pa - pb) <= 2 * se:
    verdict = 'within 2 standard errors of each other: no evidence for or against'
  else:
    verdict = 'for' if pa > pb else 'against'
  real = next(r for r in refs if r['name'] == 'real')
  vq = next(r for r in refs if r['name'] == 'vq')
  out.append(
      f'Legibility: the AR family\'s best ({LABELS[ar["name"]]}) reads '
      f'{_fmt_pct(ar["char_accuracy"])} of characters ({_lengths_text(ar)} of 1 / 2 / 3-character strings) against diffusion\'s '
      f'best ({LABELS[dif["name"]]}) {_fmt_pct(dif["char_accuracy"])} ({_lengths_text(dif)}), '
      f'{verdict} the claim of AR\'s edge at text in images at this scale. Both are bounded by '
      f'the judge, which reads real glyphs at {_lengths_text(real)}, and the AR family also by '
      f'its tokenizer, whose reconstructions it reads at {_lengths_text(vq)}; every model here '
      'is trained for minutes, far short of legible text.')
  return ' '.join(out)
