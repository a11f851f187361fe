"""The `images` experiment's report (arena/images.py): tables, plots, sample grids and findings
computed from the numbers."""
from __future__ import annotations

import math
import os

import numpy as np

from arena import image_samplers as bench
from arena import report

LABELS = {'dit': 'DiT', 'var': 'VAR', 'hart': 'HART', 'raster_ar': 'raster AR',
          'maskgit': 'MaskGIT', 'transfusion': 'Transfusion', 'captioner': 'AR captioner',
          'real': 'real glyphs (2nd held-out set)', 'vqvae': 'VQ-VAE (multi-scale) reconstruction',
          'vqvae_single': 'VQ-VAE (single scale) reconstruction'}
# the seed's claim: autoregressive vs diffusion image generators (HART is both: its own row)
FAMILY = {'raster_ar': 'AR', 'var': 'AR', 'dit': 'diffusion', 'maskgit': 'diffusion',
          'transfusion': 'diffusion', 'hart': 'hybrid'}
MODELS = tuple(FAMILY)


def num(v) -> float:
  return -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def pct(v) -> float | None:
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100 * v


def fmt_pct(v) -> str:
  p = pct(v)
  return '-' if p is None else f'{p:.1f}%'


def by_length(row: dict) -> dict:
  return {'setting': bench.describe(row) if 'nfe' in row else 'reference',
          **{str(n): v for n, v in row['by_length'].items()}}


def pooled(row: dict, keep) -> tuple[float, int]:
  """(exact rate, count) over a row's strings whose length n has keep(n); (-1, 0) when none."""
  cells = [b for k, b in row.get('by_length', {}).items() if keep(int(k)) and b.get('count')]
  n = sum(int(b['count']) for b in cells)
  return (sum(num(b['accuracy']) * int(b['count']) for b in cells) / n, n) if n else (-1.0, 0)


def two(row: dict) -> tuple[float, int]:
  """(exact rate, count) of 2-character strings in a row."""
  return pooled(row, lambda n: n == 2)


def two_pct(row: dict) -> float | None:
  """The 2-character exact rate in percent; None when the row has no 2-character string."""
  rate, count = two(row)
  return pct(rate) if count else None


def differ(a: tuple, b: tuple) -> str:
  """'for' / 'against' / 'no evidence': a two-proportion z test at 2 standard errors of rates
  (p, n)."""
  (pa, na), (pb, nb) = a, b
  if min(pa, pb) < 0 or not na or not nb:
    return 'no evidence'
  pool = (pa * na + pb * nb) / (na + nb)
  se = math.sqrt(max(pool * (1 - pool), 0.0) * (1 / na + 1 / nb))
  if abs(pa - pb) <= 2 * se:
    return 'no evidence'
  return 'for' if pa > pb else 'against'


def multi(row: dict) -> tuple[float, int]:
  """(exact rate, count) of strings of 2+ characters in a row: the verdict's statistic. Held-out
  single characters are the few symbols the hash holds out ('1' and 'S' of the default
  alphabet at 0.2), so length 1 is a handful of prompts drawn again and again (identical
  samples under greedy decoding): a test on them, or on characters that they dominate, counts
  one prompt many times. Strings of 2+ characters are ~0.2 |A|^n distinct prompts."""
  return pooled(row, lambda n: n >= 2)


