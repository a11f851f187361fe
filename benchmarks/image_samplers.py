"""Image generators side by side: images/s, NFE, classifier FD and recognition accuracy.

  python benchmarks/image_samplers.py --workdir runs/dit_glyphs
  python benchmarks/image_samplers.py --workdir runs/dit_shortcut --samplers euler --steps 1,2,4,8
  python benchmarks/image_samplers.py --workdir runs/dit_glyphs runs/var_glyphs runs/hart_glyphs \\
      --samplers dpmpp_2m --steps 4,8,18 --cfg 3
  python benchmarks/image_samplers.py --workdir runs/dit_glyphs --quality-only   # skip timing

Every --workdir is a trained run of an image paradigm (sample/images.py GENERATORS). Its
settings come from the paradigm:
  image_diffusion  every sampler in --samplers x every step count N in --steps (NFE = N; heun
                   2N - 1). Shortcut runs (step-conditioned) take euler at the
                   power-of-two N of --steps (1, 2, 4, ...; the others are left out).
  next_scale       one setting: K scales, NFE = K (VAR's ramped guidance, --top-k).
  hybrid           HART: the K transformer passes plus the residual head's solver over each N
                   of --head-steps (NFE counts the K transformer passes; the head is an MLP,
                   its N passes are reported as head_steps).
For every setting, `--num` class-conditional images are drawn for the labels of `--num`
held-out glyphs (the run's EMA params, guidance weight --cfg, 1 = off), all runs with the same
labels, reference images and seed:
  fd             Frechet distance of the glyph judge's features, samples vs those held-out images
                 (sample/glyph_judge.py; with a few hundred images FD is biased upwards: compare
                 rows of one invocation, not with published FIDs);
  accuracy       exact-string recognition rate of the requested text by the judge;
  char_accuracy  per-character recognition rate;
  images_per_s   num / median seconds of --repeats timed calls after one untimed compiling call
                 (the settings of all runs are interleaved, so machine noise falls on all of
                 them; a guided call runs a 2 x num batch).
Prints one JSON object {"device", "num", "cfg", "rows"} on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True, nargs='+', help='one or more trained image runs')
  p.add_argument('--samplers', default='ddpm,ddim,euler,heun,dpmpp_2m')
  p.add_argument('--steps', default='4,8,18,50', help='comma-separated step counts N (diffusion)')
  p.add_argument('--head-steps', default='8', help='comma-separated HART head solver steps')
  p.add_argument('--top-k', type=int, default=0, help='next-scale / HART top-k (0 = off)')
  p.add_argument('--num', type=int, default=256)
  p.add_argument('--cfg', type=float, default=1.0)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quality-only', action='store_true', help='no timing rounds')
  p.add_argument('--no-ema', action='store_true', help='raw params even if the run kept an EMA')
  return p.parse_args(argv)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v]


def _data_key(d) -> dict:
  """The data fields that change the images (not the batch or the tokenizer)."""
  keys = ('source', 'image_size', 'channels', 'alphabet', 'max_chars', 'jitter', 'path')
  return {k: d[k] for k in keys if k in d}


def settings(config, model, args) -> list[dict]:
  """The generator options to measure for one run (see the module doc)."""
  if config.paradigm == 'image_diffusion':
    if model.cfg.step_conditioning:  # shortcut: Euler at the trained power-of-two step sizes
      steps = [n for n in _ints(args.steps) if n & (n - 1) == 0 and n <= 2 ** model.cfg.max_step_index]
      return [dict(sampler='euler', steps=n) for n in steps]
    return [dict(sampler=s, steps=n) for s in args.samplers.split(',') for n in _ints(args.steps)]
  if config.paradigm == 'next_scale':
    return [dict(top_k=args.top_k)]
  if config.paradigm == 'hybrid':
    return [dict(top_k=args.top_k, head_steps=n) for n in _ints(args.head_steps)]
  raise ValueError(f'{config.paradigm!r} runs are not image generators')


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  import numpy as np
  from sample import glyph_judge, images
  from train.checkpoint import load_run

  rng = jax.random.key(args.seed)
  rows, calls, ref, judge = [], {}, None, None
  for workdir in args.workdir:
    config, model, params = load_run(workdir, ema=False if args.no_ema else None)
    d = config.data
    if ref is None:  # the first run fixes the labels and reference images for all of them
      ref, data0 = images.reference(config, args.num), _data_key(d)
      judge = glyph_judge.load_judge(image_size=d.image_size, alphabet=d.alphabet,
                                     max_chars=d.max_chars, cache_dir=d.cache_dir)
    elif _data_key(d) != data0:
      print(f'warning: {workdir} trained on other data than {args.workdir[0]} '
            f'({_data_key(d)} vs {data0}); it is scored against the first run\'s',
            file=sys.stderr)
    gen = images.generator(config).generate
    for opts in settings(config, model, args):
      run = lambda gen=gen, c=config, m=model, p=params, o=opts: gen(
          c, m, p, rng, num=args.num, cfg=args.cfg, labels=ref['label'], **o)
      t0 = time.perf_counter()
      x, nfe = run()
      metrics = glyph_judge.glyph_metrics(judge, np.clip(x, -1, 1), ref['label'], ref['image'])
      row = {'workdir': workdir, 'paradigm': config.paradigm, **opts, 'nfe': nfe,
             'params': int(sum(v.size for v in jax.tree.leaves(params))),
             'compile_s': time.perf_counter() - t0, **{k: float(v) for k, v in metrics.items()}}
      calls[len(rows)] = run
      rows.append(row)
      print(f'{workdir} {opts} NFE={nfe:3d}  fd={row["fd"]:8.3f}  acc={row["accuracy"]:.3f}  '
            f'char={row["char_accuracy"]:.3f}', file=sys.stderr)
  if not args.quality_only:
    times = {k: [] for k in calls}
    order = list(calls)
    for r in range(args.repeats):
      for k in (order if r % 2 == 0 else order[::-1]):
        t0 = time.perf_counter()
        jax.block_until_ready(calls[k]()[0])
        times[k].append(time.perf_counter() - t0)
    for i, row in enumerate(rows):
      med = statistics.median(times[i])
      row.update(median_seconds=med, images_per_s=args.num / med)
  print(json.dumps({'device': str(jax.devices()[0]), 'num': args.num, 'ema': not args.no_ema,
                    'cfg': args.cfg, 'rows': rows}, indent=1))


if __name__ == '__main__':
  main()
