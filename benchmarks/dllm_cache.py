"""Fast-dLLM's approximate KV cache (sample/dllm_cache.py) against uncached semi-AR decoding of the
same masked diffusion model, side by side in one run: speed and the change in quality.

  python benchmarks/dllm_cache.py                       # the arena's small MDLM and AR judge
  python benchmarks/dllm_cache.py --workdir RUN --judge RUN --out benchmarks/results/dllm_cache.jsonl

Every row decodes --gen-len tokens after the same --batch prompts (the first --prompt-len tokens
of evenly spaced held-out windows of the run's corpus, so the rows of a greedy batch differ) in
blocks of --block-len, with the commit rule --strategy (topk: --steps-per-block steps; or
threshold --tau). Rows: `uncached` (`sample.masked_diffusion.semi_autoregressive`, every call
a full forward), then `prefix_r{r}` / `dual_r{r}` for each r in --refresh (0 = refresh once per
block, Fast-dLLM; r = every r-th call of a block). Every row is compiled and run once untimed,
then timed --repeats times in alternating order; the median gives tokens/s and its ratio to
`uncached` (`speedup`). Quality, pooled over --quality-seeds rngs, each row at the same rngs as
`uncached`: `agreement`, the fraction of generated tokens equal to the uncached output, and
`judge_nll`, the mean NLL in nats per generated token under an AR judge run given the prompt,
with `nll_change` its relative change from `uncached` and `nll_change_se` the standard error of
that change (paired per sequence). The untimed row `uncached_other_rng` (uncached at other rngs)
is the noise floor: the agreement and NLL change that sampling alone gives. Also per row: NFE, full forwards
(`refreshes`) and positions fed per row (`fed`). Default temperature 1: with greedy decoding the
arena's small MDLM (500 steps) collapses to runs of spaces, which every row then agrees on.
Prints one JSON object (last line of stdout); progress goes to stderr.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

RUNS = '/work/runs/arena/small'


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', default=f'{RUNS}/mdlm', help='a trained masked diffusion run')
  p.add_argument('--judge', default=f'{RUNS}/judge', help="a trained AR run ('' = no judge NLL)")
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--prompt-len', type=int, default=64)
  p.add_argument('--gen-len', type=int, default=64)
  p.add_argument('--block-len', type=int, default=16)
  p.add_argument('--strategy', default='topk', help="a commit rule: 'topk' or 'threshold'")
  p.add_argument('--steps-per-block', type=int, default=16, help='topk: steps per block')
  p.add_argument('--tau', type=float, default=0.9, help='threshold: confidence threshold')
  p.add_argument('--refresh', default='0,4,2', help='refresh intervals of the cached rows')
  p.add_argument('--modes', default='prefix,dual')
  p.add_argument('--temperature', type=float, default=1.0, help='0 = greedy (Fast-dLLM)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--quality-seeds', type=int, default=3,
                 help='rngs whose samples the quality figures pool (the first is the timed one)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default='', help='append the JSON row to this JSONL file')
  args = p.parse_args(argv)
  args.refresh = [int(r) for r in args.refresh.split(',') if r]
  args.modes = [m for m in args.modes.split(',') if m]
  return args


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def main(argv=None):
  args = _parse(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from absl import logging as absl_logging
  from results_io import emit  # benchmarks/results_io.py (this folder is on sys.path)
  from paradigms import masked_diffusion as mdp
  from paradigms.autoregressive import token_nll
  from pipelines.text import eval_batches, load_corpus
  from sample.dllm_cache import cached_semi_autoregressive
  from sample.masked_diffusion import semi_autoregressive
  from train.checkpoint import load_run
  absl_logging.set_verbosity(absl_logging.WARNING)

  config, model, params = load_run(args.workdir)
  if config.paradigm != 'masked_diffusion' or config.loss.block_size:
    raise SystemExit(f'--workdir {args.workdir} holds a {config.paradigm!r} run with block_size '
                     f'{config.loss.block_size}; pass an MDLM run (masked_diffusion, block_size 0)')
  mask_id = config.loss.mask_id
  fn = mdp.LogitsFn(model, mask_id)
  B, P, N, Bk = args.batch, args.prompt_len, args.gen_len, args.block_len
  T = P + N
  corpus = load_corpus(config.data)
  prompt = jnp.asarray(eval_batches(corpus.eval, seq_len=P, batch_size=B,
                                    num_batches=1)[0]['tokens'][:, :P])  # [B, P]
  rng = jax.random.key(args.seed)
  rule = dict(strategy=args.strategy, steps_per_block=args.steps_per_block, tau=args.tau,
              temperature=args.temperature)
  x = jnp.concatenate([prompt, jnp.full((B, N), mask_id, jnp.int32)], axis=1)

  def uncached(rng):
    return semi_autoregressive(fn, params, x, rng, mask_id=mask_id, block_len=Bk, **rule)

  rows = {'uncached': (uncached, {'mode': None})}  # name -> (rng -> output, info)
  for mode in args.modes:
    slots = T + (Bk if mode == 'dual' else N)
    for r in args.refresh:
      def call(rng, mode=mode, r=r, slots=slots):
        return cached_semi_autoregressive(fn, params, prompt, rng, model.init_cache(B, slots),
                                          mask_id=mask_id, gen_len=N, block_len=Bk,
                                          cache_mode=mode, refresh=r, **rule)
      rows[f'{mode}_r{r}'] = (call, {'mode': mode, 'refresh': r})

  outs = {}
  for name, (call, _) in rows.items():  # compile and warm up
    t0 = time.perf_counter()
    outs[name] = [jax.block_until_ready(call(rng))]
    _log(f'{name}: compiled and ran in {time.perf_counter() - t0:.1f}s')
  times = {name: [] for name in rows}
  for r in range(args.repeats):
    for name, (call, _) in (rows.items() if r % 2 == 0 else reversed(list(rows.items()))):
      t0 = time.perf_counter()
      jax.block_until_ready(call(rng))
      times[name].append(time.perf_counter() - t0)

  # quality over --quality-seeds rngs (the timed outputs are seed 0's); the noise floor row is
  # the uncached sampler at other rngs
  seeds = [jax.random.fold_in(rng, k) for k in range(1, args.quality_seeds)]
  for name, (call, _) in rows.items():
    outs[name] += [call(k) for k in seeds]
  outs['uncached_other_rng'] = [uncached(jax.random.fold_in(k, 7)) for k in [rng] + seeds]
  rows['uncached_other_rng'] = (None, {'mode': None})
  judge = None
  if args.judge:
    _, jmodel, jparams = load_run(args.judge)
    nll_fn = jax.jit(lambda seq: token_nll(jmodel, jparams, seq)[0])  # [B, T - 1]
    # mean NLL per generated token of each sequence, over all seeds: [seeds * B]
    judge = lambda o: np.concatenate([np.asarray(nll_fn(a.tokens))[:, P - 1:].mean(1) for a in o])
  gen = lambda o: np.concatenate([np.asarray(a.tokens)[:, -N:] for a in o])  # [seeds * B, N]
  ref = gen(outs['uncached'])
  base = statistics.median(times['uncached'])
  base_nll = judge(outs['uncached']) if judge else None
  result = {'benchmark': 'dllm_cache', 'workdir': args.workdir, 'judge': args.judge or None,
            'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
            'params': model.cfg.num_params(), 'batch': B, 'prompt_len': P, 'gen_len': N,
            'block_len': Bk, **rule, 'repeats': args.repeats,
            'quality_sequences': len(ref), 'rows': []}
  for name, (_, info) in rows.items():
    o = outs[name][0]
    sec = statistics.median(times[name]) if name in times else None
    nfe = int(o.nfe)
    row = {'name': name, **info, 'tokens_per_s': sec and B * N / sec,
           'speedup': sec and base / sec, 'nfe': nfe,
           'refreshes': int(getattr(o, 'refreshes', nfe)), 'fed': int(getattr(o, 'fed', nfe * T)),
           'agreement': float((gen(outs[name]) == ref).mean())}
    if judge:
      nll = judge(outs[name])
      diff = (nll - base_nll) / base_nll.mean()  # paired, per sequence
      row.update(judge_nll=float(nll.mean()), nll_change=float(diff.mean()),
                 nll_change_se=float(diff.std(ddof=1) / np.sqrt(len(diff))))
    result['rows'].append(row)
    speed = f"{row['tokens_per_s']:8.1f} tok/s  x{row['speedup']:.2f}" if sec else ' ' * 22
    _log(f"{name:>18}: {speed}  NFE {nfe}  full {row['refreshes']:2d}  "
         f"agree {row['agreement']:.3f}"
         + (f"  NLL {row['judge_nll']:.3f} ({100 * row['nll_change']:+.2f} "
            f"+- {100 * row['nll_change_se']:.2f}%)" if judge else ''))
  emit(result, args.out)


if __name__ == '__main__':
  main()
