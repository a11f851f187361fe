"""Fill in the middle of held-out code: masked diffusion with both sides vs AR with the prefix.

    python -m arena infill --budget small --out arena/report

The claim under test: a diffusion LM sees the context on both sides of a gap, so it can edit
and infill where a left-to-right model cannot (MDLM, Sahoo et al. 2024; LLaDA, Nie et al.
2025; Mercury's "edit" use). K windows of the CPython corpus's held-out split (`windows`):
P bytes of prefix, a span of S bytes that starts at a line start and is not only whitespace,
P bytes of suffix, no EOS inside, 2P + S <= the contestants' seq_len. Fillers:
  MDLM, prefix + suffix   x = prefix, S masks, suffix (`sample.masked_diffusion`): ancestral
                          with S steps at temperature 1 (final step sampled too), and LLaDA
                          confidence top-k with S steps, greedy (temperature 0);
  MDLM, prefix only       the same samplers on prefix + S masks: the control that separates
                          the suffix's worth from the model's;
  AR, prefix only         `sample.autoregressive.generate`, S tokens, temperature 1 and greedy;
  ground truth            the true span (reference).
Scores (`score`), over the K windows: exact match of the whole span, per-byte accuracy (all
bytes, and the non-whitespace ones: a span that starts at a line start often opens with
indentation, which any model gets right), the judge (`judge` AR run) bits/byte of the fill
given the prefix, and judge bits/byte of the true suffix given prefix + fill: does the fill
connect to what follows? One judge pass over
prefix + fill + suffix [K, 2P + S] gives both. A FIM-trained AR is left out.
"""
from __future__ import annotations

import math
import os

from arena import report
from arena.budgets import JUDGE, TEXT
from arena.runs import text_config
from arena import text_samplers as ts

# Per budget: span S, context P (each side), windows K. 2P + S = the contestants' seq_len.
INFILL = {
    'tiny': dict(span=8, context=12, count=16),
    'small': dict(span=16, context=56, count=256),
    'gpu': dict(span=32, context=240, count=1024),
}
WHITESPACE = (9, 10, 13, 32)  # tab, newline, carriage return, space


def windows(tokens, *, span: int, context: int, count: int, seed: int):
  """`count` infill windows of `tokens` [T] (a held-out split): context + span + context tokens
  with no EOS, the span starting at a line start (the token before it is a newline) and holding
  some non-whitespace; chosen without replacement, deterministic given `seed`, in corpus order.
  Returns int32 [count, 2 context + span]; the span is [:, context:context + span]."""
  import numpy as np
  from pipelines.text import ByteTokenizer
  if min(span, context, count) < 1:
    raise ValueError(f'span, context and count must be >= 1, got {span}, {context}, {count}')
  tokens = np.asarray(tokens)
  W, T = 2 * context + span, len(tokens)
  if T < W:
    raise ValueError(f'{T} tokens cannot hold one window of {W}')
  s = np.arange(context, T - span - context + 1)  # [M] candidate span starts
  eos = np.concatenate([[0], np.cumsum(tokens == ByteTokenizer.EOS)])  # eos[i]: EOS in [0, i)
  text = np.concatenate([[0], np.cumsum(~np.isin(tokens, WHITESPACE))])  # non-whitespace count
  ok = ((tokens[s - 1] == ord('\n')) & (eos[s + span + context] == eos[s - context])
        & (text[s + span] > text[s]))
  starts = s[ok]
  if len(starts) < count:
    raise ValueError(f'only {len(starts)} windows of {context} + {span} + {context} tokens '
                     'qualify; lower count, span or context')
  chosen = np.sort(np.random.default_rng(seed).choice(starts, count, replace=False))
  return np.stack([tokens[c - context:c + span + context] for c in chosen]).astype(np.int32)


