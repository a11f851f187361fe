"""What a decode step costs beyond the forward pass of one token, at batch 1 by default.

  python benchmarks/decode_overhead.py --config configs/ar_code.py:tiny
  python benchmarks/decode_overhead.py --config configs/ar_code.py:small --new-tokens 256

Four programs on the same model and params, each one jitted `lax` loop of N sequential steps
(the next input is the previous step's argmax, so no step can be skipped or batched), so
Python dispatch is off the clock for all of them:
  forward   N single-token forwards with no cache: [B, 1] -> logits, the floor of a step;
  cached    N single-token forwards through a KV cache of P + N slots (attention over it,
            the in-place cache write), no sampler;
  decode    `sample.autoregressive.generate` (greedy; `--temperature` > 0 samples instead),
            the whole sampler: prefill of P tokens, then N - 1 cached steps, each with the
            sampler's token write, done-flags and RNG split;
  sample    as `decode` with temperature 1 and top-k 50 / top-p 0.9 (the sort over the vocab).
Per-step times are the medians of `--repeats` alternating runs divided by N.
`decode_step_over_forward` = decode / forward (the issue's CPU goal: <= 1.3). The other ratios
split it: cached / forward is the cache's share, decode / cached the sampler loop's.
The last line on stdout is one JSON object. Never asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/ar_code.py:tiny', help='config file and preset')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--prompt-len', type=int, default=8)
  p.add_argument('--new-tokens', type=int, default=None,
                 help='N (default: the model\'s max_len minus the prompt)')
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args(argv)
  if min(args.batch, args.prompt_len, args.repeats) < 1:
    p.error('--batch, --prompt-len and --repeats must be >= 1')
  return args


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  import paradigms
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  from train import config as config_lib

  config = config_lib.from_file(args.config)
  if config.paradigm != 'autoregressive':
    raise SystemExit(f'error: {args.config} is a {config.paradigm} config; decode_overhead '
                     'measures the autoregressive sampler')
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  cfg = model.cfg
  B, P = args.batch, args.prompt_len
  N = args.new_tokens or cfg.max_len - P
  if N < 2 or P + N > cfg.max_len:
    raise SystemExit(f'error: need 2 <= --new-tokens and prompt + new <= model.max_len '
                     f'({cfg.max_len}); got P={P}, N={N}')
  params = jax.jit(lambda r: nn.meta.unbox(model.init(r, jnp.zeros((1, 8), jnp.int32)))['params'])(
      jax.random.key(0))
  prompt = jax.random.randint(jax.random.key(1), (B, P), 0, min(256, cfg.vocab_size), jnp.int32)
  first = prompt[:, -1:]
  logits_fn = LogitsFn(model)

  @jax.jit
  def forward(params, x):
    def body(_, x):
      logits, _ = model.apply({'params': params}, x)
      return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, N, body, x)

  @jax.jit
  def cached(params, x):
    def body(_, carry):
      x, cache = carry
      logits, cache = model.apply({'params': params}, x, cache=cache)
      return jnp.argmax(logits, -1).astype(jnp.int32), cache
    return jax.lax.fori_loop(0, N, body, (x, model.init_cache(B, P + N)))[0]

  def decode(params, x, **kw):
    del x
    return generate(logits_fn, params, prompt, jax.random.key(2), model.init_cache(B, P + N),
                    max_new_tokens=N, **kw).tokens

  paths = {'forward': forward, 'cached': cached,
           'decode': lambda p, x: decode(p, x, greedy=True),
           'sample': lambda p, x: decode(p, x, temperature=1.0, top_k=50, top_p=0.9)}
  for name, fn in paths.items():
    tic = time.perf_counter()
    jax.block_until_ready(fn(params, first))
    _log(f'{name}: compile + first run {time.perf_counter() - tic:.2f}s')
  seconds = {name: [] for name in paths}
  for r in range(args.repeats):
    for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
      tic = time.perf_counter()
      jax.block_until_ready(paths[name](params, first))
      seconds[name].append(time.perf_counter() - tic)
  step_ms = {name: 1e3 * statistics.median(ts) / N for name, ts in seconds.items()}
  _log('  '.join(f'{k} {v:.4f} ms/step' for k, v in step_ms.items()))
  out = {'config': args.config, 'device_kind': jax.devices()[0].device_kind,
         'params': cfg.num_params(), 'batch': B, 'prompt_len': P, 'new_tokens': N,
         'step_ms': step_ms, 'seconds': seconds,
         'cached_over_forward': step_ms['cached'] / step_ms['forward'],
         'decode_over_cached': step_ms['decode'] / step_ms['cached'],
         'sample_over_decode': step_ms['sample'] / step_ms['decode'],
         'decode_step_over_forward': step_ms['decode'] / step_ms['forward']}
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
