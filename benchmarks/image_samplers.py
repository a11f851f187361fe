"""Image samplers on a trained glyph run: images/s, NFE, classifier FD and recognition accuracy.

  python benchmarks/image_samplers.py --workdir runs/dit_glyphs
  python benchmarks/image_samplers.py --workdir runs/dit_shortcut --samplers euler --steps 1,2,4,8
  python benchmarks/image_samplers.py --workdir runs/dit_glyphs --quality-only   # skip timing

For every sampler in --samplers and step count in --steps, `--num` class-conditional images are
drawn for the labels of `--num` held-out glyphs (the run's EMA params, guidance --cfg):
  fd             Frechet distance of the glyph judge's features, samples vs those held-out images
                 (sample/glyph_judge.py; with a few hundred images FD is biased upwards: compare
                 rows of one run, not with published FIDs);
  accuracy       exact-string recognition rate of the requested text by the judge;
  char_accuracy  per-character recognition rate;
  nfe            network evaluations (heun: 2N - 1; a guided call on a 2B batch counts once);
  images_per_s   num / median seconds of --repeats timed calls after one untimed compiling call
                 (the settings are interleaved, so machine noise falls on all of them).
Shortcut runs (step-conditioned) take only euler with power-of-two step counts (1, 2, 4, ...).
Prints one JSON object {"device", "workdir", "rows"} on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True)
  p.add_argument('--samplers', default='ddpm,ddim,euler,heun,dpmpp_2m')
  p.add_argument('--steps', default='4,8,18,50', help='comma-separated step counts N')
  p.add_argument('--num', type=int, default=256)
  p.add_argument('--cfg', type=float, default=1.0)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quality-only', action='store_true', help='no timing rounds')
  p.add_argument('--no-ema', action='store_true', help='raw params even if the run kept an EMA')
  return p.parse_args(argv)


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  import numpy as np
  from sample import glyph_judge, images
  from train.checkpoint import load_run

  config, model, params = load_run(args.workdir, ema=False if args.no_ema else None)
  d = config.data
  ref = images.reference(config, args.num)
  judge = glyph_judge.load_judge(image_size=d.image_size, alphabet=d.alphabet,
                                 max_chars=d.max_chars, cache_dir=d.cache_dir)
  settings = [(s, int(n)) for s in args.samplers.split(',') for n in args.steps.split(',')]
  rng = jax.random.key(args.seed)
  rows, calls = [], {}
  for sampler, n in settings:
    t0 = time.perf_counter()
    run = lambda sampler=sampler, n=n: images.generate(
        config, model, params, rng, num=args.num, sampler=sampler, steps=n, cfg=args.cfg,
        labels=ref['label'])
    x, nfe = run()
    m = glyph_judge.glyph_metrics(judge, np.clip(x, -1, 1), ref['label'], ref['image'])
    row = {'sampler': sampler, 'steps': n, 'nfe': nfe, 'compile_s': time.perf_counter() - t0,
           **{k: float(v) for k, v in m.items()}}
    rows.append(row)
    calls[(sampler, n)] = run
    print(f'{sampler:9s} N={n:3d} NFE={nfe:3d}  fd={row["fd"]:8.3f}  acc={row["accuracy"]:.3f}  '
          f'char={row["char_accuracy"]:.3f}', file=sys.stderr)
  if not args.quality_only:
    times = {k: [] for k in calls}
    order = list(calls)
    for r in range(args.repeats):
      for k in (order if r % 2 == 0 else order[::-1]):
        t0 = time.perf_counter()
        calls[k]()
        times[k].append(time.perf_counter() - t0)
    for row in rows:
      med = statistics.median(times[(row['sampler'], row['steps'])])
      row.update(median_seconds=med, images_per_s=args.num / med)
  print(json.dumps({'device': str(jax.devices()[0]), 'workdir': args.workdir, 'num': args.num,
                    'ema': not args.no_ema,
                    'cfg': args.cfg, 'rows': rows}, indent=1))


if __name__ == '__main__':
  main()