def score(windows, fill, judge, *, span: int, context: int) -> dict:
  """Exact match, per-byte accuracy (over all bytes of the span, and over its non-whitespace
  bytes only, `text_accuracy`: indentation is easy) and judge bits/byte (module doc) of
  `fill` [K, S] for `windows` [K, 2P + S]; judge: tokens [K, L] -> nats [K, L - 1] of tokens
  1..L-1. Each metric comes with its standard error over the K windows (`*_se`)."""
  import numpy as np
  windows, fill = np.asarray(windows), np.asarray(fill)
  K, P, S = len(windows), context, span
  if fill.shape != (K, S):
    raise ValueError(f'fill has shape {fill.shape}, expected {(K, S)}')
  truth = windows[:, P:P + S]
  seq = np.concatenate([windows[:, :P], fill, windows[:, P + S:]], axis=1).astype(np.int32)
  bits = np.asarray(judge(seq), np.float64) / math.log(2.0)  # [K, 2P + S - 1], token i + 1
  right = fill == truth  # [K, S]
  text = ~np.isin(truth, WHITESPACE)  # [K, S] the span's bytes that are not indentation etc.
  per = {'exact_match': right.all(axis=1).astype(np.float64),
         'byte_accuracy': right.mean(axis=1),
         'text_accuracy': (right & text).sum(axis=1) / np.maximum(text.sum(axis=1), 1),
         'span_bpb': bits[:, P - 1:P + S - 1].mean(axis=1),
         'suffix_bpb': bits[:, P + S - 1:].mean(axis=1)}
  out = {}
  for k, v in per.items():
    out[k] = float(v.mean())
    out[k + '_se'] = float(v.std(ddof=1) / math.sqrt(K)) if K > 1 else math.nan
  return out


def ar_fill(run, prefix, rng, *, span: int, greedy: bool):
  """AR continuation of prefix [K, P] for `span` tokens (KV cache). Returns ([K, S], NFE)."""
  import jax.numpy as jnp
  import numpy as np
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  K, P = prefix.shape
  out = generate(LogitsFn(run.model), run.params, jnp.asarray(prefix), rng,
                 run.model.init_cache(K, P + span), max_new_tokens=span, greedy=greedy)
  return np.asarray(out.tokens)[:, P:], int(out.nfe)


def mdlm_fill(run, prefix, suffix, rng, *, span: int, sampler: str):
  """MDLM fill of `span` masks after prefix [K, P] (and before suffix [K, P'], or nothing when
  None) by 'ancestral' (temperature 1, S steps) or 'topk_greedy' (LLaDA top-k, S steps,
  temperature 0). Returns ([K, S], NFE)."""
  import jax.numpy as jnp
  import numpy as np
  from paradigms.masked_diffusion import LogitsFn
  from sample import masked_diffusion as mds
  c = run.config.loss
  K, P = prefix.shape
  parts = [prefix, np.full((K, span), c.mask_id, np.int32)] + ([] if suffix is None else [suffix])
  x = jnp.asarray(np.concatenate(parts, axis=1))  # [K, P + S (+ P')]
  fn = LogitsFn(run.model, c.mask_id, c.time_conditioning)
  if sampler == 'ancestral':
    out = mds.ancestral(fn, run.params, x, rng, mask_id=c.mask_id, steps=span,
                        schedule=c.schedule, final_argmax=False)
  elif sampler == 'topk_greedy':
    out = mds.confidence_topk(fn, run.params, x, rng, mask_id=c.mask_id, steps=span,
                              temperature=0.0)
  else:
    raise ValueError(f"unknown MDLM infill sampler {sampler!r}; use 'ancestral' or 'topk_greedy'")
  return np.asarray(out.tokens)[:, P:P + span], int(out.nfe)


# (label, model, context the model gets, sampler): the rows of the table, in order
FILLERS = (
    ('MDLM, prefix + suffix, ancestral T=1', 'mdlm', 'prefix + suffix', 'ancestral'),
    ('MDLM, prefix + suffix, top-k greedy', 'mdlm', 'prefix + suffix', 'topk_greedy'),
    ('MDLM, prefix only, ancestral T=1', 'mdlm', 'prefix', 'ancestral'),
    ('MDLM, prefix only, top-k greedy', 'mdlm', 'prefix', 'topk_greedy'),
    ('AR, prefix only, T=1', 'ar', 'prefix', 'sample'),
    ('AR, prefix only, greedy', 'ar', 'prefix', 'greedy'),
)


