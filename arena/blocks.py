"""`blocks`: AR as a special case of block diffusion (BD3-LM, Arriola et al. 2025), with the
uniform-state chains (SEDD's uniform score entropy, UDLM / DUO's NELBO) beside them.

BD3-LM factorises a sequence into L / B blocks, autoregressive over blocks and masked diffusion
inside each: log p(x) = sum_b log p(x^b | x^{<b}), each term bounded by the MDLM NELBO
(REFERENCES.md, "Block diffusion"). B = L is MDLM; B = 1 is next-token prediction, and its
NELBO equals the AR NLL exactly when every token of the block is masked (`mask_all`).
So the held-out bound should rise from the AR NLL towards MDLM's as B grows; the paper reports
on OpenWebText AR 17.54 <= B=4 20.73 <= B=8 21.68 <= B=16 22.27 <= MDLM 22.98 (perplexity).

Every model here is the shared contestant network (budgets.TEXT) with the same data, optimiser
and step count; only the mask and the loss differ. A BD3 step runs the network on 2L tokens
(concat(x_t, x_0)), so its training FLOPs are about twice the others' (stated in the table).
Held-out figures: `train.evaluate.evaluate_run` over the same evenly spaced held-out batches,
the diffusion bounds with their Monte-Carlo standard errors.
"""
from __future__ import annotations

import os

from arena import report
from arena.budgets import TEXT
from arena.runs import duo_recipe, text_config, train_stages

BUDGET = {
    'tiny': dict(blocks=(1, 4), eval_batches=2),
    'small': dict(blocks=(1, 2, 4, 8, 16), eval_batches=32),
    'gpu': dict(blocks=(1, 2, 4, 8, 16, 64), eval_batches=128),
}


