"""Masked / block diffusion samplers beside the AR KV-cache decoder: speed, NFE and quality.

  python benchmarks/diffusion_samplers.py                       # random-init small models
  python benchmarks/diffusion_samplers.py --ar-workdir runs/ar_code \\
      --mdlm-workdir runs/mdlm_code --bd3-workdir runs/bd3_b4   # trained: adds the quality table
  python benchmarks/diffusion_samplers.py --quick               # tiny smoke test (seconds)

A thin CLI over `arena/text_samplers.py`, which defines the sampler rows, the timing loop and the
quality score (read its doc); `python -m arena speed` runs the same code on the arena's models.
Every sampler writes the same N = --new-tokens tokens after the same prompt (--prompt, byte
level), at each batch size in --batches; S runs over --steps. Quality is measured at the
largest batch size only (64 by default), only for rows whose own model is a trained run and only
when a judge is given (--judge-workdir, else the --ar-workdir model judges); other rows report
null with `quality_note` saying why.
Prints one JSON object {"device", "config", "rows"} on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the library and arena/ live in the repo root
  sys.path.insert(0, ROOT)

from arena.text_samplers import ETA, SEMI_AR_BLOCK, TAU, measure, settings  # noqa: E402

FULL = dict(preset='small', batches='1,64', new_tokens=128, steps='16,32,128', repeats=2)
QUICK = dict(preset='tiny', batches='1,64', new_tokens=16, steps='4,16', repeats=1)
BD3_BLOCK = 4  # block size of the random-init BD3 model (configs/bd3lm_code.py:<preset>,4)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--ar-workdir', default=None,
                 help='trained AR run (also the quality judge unless --judge-workdir is given)')
  p.add_argument('--judge-workdir', default=None,
                 help='trained AR run that scores the samples (e.g. the arena judge)')
  p.add_argument('--mdlm-workdir', default=None, help='trained MDLM run (loss.block_size 0)')
  p.add_argument('--bd3-workdir', default=None, help='trained BD3 run (0 < loss.block_size < seq_len)')
  p.add_argument('--sedd-workdir', default=None, help='trained SEDD run')
  p.add_argument('--duo-workdir', default=None, help='trained UDLM / DUO run')
  p.add_argument('--preset', default=None,
                 help=f"size preset of the random-init models (default {FULL['preset']!r}; "
                      f"--quick: {QUICK['preset']!r})")
  p.add_argument('--batches', default=None, help=f"comma-separated batch sizes (default {FULL['batches']})")
  p.add_argument('--new-tokens', type=int, default=None,
                 help=f"tokens generated per sequence, N (default {FULL['new_tokens']})")
  p.add_argument('--prompt', default="def ", help='text prompt (empty: one EOS, a new document)')
  p.add_argument('--steps', default=None,
                 help=f"comma-separated total step budgets S of the diffusion samplers (default {FULL['steps']})")
  p.add_argument('--repeats', type=int, default=None,
                 help=f"timed runs of every setting (default {FULL['repeats']})")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quick', action='store_true',
                 help=f'smoke test: tiny preset and lengths ({QUICK}); explicit flags still win')
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.batches, args.steps = _ints(args.batches), _ints(args.steps)
  if not args.batches or min(args.batches) < 1 or not args.steps or min(args.steps) < 1:
    p.error('--batches and --steps need comma-separated integers >= 1')
  if min(args.new_tokens, args.repeats) < 1:
    p.error('--new-tokens and --repeats must be >= 1')
  return args


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def load_model(workdir, spec: str, seed: int):
  """(config, model, params, source) from a trained `workdir`, or `spec`'s model with random params."""
  import flax.linen as nn
  import jax
  import paradigms
  from train import config as config_lib
  if workdir:
    from train.checkpoint import load_run
    config, model, params = load_run(workdir)
    return config, model, params, workdir
  config = config_lib.from_file(spec)
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  spec_batch = paradigm.example_batch(1, config.data, model.cfg)
  batch = jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), spec_batch)
  params = jax.jit(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'])(
      jax.random.key(seed))
  return config, model, params, spec


