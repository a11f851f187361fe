"""`python -m arena EXPERIMENT --budget tiny|small|gpu --out DIR`: see arena/__init__.py."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from arena.budgets import BUDGETS

# experiment name -> module (each exports `run(ctx) -> report.Section`), in report order
EXPERIMENTS = {
    'speed': 'arena.speed',
    'data': 'arena.data',
    'infill': 'arena.infill',
    'blocks': 'arena.blocks',
    'images': 'arena.images',
    'embeddings': 'arena.embeddings',
}

INTRO = """\
Autoregressive and diffusion paradigms measured side by side on one backbone (the shared
Transformer of `paradigms/nn`), one corpus (the CPython standard library's source, byte level)
or one image set (procedural glyphs), one optimiser and one trainer. Every model here is small
and trained for minutes, so each finding holds at this scale only; where it contradicts a claim
of the seed or the literature, the section says so and why it might. Resolved configs, seeds,
parameter counts and training FLOPs of every model are in the `<experiment>.json` files."""


def run_experiment(name: str, ctx) -> str:
  from arena import report
  tic = time.perf_counter()
  section = importlib.import_module(EXPERIMENTS[name]).run(ctx)
  meta = {'budget': ctx.budget, 'seed': ctx.seed, 'runs': os.path.join(ctx.runs, ctx.budget),
          'seconds': time.perf_counter() - tic, 'machine': report.machine(),
          'command': ' '.join(['python -m arena'] + sys.argv[1:])}
  report.write_section(ctx.out, section, meta)
  ctx.log(f'{name}: {meta["seconds"] / 60:.1f} min -> {ctx.out}/{name}.md')
  return section.name


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog='python -m arena', description=__doc__)
  p.add_argument('experiment', choices=[*EXPERIMENTS, 'all'])
  p.add_argument('--budget', default='small', choices=BUDGETS,
                 help='tiny: smoke run (minutes); small: ~1 hour on a 2-core CPU (60 min '
                      'measured); gpu: one GPU')
  p.add_argument('--out', default='arena/report', help='report folder (markdown, JSON, PNG)')
  p.add_argument('--runs', default='runs/arena',
                 help='trained models go to RUNS/BUDGET/NAME and are reused when finished')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--retrain', action='store_true', help='train every model again from scratch')
  p.add_argument('--no-progress', action='store_true', help='no progress bars')
  args = p.parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  from arena import report
  from arena.runs import Context
  report.pyplot()  # fail before any training when matplotlib (the arena extra) is missing
  ctx = Context(budget=args.budget, out=args.out, runs=args.runs, seed=args.seed,
                progress=not args.no_progress, retrain=args.retrain)
  names = list(EXPERIMENTS) if args.experiment == 'all' else [args.experiment]
  tic, fresh = time.perf_counter(), ctx.untrained()
  for name in names:
    run_experiment(name, ctx)
  readme = os.path.join(args.out, 'README.md')
  if args.experiment == 'all' or os.path.exists(readme):  # one experiment refreshes its section
    # the total is a first run's cost only when this call trained every model it used
    total = time.perf_counter() - tic if fresh and args.experiment == 'all' else None
    trained = (report.training_time(ctx.workdir(''), total) if args.experiment == 'all' else
               report.kept_training_line(readme) or report.training_time(ctx.workdir('')))
    command = ' '.join(['python -m arena'] + (sys.argv[1:] if argv is None else list(argv)))
    path = report.write_readme(args.out, list(EXPERIMENTS), args.budget,
                               INTRO + '\n\n' + trained, command)
    ctx.log(f'report: {path}')


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