def run(ctx) -> report.Section:
  from train.evaluate import evaluate_run
  b, spec = BUDGET[ctx.budget], TEXT[ctx.budget]
  L = spec['data']['seq_len']
  models = [('AR', 'ar', 'ar', None)]
  models += [(f'BD3 B={B}', f'bd3_b{B}', 'bd3', B) for B in b['blocks']]
  models += [(f'MDLM (B=L={L})', 'mdlm', 'mdlm', L)]
  models += [('SEDD (uniform chain)', 'sedd', 'sedd', None), ('UDLM / DUO base', 'duo', 'duo', None),
             ('DUO, curriculum then plain', 'duo_cl', 'duo', None),
             ('DUO, plain then plain (restart control)', 'duo_rs', 'duo', None)]
  recipes = {'duo_cl': 'curriculum', 'duo_rs': 'restart'}
  rows, runs = [], []
  for label, name, kind, B in models:
    if name in recipes:  # two runs: the curriculum (or the plain NELBO), then the plain NELBO
      r = train_stages(ctx, duo_recipe(recipes[name], spec, ctx.workdir))
    else:
      r = ctx.run(name, text_config(kind, spec, block_size=B if kind == 'bd3' else 0))
    runs.append(r)
    e = evaluate_run(r.workdir, batches=b['eval_batches'], seed=ctx.seed)
    rows.append(dict(model=label, block_size=B, bpb=e['bpb'], se=e.get('bpb_se'),
                     bound={'ar': 'exact NLL', 'sedd': 'DSE bound'}.get(kind, 'NELBO'),
                     params=r.n_params,
                     train_flops=r.train_flops, train_min=r.train_seconds / 60, run=r.workdir))
    if kind == 'bd3' and B == 1:  # the same model scored with every token masked: its exact NLL
      e = evaluate_run(r.workdir, batches=b['eval_batches'], seed=ctx.seed, loss={'mask_all': True})
      rows.append(dict(model='BD3 B=1, all masked', block_size=1, bpb=e['bpb'], se=e.get('bpb_se'),
                       bound='exact NLL', params=r.n_params, train_flops=r.train_flops,
                       train_min=None, run=r.workdir))
    ctx.log(f'blocks: {rows[-1]["model"]}: {rows[-1]["bpb"]:.3f} bits/byte')
  ar = rows[0]['bpb']
  for row in rows:
    row['vs_ar'] = row['bpb'] - ar
  bd3 = [r for r in rows if r['model'].startswith('BD3 B=') and r['bound'] == 'NELBO']
  sizes = [r['block_size'] for r in bd3] + [L]
  mdlm = next(r for r in rows if r['model'].startswith('MDLM'))
  bounds = [r['bpb'] for r in bd3] + [mdlm['bpb']]
  plot = report.plot(os.path.join(ctx.out, 'blocks.png'),
                     {'BD3 / MDLM NELBO': (sizes, bounds)},
                     xlabel='block size B (log scale; B = L is MDLM)',
                     ylabel='held-out bits per byte', logx=True, hlines={'AR NLL': ar},
                     title='Block diffusion interpolates AR (B=1) and MDLM (B=L)')
  monotone = all(x <= y + 1e-9 for x, y in zip(bounds, bounds[1:]))
  findings = [
      f'The bound {"rises monotonically" if monotone else "does not rise monotonically"} with '
      f'the block size, from {bounds[0]:.3f} (B=1) to {bounds[-1]:.3f} bits/byte (MDLM), against '
      f'the AR model\'s {ar:.3f}; the paper\'s ordering (AR < B=4 < B=8 < B=16 < MDLM) '
      + ('holds here.' if monotone and ar <= bounds[0] else
         'does not fully hold here: at this scale the Monte-Carlo error of the bounds '
         f'(~{max((r["se"] or 0) for r in bd3):.3f}) and the short training can reorder '
         'neighbours.')]
  exact = next((r for r in rows if r['model'] == 'BD3 B=1, all masked'), None)
  if exact is not None:
    findings.append(
        f'Scored with every token masked, the B=1 model is an AR model: {exact["bpb"]:.3f} '
        f'bits/byte, {exact["bpb"] - ar:+.3f} from the AR model trained with next-token '
        'cross-entropy (the BD3 identity: the gap is what training under random masking costs). '
        'The paper\'s gap at convergence is log2(25.56 / 22.88) = 0.16 bits per token (LM1B); '
        'a larger one after a short run is expected, since the masked objective puts no loss on '
        'the unmasked half of the positions and weights the rest by 1/t, a noisier gradient '
        'than next-token cross-entropy (the variance the paper\'s clipped schedules reduce).')
  uniform = [r for r in rows if r['model'].startswith(('SEDD', 'UDLM', 'DUO'))]
  plain, cl, rs = (next(r for r in rows if r['model'].startswith(m))
                    for m in ('UDLM', 'DUO, curriculum', 'DUO, plain then plain'))
  findings.append(
      'Uniform-state chains, whose samplers may revise any token: '
      + '; '.join(f'{r["model"]} {r["bpb"]:.3f} bits/byte ({r["bpb"] - mdlm["bpb"]:+.3f} vs MDLM, '
                  f'{r["vs_ar"]:+.3f} vs AR)' for r in uniform)
      + '. Both papers find uniform noise a looser bound than absorbing masks at equal '
      'compute (SEDD uniform vs absorb, UDLM vs MDLM on LM1B and OWT). '
      + curriculum_finding(plain, cl, rs))
  findings.append(
      'A BD3 step costs about twice the FLOPs of an AR or MDLM step (2L tokens), so per unit of '
      'compute BD3 sits further from AR than this per-step table shows.')
  md = '\n'.join([
      report.table(rows, [('model', 'model'), ('bound', 'held-out'), ('bpb', 'bits/byte', '.3f'),
                          ('se', '+- s.e.', '.3f'), ('vs_ar', 'vs AR', '+.3f'),
                          ('params', 'params', ','), ('train_flops', 'train FLOPs', '.2e'),
                          ('train_min', 'train min', '.1f')]),
      '', f'![]({plot})', '', report.compute_line(runs), '',
      f'Held-out: {BUDGET[ctx.budget]["eval_batches"]} evenly spaced batches of '
      f'{spec["data"]["batch_size"]} x {L} bytes, the same for every model.', '',
      *[f'- {f}' for f in findings]])
  return report.Section(
      name='blocks', title='AR as a special case of block diffusion', markdown=md,
      results={'rows': rows, 'budget': BUDGET[ctx.budget], 'contestant': spec,
               'configs': {r.name: r.config.to_dict() for r in runs}},
      plots=[plot])


def curriculum_finding(plain: dict, cl: dict, restart: dict) -> str:
  """DUO's curriculum against the plain UDLM run of the same update count and against the
  restart control (the same two stages, both plain), from rows with 'bpb' and 'se'. A move beyond
  2 s.e. of the difference (the errors added as if independent; all are scored on the same
  batches, so that is conservative) is called, else it is noise."""
  def move(a: dict, b: dict) -> tuple[float, float, str]:
    gap = a['bpb'] - b['bpb']
    se = ((a['se'] or 0) ** 2 + (b['se'] or 0) ** 2) ** 0.5
    word = 'a gain' if gap < -2 * se else 'a loss' if gap > 2 * se else 'within the noise'
    return gap, se, word
  total, se, word = move(cl, plain)
  direction = ", the paper's direction" if word == 'a gain' else ''
  own, own_se, own_word = move(cl, restart)
  cost, cost_se, cost_word = move(restart, plain)
  return ('DUO\'s curriculum (the first half of the updates on the Gaussian-guided curriculum, '
          f'then the plain NELBO) moves the bound by {total:+.3f} bits/byte (s.e. {se:.3f}, '
          f'{word}{direction}). The restart control '
          f'(the same two stages, both plain) splits it: the restart itself (a second warmup and '
          f'cosine decay, a fresh optimiser) moves it {cost:+.3f} (s.e. {cost_se:.3f}, {cost_word}), '
          f'the curriculum against the control {own:+.3f} (s.e. {own_se:.3f}, {own_word}). The '
          'paper\'s runs are 10^6 updates, of which the curriculum is the first half.')
