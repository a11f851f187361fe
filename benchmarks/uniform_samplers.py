"""SEDD and uniform-state (UDLM / DUO) samplers against MDLM's ancestral sampler at equal steps,
and embedding throughput (documents/s) of each text paradigm's encoder, in one run.

  python benchmarks/uniform_samplers.py                  # random-init small models
  python benchmarks/uniform_samplers.py --quick          # tiny models (seconds)
  python benchmarks/uniform_samplers.py --workdir mdlm=runs/mdlm_code --workdir duo=runs/duo_code

Samplers (every one writes the same N = --new-tokens tokens after the same prompt, at each batch
size in --batches and each step count S in --steps): MDLM `ancestral` (p cache on, so its NFE
can fall below S), SEDD `tweedie` and `euler` (uniform chain; NFE = S + 1), DUO `ancestral`
(NFE = S + 1). Every setting is compiled and run once untimed, then timed --repeats times in
interleaved rounds (the order flips each round); tokens/s = B N / median seconds, and
`vs_mdlm` = its tokens/s over MDLM's at the same B and S, measured in the same run.

Embeddings (`paradigms.embedding.encode`: the backbone's final states pooled; last-token for AR,
mean for the rest): documents/s at --embed-batch documents of --embed-len bytes, and the ratio
to AR's. Speed only: the same network shape everywhere, so the ratios show the cost of the
conditioning hook (SEDD / DUO / the time-conditioned encoders) and of pooling.
Prints one JSON object on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from arena import text_samplers as ts  # noqa: E402

SAMPLERS = ('ancestral', 'sedd_tweedie', 'sedd_euler', 'duo_ancestral')
CONFIGS = {'ar': 'ar_code.py', 'mdlm': 'mdlm_code.py', 'sedd': 'sedd_code.py',
           'duo': 'duo_code.py'}
FULL = dict(preset='small', batches='1,64', new_tokens=128, steps='8,32,128', repeats=3)
QUICK = dict(preset='tiny', batches='1,8', new_tokens=16, steps='4,8', repeats=1)


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', action='append', default=[],
                 help='NAME=RUN: a trained run for ar, mdlm, sedd or duo (else random init)')
  p.add_argument('--preset', default=None)
  p.add_argument('--batches', default=None)
  p.add_argument('--new-tokens', type=int, default=None)
  p.add_argument('--steps', default=None)
  p.add_argument('--repeats', type=int, default=None)
  p.add_argument('--embed-batch', type=int, default=32)
  p.add_argument('--embed-len', type=int, default=0, help='bytes per document (0: seq_len)')
  p.add_argument('--prompt', default='def ')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quick', action='store_true')
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  ints = lambda s: [int(v) for v in str(s).split(',') if v.strip()]
  args.batches, args.steps = ints(args.batches), ints(args.steps)
  if not args.batches or min(args.batches + args.steps) < 1 or args.new_tokens < 1:
    p.error('--batches, --steps and --new-tokens need integers >= 1')
  runs = {}
  for item in args.workdir:
    name, _, path = item.partition('=')
    if name not in CONFIGS or not path:
      p.error(f'--workdir {item!r}: give NAME=RUN with NAME one of {sorted(CONFIGS)}')
    runs[name] = path
  args.runs = runs
  return args


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _time(calls: dict, repeats: int) -> dict:
  """{name: fn() -> array}: one untimed call each, then interleaved timed rounds -> medians
  (the encoders; the samplers go through arena/text_samplers.py's `measure`)."""
  import jax
  for fn in calls.values():
    jax.block_until_ready(fn())
  times = {k: [] for k in calls}
  order = list(calls)
  for r in range(repeats):
    for k in (order if r % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(calls[k]())
      times[k].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def embed_calls(models: dict, B: int, L: int, rng) -> dict:
  import jax
  import jax.numpy as jnp
  from paradigms import embedding
  tokens = jax.random.randint(rng, (B, L), 0, 256)
  out = {}
  for name, (_, model, params) in models.items():
    opt = embedding.Options(pooling='last' if name == 'ar' else 'mean')
    f = jax.jit(lambda p, t, m=model, o=opt: embedding.encode(m, p, t, o))
    out[name] = lambda f=f, p=params: f(p, tokens)
  return out


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  import numpy as np
  from benchmarks.diffusion_samplers import load_model
  from pipelines.text import ByteTokenizer
  models = {}
  for name, file in CONFIGS.items():
    config, model, params, source = load_model(args.runs.get(name),
                                               os.path.join(ROOT, 'configs',
                                                            f'{file}:{args.preset}'), args.seed)
    if config.paradigm != {'ar': 'autoregressive', 'mdlm': 'masked_diffusion'}.get(name, name):
      raise SystemExit(f'--workdir {name}={source} holds a {config.paradigm!r} run')
    models[name] = (config, model, params)
    _log(f'{name}: {source} ({model.cfg.num_params():,} params)')
  ids = ByteTokenizer().encode(args.prompt).astype(np.int32)  # [P]
  rng = jax.random.key(args.seed)
  plan = ts.settings(args.new_tokens, args.steps, 1, samplers=SAMPLERS, log=_log)
  rows = []
  for B in args.batches:  # the arena's rows and interleaved timing loop, no quality judge
    for r in ts.measure(plan, models, ids, batch=B, new_tokens=args.new_tokens, rng=rng,
                        repeats=args.repeats, log=_log):
      rows.append({'sampler': ts.label(r), 'batch': B, 'steps': r['steps'], 'nfe': r['nfe'],
                   'seconds': r['median_seconds'], 'tokens_per_s': r['tokens_per_s']})
  for r in rows:  # the ratio to MDLM's ancestral sampler at the same batch and S
    mdlm = next(m for m in rows if m['sampler'].startswith('ancestral ')
                and (m['batch'], m['steps']) == (r['batch'], r['steps']))
    r['vs_mdlm'] = r['tokens_per_s'] / mdlm['tokens_per_s']
    _log(f'B={r["batch"]} {r["sampler"]}: {r["tokens_per_s"]:,.0f} tokens/s '
         f'({r["vs_mdlm"]:.2f}x MDLM), NFE {r["nfe"]}')
  L = args.embed_len or models['ar'][0].data.seq_len
  med = _time(embed_calls(models, args.embed_batch, L, rng), args.repeats)
  embed = [{'encoder': k, 'docs_per_s': args.embed_batch / s, 'vs_ar': med['ar'] / s}
           for k, s in med.items()]
  for r in embed:
    _log(f'embed {r["encoder"]}: {r["docs_per_s"]:,.1f} docs/s ({r["vs_ar"]:.2f}x AR)')
  result = {'device': jax.devices()[0].device_kind,
            'config': {'preset': args.preset, 'runs': args.runs, 'new_tokens': args.new_tokens,
                       'prompt': args.prompt, 'batches': args.batches, 'steps': args.steps,
                       'repeats': args.repeats, 'embed_batch': args.embed_batch,
                       'embed_len': L, 'quick': args.quick,
                       'params': {k: m.cfg.num_params() for k, (_, m, _) in models.items()}},
            'samplers': rows, 'embeddings': embed}
  print(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