def findings(rows: dict, runs: dict, K: int) -> str:
  """2-4 sentences from the numbers: MDLM with both sides vs AR, the suffix's worth to MDLM,
  whether the fills connect to the true suffix, and the verdict. rows: {label: row}."""
  both, alone = (rows[f'MDLM, {c}, top-k greedy'] for c in ('prefix + suffix', 'prefix only'))
  ar, truth = rows['AR, prefix only, greedy'], rows['ground truth']
  both_t, ar_t = rows['MDLM, prefix + suffix, ancestral T=1'], rows['AR, prefix only, T=1']
  pct = lambda r: (f'{r["exact_match"]:.0%} exact / {r["byte_accuracy"]:.0%} per byte / '
                   f'{r["text_accuracy"]:.0%} of non-space bytes')
  out = [f'Greedy fills of {K} held-out spans: MDLM with prefix and suffix gets {pct(both)}, '
         f'AR with the prefix alone {pct(ar)}.',
         f'The suffix is worth {100 * (both["text_accuracy"] - alone["text_accuracy"]):+.0f} '
         f'points of non-space accuracy to MDLM (prefix only: {pct(alone)}).',
         f'The true suffix costs the judge {both["suffix_bpb"]:.2f} bits/byte after MDLM\'s '
         f'greedy fill ({both_t["suffix_bpb"]:.2f} sampled), {ar["suffix_bpb"]:.2f} after AR\'s '
         f'({ar_t["suffix_bpb"]:.2f} sampled) and {truth["suffix_bpb"]:.2f} after the true span.']
  acc = _beats(both, ar, 'text_accuracy', +1)  # MDLM's edge, beyond 2 standard errors
  link = _beats(both, ar, 'suffix_bpb', -1)
  helps = _beats(both, alone, 'text_accuracy', +1)
  nelbo, nll = (runs[k].eval.get('eval_bpb') for k in ('mdlm', 'ar'))
  model_gap = (f' (held-out bits/byte: MDLM NELBO <= {nelbo:.2f}, AR {nll:.2f})'
               if nelbo is not None and nll is not None else '')
  weaker = bool(model_gap) and nelbo > nll
  if acc and link:
    out.append('So the bidirectional edge shows at this scale: given both sides MDLM gets more '
               'non-space bytes right than AR and leaves the true suffix easier to predict'
               + model_gap + '.')
  elif acc or link:
    out.append('So the bidirectional edge shows only in part at this scale: MDLM '
               + ('gets more non-space bytes right than AR but does not connect better to the '
                  'suffix' if acc else 'connects better to the suffix but gets no more non-space '
                  'bytes right than AR') + model_gap + '.')
  else:
    out.append('So diffusion\'s bidirectional edge does not show at this scale (no difference '
               'beyond two standard errors in MDLM\'s favour): '
               + ('the suffix helps MDLM' if helps else 'MDLM does not measurably use the suffix')
               + (', and its model is weaker' if weaker else '') + model_gap + '.')
  return ' '.join(out)


def _beats(a: dict, b: dict, key: str, sign: int) -> bool:
  """Row a beats row b on `key` (sign +1: higher is better) by over 2 standard errors (unpaired,
  so conservative for rows scored on the same windows)."""
  return sign * (a[key] - b[key]) > 2 * math.hypot(a[key + '_se'], b[key + '_se'])


