"""Decode speed of `sample.autoregressive.generate`: with the KV cache against full recompute.

  python benchmarks/decode_speed.py --config configs/ar_code.py:small
  python benchmarks/decode_speed.py --workdir runs/ar_code --batch 8 --new-tokens 256

Both paths run the same jitted `lax.while_loop` sampler over the same model and params:
  cache    `use_cache=True`: one prefill over the P prompt tokens, then one [B, 1] step per new
           token against a preallocated `model.init_cache(B, P + N)`;
  nocache  `use_cache=False`: every step recomputes the forward pass over the whole [B, P + N]
           buffer (the causal mask hides the unwritten tail), i.e. O(N) more work per token.
No EOS is set, so every run writes exactly N new tokens (NFE = N for both paths). Each path is
compiled and run once untimed, then timed `--repeats` times (alternating the paths, so machine
noise falls on both); decode tokens/s = B * N / median seconds, prefill included.
Params are random (the config's model) unless --workdir names a trained run; speed does not
depend on the values. Prints one JSON object on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/ar_code.py:small',
                 help='config file and preset (ignored when --workdir is given)')
  p.add_argument('--workdir', default=None, help='trained run to load params from (train.checkpoint.load_run)')
  p.add_argument('--batch', type=int, default=1, help='sequences decoded together (B)')
  p.add_argument('--prompt-len', type=int, default=16, help='prompt tokens per sequence (P)')
  p.add_argument('--new-tokens', type=int, default=512, help='tokens generated per sequence (N)')
  p.add_argument('--repeats', type=int, default=3, help='timed runs of the cached path')
  p.add_argument('--nocache-repeats', type=int, default=None,
                 help='timed runs of the recompute path (default: --repeats)')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if min(args.batch, args.prompt_len, args.new_tokens, args.repeats) < 1:
    p.error('--batch, --prompt-len, --new-tokens and --repeats must all be >= 1')
  if args.nocache_repeats is None:
    args.nocache_repeats = args.repeats
  return args


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def load_model(args):
  """(model, params, source) from --workdir, or the config's model with random params."""
  import flax.linen as nn
  import jax
  import paradigms
  from train import config as config_lib
  if args.workdir:
    from train.checkpoint import load_run
    _, model, params = load_run(args.workdir)
    return model, params, args.workdir
  config = config_lib.from_file(args.config)
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  spec = paradigm.example_batch(1, config.data, model.cfg)
  batch = jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), spec)
  params = jax.jit(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'])(
      jax.random.key(args.seed))
  return model, params, args.config


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  import jax.numpy as jnp

  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate

  model, params, source = load_model(args)
  cfg = model.cfg
  B, P, N = args.batch, args.prompt_len, args.new_tokens
  rng = jax.random.key(args.seed)
  prompt = jax.random.randint(jax.random.fold_in(rng, 1), (B, P), 0,
                              min(256, cfg.vocab_size), jnp.int32)  # [B, P]
  logits_fn = LogitsFn(model)
  empty = model.init_cache(B, P + N)  # KVCache, leading [n_layers]; not donated, so reusable

  def run_cache(key):
    return generate(logits_fn, params, prompt, key, empty, max_new_tokens=N, use_cache=True)

  def run_nocache(key):
    return generate(logits_fn, params, prompt, key, None, max_new_tokens=N, use_cache=False)

  paths = {'cache': (run_cache, args.repeats), 'nocache': (run_nocache, args.nocache_repeats)}
  compile_s, nfe, seconds = {}, {}, {name: [] for name in paths}
  for name, (fn, _) in paths.items():
    tic = time.perf_counter()
    out = jax.block_until_ready(fn(rng))
    compile_s[name] = time.perf_counter() - tic  # compilation + one run
    nfe[name] = int(out.nfe)
    _log(f'{name}: first call (compile + run) {compile_s[name]:.1f}s, NFE {nfe[name]}')

  for i in range(max(n for _, n in paths.values())):
    order = list(paths) if i % 2 == 0 else list(reversed(paths))
    for name in order:
      fn, n = paths[name]
      if i >= n:
        continue
      key = jax.block_until_ready(jax.random.fold_in(rng, 100 + i))  # keep key setup off the clock
      tic = time.perf_counter()
      jax.block_until_ready(fn(key))
      seconds[name].append(time.perf_counter() - tic)
      _log(f'{name} repeat {i + 1}/{n}: {seconds[name][-1]:.3f}s')

  rate = {name: B * N / statistics.median(ts) for name, ts in seconds.items()}
  out = {
      'source': source,
      'device_kind': jax.devices()[0].device_kind,
      'params': cfg.num_params(),
      'dtype': cfg.dtype,
      'batch': B,
      'prompt_len': P,
      'new_tokens': N,
      'cache_tokens_per_s': rate['cache'],
      'nocache_tokens_per_s': rate['nocache'],
      'cache_speedup': rate['cache'] / rate['nocache'],
      'cache_ms_per_token': 1e3 * statistics.median(seconds['cache']) / N,
      'nocache_ms_per_token': 1e3 * statistics.median(seconds['nocache']) / N,
      'nfe_cache': nfe['cache'],
      'nfe_nocache': nfe['nocache'],
      'cache_seconds': seconds['cache'],
      'nocache_seconds': seconds['nocache'],
      'compile_s': compile_s,
  }
  print(json.dumps(out, indent=2))
  return out


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