def _check_kind(name: str, config, want: str) -> None:
  """Fail loudly when a workdir holds another kind of run than its flag promises."""
  block, L = config.get('loss', {}).get('block_size', 0), config.data.seq_len
  kind = ('ar' if config.paradigm == 'autoregressive' else
          'bd3' if config.paradigm == 'masked_diffusion' and 0 < block < L else
          'mdlm' if config.paradigm == 'masked_diffusion' else config.paradigm)
  if kind != want:
    raise SystemExit(f'--{name}-workdir holds a {kind!r} run (paradigm {config.paradigm!r}, '
                     f'loss.block_size {block}, seq_len {L}); pass it to --{kind}-workdir instead')


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  import numpy as np

  from arena.text_samplers import judge_nll
  from pipelines.text import ByteTokenizer

  specs = {'ar': (args.ar_workdir, f'configs/ar_code.py:{args.preset}'),
           'mdlm': (args.mdlm_workdir, f'configs/mdlm_code.py:{args.preset}'),
           'bd3': (args.bd3_workdir, f'configs/bd3lm_code.py:{args.preset},{BD3_BLOCK}'),
           'sedd': (args.sedd_workdir, f'configs/sedd_code.py:{args.preset}'),
           'duo': (args.duo_workdir, f'configs/duo_code.py:{args.preset}')}
  models, sources = {}, {}
  for name, (workdir, spec) in specs.items():
    config, model, params, _ = load_model(workdir, os.path.join(ROOT, spec), args.seed)
    sources[name] = workdir or spec
    if workdir:
      _check_kind(name, config, name)
    models[name] = (config, model, params)
    _log(f'{name}: {sources[name]} ({model.cfg.num_params():,} params)')
  bd3_block = models['bd3'][0].loss.block_size
  if args.new_tokens % bd3_block:
    raise SystemExit(f'--new-tokens {args.new_tokens} must be a multiple of the BD3 block size '
                     f'{bd3_block} so every sampler writes the same number of tokens')
  prompt_ids = ByteTokenizer().encode(args.prompt).astype(np.int32)
  if not prompt_ids.size:  # an empty prompt starts a new document (as `python -m sample`)
    prompt_ids = np.asarray([ByteTokenizer.EOS], np.int32)
  N, P, rng = args.new_tokens, len(prompt_ids), jax.random.key(args.seed)
  quality_batch = max(args.batches)
  trained = {name: workdir is not None for name, (workdir, _) in specs.items()}
  judge, judge_source = None, args.judge_workdir or args.ar_workdir
  if args.judge_workdir:
    from train.checkpoint import load_run
    judge_config, judge_model, judge_params = load_run(args.judge_workdir)
    _check_kind('judge', judge_config, 'ar')
    judge = judge_nll(judge_model, judge_params)
  elif args.ar_workdir:
    judge = judge_nll(*models['ar'][1:])

  def skip(B):
    def note(row):
      if B != quality_batch:
        return f'quality is measured at batch {quality_batch} only'
      if judge is None:
        return 'no --ar-workdir or --judge-workdir: no trained AR judge, so no quality figures'
      if not trained[row['model']]:
        return f'the {row["model"]} model is random-init (no --{row["model"]}-workdir)'
      return None
    return note

  plan = settings(N, args.steps, bd3_block)
  out_rows = []
  for B in args.batches:
    out_rows += measure(plan, models, prompt_ids, batch=B, new_tokens=N, rng=rng,
                        repeats=args.repeats, judge=judge, skip=skip(B))

  if judge is None:
    quality_summary = 'null everywhere: pass --ar-workdir (the judge) and the diffusion workdirs'
  else:
    missing = [name for name in ('mdlm', 'bd3', 'sedd', 'duo') if not trained[name]]
    quality_summary = (f'measured at batch {quality_batch} for rows of trained models'
                       + (f'; null for the random-init {", ".join(missing)} rows' if missing else ''))
  result = {
      'device': jax.devices()[0].device_kind,
      'config': {
          'sources': sources, 'judge': judge_source,
          'params': {name: m.cfg.num_params() for name, (_, m, _) in models.items()},
          'dtype': {name: m.cfg.dtype for name, (_, m, _) in models.items()},
          'prompt': args.prompt, 'prompt_len': P, 'new_tokens': N, 'batches': args.batches,
          'steps': args.steps, 'repeats': args.repeats, 'seed': args.seed, 'quick': args.quick,
          'temperature': 1.0, 'bd3_block_size': bd3_block, 'semi_ar_block_len': min(SEMI_AR_BLOCK, N),
          'tau': TAU, 'eta': ETA, 'quality_batch': quality_batch, 'quality': quality_summary,
      },
      'rows': out_rows,
  }
  print(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