def run(ctx) -> report.Section:
  import jax
  from pipelines.text import load_corpus
  knobs = INFILL[ctx.budget]
  S, P, K = knobs['span'], knobs['context'], knobs['count']
  runs = {'judge': ctx.run('judge', text_config('ar', JUDGE[ctx.budget])),
          'ar': ctx.run('ar', text_config('ar', TEXT[ctx.budget])),
          'mdlm': ctx.run('mdlm', text_config('mdlm', TEXT[ctx.budget]))}
  seq_len = min(runs['mdlm'].config.data.seq_len, runs['judge'].config.data.seq_len)
  if 2 * P + S > seq_len:
    raise ValueError(f'INFILL[{ctx.budget!r}]: window 2 x {P} + {S} exceeds seq_len {seq_len}')
  win = windows(load_corpus(runs['judge'].config.data).eval, span=S, context=P, count=K,
                seed=ctx.seed)  # [K, 2P + S]
  prefix, truth, suffix = win[:, :P], win[:, P:P + S], win[:, P + S:]
  judge = ts.judge_nll(runs['judge'].model, runs['judge'].params)
  rng = jax.random.key(ctx.seed)
  rows = {'ground truth': dict(label='ground truth', model='-', context='-', sampler='-', nfe=None,
                               **score(win, truth, judge, span=S, context=P))}
  samples = {}
  for i, (label, model, context, sampler) in enumerate(FILLERS):
    r = jax.random.fold_in(rng, i)
    if model == 'ar':
      fill, nfe = ar_fill(runs['ar'], prefix, r, span=S, greedy=sampler == 'greedy')
    else:
      fill, nfe = mdlm_fill(runs['mdlm'], prefix, suffix if context == 'prefix + suffix' else None,
                            r, span=S, sampler=sampler)
    rows[label] = dict(label=label, model=model, context=context, sampler=sampler, nfe=nfe,
                       **score(win, fill, judge, span=S, context=P))
    samples[label] = fill[:4]
    ctx.log(f'infill {label}: exact {rows[label]["exact_match"]:.3f}, '
            f'per byte {rows[label]["byte_accuracy"]:.3f}, suffix {rows[label]["suffix_bpb"]:.2f}')
  order = [label for label, *_ in FILLERS] + ['ground truth']
  table_rows = [rows[k] for k in order]
  plot = report.bars(os.path.join(ctx.out, 'infill.png'), {
      'exact match': {k: rows[k]['exact_match'] for k in order},
      'per-byte accuracy': {k: rows[k]['byte_accuracy'] for k in order},
      'accuracy, non-space bytes': {k: rows[k]['text_accuracy'] for k in order},
      'judge bits/byte of the fill': {k: rows[k]['span_bpb'] for k in order},
      'judge bits/byte of the true suffix': {k: rows[k]['suffix_bpb'] for k in order}},
      title=f'Infilling {S}-byte spans of held-out code ({K} windows, {ctx.budget} budget)')
  cols = [('label', 'filler'), ('nfe', 'NFE', '.0f'), ('exact_match', 'exact match', '.3f'),
          ('byte_accuracy', 'per-byte acc.', '.3f'), ('text_accuracy', 'non-space acc.', '.3f'),
          ('span_bpb', 'fill bits/byte', '.2f'),
          ('suffix_bpb', 'suffix bits/byte', '.2f')]
  named = [runs['judge'], runs['ar'], runs['mdlm']]
  markdown = '\n\n'.join([
      f'{K} windows of the held-out split: {P} bytes of prefix, a {S}-byte span starting at a '
      f'line start, {P} bytes of suffix. Bits/byte are the `judge` AR model\'s: of the fill given '
      f'the prefix, and of the true suffix given prefix + fill. Standard errors are in '
      f'infill.json.',
      report.table(table_rows, cols),
      report.compute_line(named),
      f'![]({plot})',
      findings(rows, runs, K)])
  from pipelines.text import ByteTokenizer
  tok = ByteTokenizer()
  examples = [{'prefix': tok.decode(prefix[j]), 'truth': tok.decode(truth[j]),
               'suffix': tok.decode(suffix[j]),
               **{label: tok.decode(fill[j]) for label, fill in samples.items()}}
              for j in range(min(4, K))]
  results = {'settings': dict(knobs, temperature=1.0, steps=S, judge='judge',
                              fillers=[dict(zip(('label', 'model', 'context', 'sampler'), f))
                                       for f in FILLERS]),
             'rows': table_rows, 'examples': examples,
             'runs': {r.name: r.record() for r in named}}
  return report.Section(name='infill', title='Infilling: bidirectional context',
                        markdown=markdown, results=results, plots=[plot])
