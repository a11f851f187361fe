"""Image generators side by side: images/s, NFE, classifier FD and recognition accuracy.

  python benchmarks/image_samplers.py --workdir runs/dit_glyphs
  python benchmarks/image_samplers.py --workdir runs/dit_shortcut --samplers euler --steps 1,2,4,8
  python benchmarks/image_samplers.py --workdir runs/dit_glyphs runs/var_glyphs runs/hart_glyphs \\
      --samplers dpmpp_2m --steps 4,8,18 --cfg 3
  python benchmarks/image_samplers.py --workdir runs/dit_glyphs --quality-only   # skip timing

Every --workdir is a trained run of an image paradigm (evaluators/images.py GENERATORS). Its
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
                 (evaluators/glyph_judge.py; with a few hundred images FD is biased upwards: compare
                 rows of one invocation, not with published FIDs);
  accuracy       exact-string recognition rate of the requested text by the judge;
  char_accuracy  per-character recognition rate;
  by_length      both rates split by string length (1 .. max_chars characters);
  images_per_s   num / median seconds of --repeats timed calls after one untimed compiling call
                 (the settings of all runs are interleaved, so machine noise falls on all of
                 them; a guided call runs a 2 x num batch).
Prints one JSON object {"device", "num", "cfg", "rows"} on stdout; progress goes to stderr.
The measurement is arena/image_samplers.py's (the arena's `images` experiment runs the same code).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the library and arena/ live in the repo root
  sys.path.insert(0, ROOT)


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
  p.add_argument('--judge-steps', type=int, default=0,
                 help="the glyph judge's training steps (0 = its default; cached per value)")
  p.add_argument('--quality-only', action='store_true', help='no timing rounds')
  p.add_argument('--no-ema', action='store_true', help='raw params even if the run kept an EMA')
  return p.parse_args(argv)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v]


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  from arena import image_samplers as bench
  from train.checkpoint import load_run, load_tokenizer

  contestants = []
  for workdir in args.workdir:
    config, model, params = load_run(workdir, ema=False if args.no_ema else None)
    opts = bench.settings(config, model, samplers=args.samplers.split(','),
                          steps=_ints(args.steps), head_steps=_ints(args.head_steps),
                          top_k=args.top_k)
    contestants.append(bench.Contestant(workdir, config, model, params, opts,
                                        load_tokenizer(config)))
  result = bench.measure(contestants, num=args.num, cfg=args.cfg, seed=args.seed,
                         repeats=args.repeats, judge_steps=args.judge_steps,
                         quality_only=args.quality_only)
  rows = [{'workdir': r.pop('name'), **r} for r in result.rows]
  print(json.dumps({'device': str(jax.devices()[0]), 'num': args.num, 'ema': not args.no_ema,
                    'cfg': args.cfg, 'rows': rows}, indent=1))


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
