"""Speculative decoding against plain AR decoding of the same target, side by side in one run.

  python benchmarks/speculative.py --target RUN --draft RUN --bd3 RUN --gammas 2,4,8

Target: a trained AR run. Drafters: a smaller AR run with the same tokenizer and a BD3 run,
which drafts gamma tokens as one noisy block in `--bd3-steps` calls. The committed figures
(benchmarks/results/speculative.jsonl, docs/inference.md) use the arena's small runs
(`python -m arena speed --budget small` trains them into runs/arena/small) as drafters, `ar`
(357k params) and `bd3_b4`, and a 7.2M-param target on the same bytes, trained in 6 min:
  python -m train --config configs/ar_code.py:small --workdir runs/spec_target \
      --config.model.d_model=384 --config.model.n_layers=4 --config.model.n_heads=4 \
      --config.data.seq_len=128 --config.data.batch_size=16 --config.train.steps=400
A target barely larger than its drafter gains nothing on a CPU at batch 1, where a call's
fixed cost dominates: the speed-up needs a draft call much cheaper than a target call. Each row writes N tokens after the prompt at batch B; plain AR and every
speculative setting are compiled and run once untimed, then timed `--repeats` times in
alternating order. Reported per row: tokens/s, its ratio to plain AR, the acceptance rate alpha
(drafts accepted by their own row), tokens per target call, target and drafter NFE. The
speculative output is a sample of the target (tests/test_speculative.py); at temperature 0 it
is the plain greedy output token for token, which this script also checks. Last line: JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

RUNS = 'runs/arena/small'


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/spec_target')
  p.add_argument('--draft', default=f'{RUNS}/ar', help="an AR run ('' = skip)")
  p.add_argument('--bd3', default=f'{RUNS}/bd3_b4', help="a BD3 run ('' = skip)")
  p.add_argument('--gammas', default='2,4,8')
  p.add_argument('--bd3-steps', default='1,2', help='denoising calls per drafted block')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--new-tokens', type=int, default=124)
  p.add_argument('--prompt', default='def ')
  p.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default='', help='append the JSON row to this JSONL file')
  args = p.parse_args(argv)
  args.gammas = [int(g) for g in args.gammas.split(',') if g]
  args.bd3_steps = [int(s) for s in args.bd3_steps.split(',') if s]
  return args


def main(argv=None):
  args = _parse(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from results_io import emit  # benchmarks/results_io.py (this folder is on sys.path)
  from paradigms import masked_diffusion as mdp
  from paradigms.autoregressive import LogitsFn
  from sample import autoregressive as ar
  from sample import speculative as sp
  from train.checkpoint import load_run, load_text_tokenizer

  config, target, params = load_run(args.target)
  tok = load_text_tokenizer(config, args.target)
  prompt = jnp.asarray([tok.encode_prompt(args.prompt)] * args.batch, jnp.int32)
  B, P = prompt.shape
  N, greedy = args.new_tokens, args.temperature == 0
  opts = dict(max_new_tokens=N, temperature=args.temperature or 1.0, greedy=greedy)
  rng = jax.random.key(0)
  fn = LogitsFn(target)

  rows = {}  # name -> (callable returning an output, info)
  rows['ar'] = (lambda: ar.generate(fn, params, prompt, rng, target.init_cache(B, P + N), **opts),
                {'drafter': None, 'gamma': 0})
  drafters = []
  if args.draft:
    dcfg, dmodel, dparams = load_run(args.draft)
    drafters.append(('ar_draft', sp.ARDrafter(LogitsFn(dmodel)), dmodel, dparams, dcfg, None))
  if args.bd3:
    bcfg, bmodel, bparams = load_run(args.bd3)
    for steps in args.bd3_steps:
      d = sp.BlockDrafter(mdp.LogitsFn(bmodel, bcfg.loss.mask_id), bcfg.loss.mask_id,
                          bcfg.loss.block_size, steps)
      drafters.append((f'bd3_draft_s{steps}', d, bmodel, bparams, bcfg, steps))
  for name, drafter, dmodel, dparams, dcfg, steps in drafters:
    for g in args.gammas:
      if steps is not None and steps > g:
        continue
      size = P + N + g + 1

      def call(drafter=drafter, dmodel=dmodel, dparams=dparams, g=g, size=size):
        return sp.speculative_generate(fn, params, drafter, dparams, prompt, rng,
                                       target.init_cache(B, size), dmodel.init_cache(B, size),
                                       gamma=g, **opts)
      rows[f'{name}_g{g}'] = (call, {'drafter': name, 'gamma': g,
                                     'draft_params': dcfg.model.get('d_model')})

  outs = {}
  for name, (call, _) in rows.items():  # compile and warm up
    t0 = time.perf_counter()
    outs[name] = jax.block_until_ready(call())
    print(f'{name}: compiled and ran in {time.perf_counter() - t0:.1f}s', file=sys.stderr)
  times = {name: [] for name in rows}
  for r in range(args.repeats):
    for name, (call, _) in (rows.items() if r % 2 == 0 else reversed(list(rows.items()))):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - t0)
  base = statistics.median(times['ar'])
  result = {'benchmark': 'speculative', 'target': args.target, 'batch': B, 'new_tokens': N,
            'temperature': args.temperature, 'backend': jax.default_backend(), 'rows': []}
  ref = np.asarray(outs['ar'].tokens)
  for name, (_, info) in rows.items():
    sec = statistics.median(times[name])
    o = outs[name]
    row = {'name': name, **info, 'tokens_per_s': B * N / sec, 'over_ar': base / sec,
           'nfe': int(o.nfe)}
    if name != 'ar':
      row.update(acceptance=float(o.acceptance_rate), draft_nfe=int(o.draft_nfe),
                 tokens_per_target_call=N / max(int(o.nfe), 1))
      if greedy:
        row['equals_plain_greedy'] = bool((np.asarray(o.tokens) == ref).all())
    result['rows'].append(row)
    print(f"{name:>18}: {row['tokens_per_s']:8.1f} tok/s  x{row['over_ar']:.2f}"
          + (f"  alpha {row['acceptance']:.2f}  target NFE {row['nfe']}  draft NFE "
             f"{row['draft_nfe']}" if name != 'ar' else ''), file=sys.stderr)
  best = max((r for r in result['rows'] if r['name'] != 'ar'), key=lambda r: r['over_ar'],
             default=None)
  result['best'] = best and {'name': best['name'], 'over_ar': best['over_ar']}
  emit(result, args.out)


if __name__ == '__main__':
  main()