def draw(out, rows, refs, picks, result, vq_grids, grid: int) -> dict:
  """The speed-FD plot, legibility by length, and a sample grid per model (+ real glyphs and
  the tokenizers' reconstructions): {what: file name}."""
  from evaluators.images import image_grid
  plots, series, notes = {}, {}, {}
  for name in MODELS:
    mine = [r for r in rows if r['name'] == name and 'images_per_s' in r]
    if mine:
      series[LABELS[name]] = ([r['images_per_s'] for r in mine], [r['fd'] for r in mine])
      notes[LABELS[name]] = [f'NFE {r["nfe"]}' for r in mine]
  real_fd = next(r['fd'] for r in refs if r['name'] == 'real')
  plots['speed'] = report.plot(os.path.join(out, 'images_speed_fd.png'), series,
                               xlabel='images / s (log)', ylabel='classifier FD (lower is better)',
                               title='Images on prompts: speed vs quality', logx=True,
                               hlines={'two real sets': real_fd}, annotate=notes)
  lengths = sorted(rows[0]['by_length'])
  leg = {f'{LABELS[k]} ({bench.describe(r)})': (lengths, [pct(r['by_length'][n]['accuracy'])
                                                        for n in lengths])
         for k, r in picks.items()}
  for r in refs:
    leg[LABELS[r['name']]] = (lengths, [pct(r['by_length'][n]['accuracy']) for n in lengths])
  plots['legibility'] = report.plot(os.path.join(out, 'images_legibility.png'), leg,
                                    xlabel='string length (characters)',
                                    ylabel='% of held-out strings read by the judge',
                                    title='Legibility vs string length (dashed: references)',
                                    style={LABELS[r['name']]: 's--' for r in refs},
                                    xticks=lengths)
  scale = max(1, 64 // result.reference['image'].shape[1])
  shown = {k: result.samples[next(i for i, x in enumerate(rows) if x is r)]
           for k, r in picks.items()}
  shown['real'] = result.reference['image']
  shown.update(vq_grids)
  for k, x in shown.items():
    img = image_grid(np.clip(x[:grid], -1, 1), cols=4)
    path = os.path.join(out, f'images_grid_{k}.png')
    img.resize((img.width * scale, img.height * scale), 0).save(path)
    plots[f'grid_{k}'] = os.path.basename(path)
  return plots


def _length_cells(r: dict, lengths) -> dict:
  cells = {}
  for n in lengths:
    b = r['by_length'][n]
    cells[f's{n}'] = f'{report.fmt(pct(b["accuracy"]), ".0f")} ({b["count"]})'
  return cells


def markdown(budget, spec, rows, refs, picks, seen, reading, runs, plots, result, m) -> str:
  timing = m['timing']
  speed_rows = [{'model': LABELS[r['name']], 'setting': bench.describe(r), 'nfe': r['nfe'],
                 'b1': r.get(f'images_per_s_b{timing[0]}'),
                 'bN': r.get(f'images_per_s_b{timing[-1]}'), 'fd': r['fd'],
                 'acc': pct(r['accuracy']), 'chars': pct(r['char_accuracy']),
                 'two': two_pct(r)} for r in rows]
  speed = report.table(speed_rows, [
      ('model', 'model'), ('setting', 'setting'), ('nfe', 'NFE'),
      ('b1', f'images/s @b{timing[0]}', '.3g'), ('bN', f'images/s @b{timing[-1]}', '.3g'),
      ('fd', 'FD', '.4g'), ('acc', 'held-out strings read %', '.1f'),
      ('chars', 'characters %', '.1f'), ('two', '2-char strings %', '.1f')])
  lengths = sorted(rows[0]['by_length'])
  leg_rows = []
  for k, r in [*picks.items(), *((x['name'], x) for x in refs)]:
    leg_rows.append({'model': LABELS[k], 'setting': bench.describe(r) if 'nfe' in r else
                     'reference', 'seen': fmt_pct(seen[k]['accuracy']) if k in seen else '-',
                     'held': fmt_pct(r['accuracy']), **_length_cells(r, lengths)})
  legibility = report.table(leg_rows, [('model', 'model'), ('setting', 'setting'),
                                       ('seen', 'seen strings'), ('held', 'held-out')] +
                            [(f's{n}', f'{n}') for n in lengths])
  read_rows = [{'model': LABELS[r['name']], 'split': r['split'], 'acc': pct(r['accuracy']),
                'chars': pct(r['char_accuracy']), **_length_cells(r, lengths)} for r in reading]
  reading_md = report.table(read_rows, [('model', 'reader'), ('split', 'strings'),
                                        ('acc', 'exact %', '.1f'), ('chars', 'characters %', '.1f')]
                            + [(f's{n}', f'{n}') for n in lengths])
  gens = [runs[k] for k in MODELS]
  n_params = [r.n_params for r in gens]
  train_min = {k: runs[k].train_seconds / 60 for k in runs}
  cost = ', '.join(f'{k} {v:.1f}' for k, v in train_min.items())
  grids = ' '.join(f'![{LABELS.get(k, k)}]({plots[f"grid_{k}"]})'
                   for k in (*MODELS, 'real', 'vqvae', 'vqvae_single'))
  s, b = spec['train']['steps'], spec['batch_size']
  H = result.reference['image'].shape[1]
  real_acc = next(r['accuracy'] for r in refs if r['name'] == 'real')
  parts = [
      f'Budget `{budget}`: {H}x{2 * H} glyph images of prompts of 1-'
      f'{result.reference["label"].shape[1]} characters (held-out '
      f'strings never trained on), every model trained {s} steps x batch {b} ({s * b:,} images) '
      f'on one backbone (d={spec["backbone"]["d_model"]}, {spec["backbone"]["n_layers"]} layers; '
      f'{min(n_params):,}-{max(n_params):,} params). {m["num"]} samples per setting for the same '
      f'prompts and seed, guidance w in {{{", ".join(f"{w:g}" for w in m["cfg"])}}} '
      '(1 = none), top-k in '
      f'{{{", ".join("full" if k == 0 else "greedy" if k == 1 else str(k) for k in m["top_k"])}}} '
      f'for the token models; the judge (a CTC reader of up to '
      f'{result.judge.max_chars} characters) reads {fmt_pct(real_acc)} of real held-out strings '
      f'of this set and {fmt_pct(result.judge.info.get("eval_accuracy"))} of its own 1-'
      f'{result.judge.max_chars}-character held-out set (full size spread). Training '
      f'minutes: {cost}.',
      '### Every setting: speed, FD, legibility', speed, report.compute_line(gens),
      f'![speed vs FD]({plots["speed"]})',
      '### Legibility by string length (held-out strings; each model at its most legible setting)',
      'Cells: % of strings read exactly (samples of that length). "seen strings": the same '
      'setting on prompts of trained strings.', legibility,
      f'![legibility]({plots["legibility"]})',
      '### Reading (image -> text): Transfusion vs a separately trained AR captioner',
      'The same network and budget; greedy decoding of real renders.', reading_md,
      '### Samples', f'Held-out prompts, in reading order: '
      f'`{" ".join(_texts(result.reference["label"][:m["grid"]]))}`', grids,
      '### Findings', findings(rows, picks, seen, reading, refs)]
  return '\n\n'.join(parts)


def _texts(labels) -> list[str]:
  from pipelines.glyphs import DEFAULT_ALPHABET, decode_label
  return [decode_label(row, DEFAULT_ALPHABET) for row in np.asarray(labels)]


def findings(rows, picks, seen, reading, refs) -> str:
  """The plain answers, computed from the numbers."""
  out = []
  best = lambda fam: max((picks[k] for k in MODELS if FAMILY[k] == fam),
                         key=lambda r: (multi(r)[0], num(r['char_accuracy'])))
  ar, dif = best('AR'), best('diffusion')
  (p_ar, n_ar), (p_dif, n_dif) = multi(ar), multi(dif)
  verdict = differ((p_ar, n_ar), (p_dif, n_dif))
  answer = {'for': 'for', 'against': 'against', 'no evidence': 'no evidence for or against'}
  out.append(
      f'AR vs diffusion at text in images: the best AR model ({LABELS[ar["name"]]}, '
      f'{bench.describe(ar)}) reads {fmt_pct(p_ar if n_ar else None)} of held-out strings of '
      f'2+ characters (n={n_ar}; {fmt_pct(ar["char_accuracy"])} of all characters); the best '
      f'diffusion model ({LABELS[dif["name"]]}, {bench.describe(dif)}) '
      f'{fmt_pct(p_dif if n_dif else None)} '
      f'({fmt_pct(dif["char_accuracy"])}): {answer[verdict]} the seed\'s claim at this scale '
      '(a two-proportion test on strings of 2+ characters at 2 standard errors; held-out '
      'single characters are a few prompts repeated, so they are left out of the test).')
  r2 = {k: two(v) for k, v in picks.items()}
  top = max(r2, key=lambda k: r2[k][0])
  out.append(f'Held-out 2-character strings: best {LABELS[top]} at '
             f'{fmt_pct(r2[top][0] if r2[top][1] else None)} '
             f'(n={r2[top][1]}; the issue\'s bar is 50%).')
  gaps = [f'{LABELS[k]} {fmt_pct(seen[k]["accuracy"])} vs {fmt_pct(picks[k]["accuracy"])}'
          for k in MODELS if k in seen]
  out.append('Seen vs held-out strings (exact): ' + '; '.join(gaps) + '.')
  held = {r['name']: r for r in reading if r['split'] == 'held-out'}
  if {'transfusion', 'captioner'} <= set(held):
    t, c = held['transfusion'], held['captioner']
    v = differ((num(t['accuracy']), _n(t)), (num(c['accuracy']), _n(c)))
    out.append(f'Reading: Transfusion reads {fmt_pct(t["accuracy"])} of real held-out strings '
               f'exactly, the AR captioner {fmt_pct(c["accuracy"])} ({answer[v]} a difference '
               'at 2 standard errors).')
  real = next(r for r in refs if r['name'] == 'real')
  out.append(f'Ceilings: the judge reads {fmt_pct(real["accuracy"])} of real strings; '
             + '; '.join(f'{LABELS[r["name"]]} {fmt_pct(r["accuracy"])}'
                         for r in refs if r['name'] != 'real') + '.')
  return ' '.join(out)


def _n(row: dict) -> int:
  return sum(int(b['count']) for b in row['by_length'].values())
