"""Int8 inference side by side: decode tokens/s, memory and held-out bits per byte.

  python benchmarks/quant.py                                   # speed model + trained run
  python benchmarks/quant.py --workdir runs/ar_code --batches 1 16 --new-tokens 64

Four settings of the same `sample.autoregressive.generate` (greedy, P prompt + N new tokens):
  f32     float32 weights, float32 KV cache;
  w8      `quant.quantize_params` int8 weights (per output channel), float32 cache;
  kv8     float32 weights, `init_cache(..., kv_int8=True)` (int8, a scale per token and head);
  w8kv8   both.
Speed runs on random params of a model big enough that the weights dominate a step
(--d-model 1024, --layers 4 by default: 50M params); the settings are compiled, run once, then
timed --repeats times each, in alternating order; tokens/s = B N / median seconds (prefill
included). Memory: bytes of the params and of the cache, and XLA's temp bytes of the compiled
generate (which show float copies XLA made of int8 weights). Quality: held-out bits per byte of
a trained run (--workdir) with float and int8 weights (its `evaluate` on --eval-batches
held-out batches), and with the int8 KV cache (the same batches' next-token NLL read through an
int8 cache: one cached forward per window).

Kernel variants measured for the int8 dense layer on XLA:CPU (jaxlib 0.10.2, batch-1 matvec
chains of 4 x (1024 x 2816 and 2816 x 1024) in a fori_loop, ratio f32 time / variant time):
  dot on q converted, then * s (kept)    ~1.0: XLA hoists convert(q) out of the decode loop
                                         (loop-invariant), so every step reads float weights
  dequantise then dot (q * s)            0.87-1.0: the same hoist
  s8 x s8 -> s32 dot_general             ~1.0: XLA:CPU's operand upcaster turns the codes into
                                         s32 (hoisted); no int8 GEMM kernel is reachable
  the above with the codes pinned in the loop (optimization_barrier): 0.22-0.28 (converts
                                         4 bytes per weight every step)
  fused int8 multiply-reduce             0.01 at batch 1 (the YNNPACK reduce fusion XLA picks
                                         runs it ~80x slower); 1.0-1.65 with that fusion off
                                         (compiler option xla_cpu_experimental_ynn_fusion_type),
                                         0.1 at batch 16
so int8 weights save memory at rest and in checkpoints, not decode time, on this backend.
The last line on stdout is one JSON object (also appended to --out). Never asserts on speed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RUN = '/work/runs/arena/small/ar'
SETTINGS = {'f32': (False, False), 'w8': (True, False), 'kv8': (False, True),
            'w8kv8': (True, True)}  # name: (int8 weights, int8 cache)


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--d-model', type=int, default=1024)
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--heads', type=int, default=8)
  p.add_argument('--batches', type=int, nargs='+', default=[1, 16], help='decode batch sizes')
  p.add_argument('--prompt-len', type=int, default=8)
  p.add_argument('--new-tokens', type=int, default=64)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--workdir', default=DEFAULT_RUN if os.path.isdir(DEFAULT_RUN) else '',
                 help='trained AR run for bits per byte ("" skips it)')
  p.add_argument('--eval-batches', type=int, default=8)
  p.add_argument('--out', default='', help='JSONL file the row is appended to')
  args = p.parse_args(argv)
  if min(args.prompt_len, args.new_tokens, args.repeats, *args.batches) < 1:
    p.error('--prompt-len, --new-tokens, --repeats and --batches must be >= 1')
  return args


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def speed(args) -> dict:
  """Decode tokens/s, param/cache bytes and compiled temp bytes of the four SETTINGS."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from paradigms.autoregressive import LogitsFn
  from paradigms.nn import quant
  from paradigms.nn.transformer import Transformer, TransformerConfig
  from sample.autoregressive import generate

  P, N = args.prompt_len, args.new_tokens
  cfg = TransformerConfig(vocab_size=258, d_model=args.d_model, n_layers=args.layers,
                          n_heads=args.heads, max_len=P + N)
  model = Transformer(cfg)
  params = jax.jit(lambda r: nn.meta.unbox(model.init(r, jnp.zeros((1, 8), jnp.int32)))['params'])(
      jax.random.key(0))
  weights = {False: params, True: jax.jit(quant.quantize_params)(params)}
  fn = LogitsFn(model)
  out = {'model': {'d_model': cfg.d_model, 'n_layers': cfg.n_layers, 'n_heads': cfg.n_heads,
                   'params': cfg.num_params()},
         'param_bytes': {'f32': quant.nbytes(weights[False]), 'int8': quant.nbytes(weights[True])}}
  for B in args.batches:
    prompt = jax.random.randint(jax.random.key(1), (B, P), 0, 256, jnp.int32)
    runs, row = {}, {'cache_bytes': {}, 'temp_bytes': {}}
    for name, (w8, kv8) in SETTINGS.items():
      cache = model.init_cache(B, P + N, kv_int8=kv8)
      call = (weights[w8], prompt, jax.random.key(2), cache)
      compiled = generate.lower(fn, *call, max_new_tokens=N, greedy=True).compile()
      mem = compiled.memory_analysis()
      row['temp_bytes'][name] = getattr(mem, 'temp_size_in_bytes', None)
      row['cache_bytes'][name] = quant.nbytes(cache)
      tic = time.perf_counter()
      jax.block_until_ready(compiled(*call))
      _log(f'B={B} {name}: compile done, first run {time.perf_counter() - tic:.2f}s')
      runs[name] = (compiled, call)
    seconds = {name: [] for name in runs}
    for r in range(args.repeats):
      for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
        compiled, call = runs[name]
        tic = time.perf_counter()
        jax.block_until_ready(compiled(*call))
        seconds[name].append(time.perf_counter() - tic)
    tps = {k: B * N / statistics.median(v) for k, v in seconds.items()}
    row['tokens_per_s'] = tps
    row['speedup_over_f32'] = {k: v / tps['f32'] for k, v in tps.items()}
    row['seconds'] = seconds
    _log(f'B={B} tokens/s ' + '  '.join(f'{k} {v:.1f}' for k, v in tps.items()))
    out[f'batch_{B}'] = row
  return out


def bits_per_byte(workdir: str, num_batches: int) -> dict:
  """Held-out bits per byte of a trained AR run: float vs int8 weights vs int8 KV cache."""
  import jax
  import jax.numpy as jnp
  import paradigms
  from evaluators.likelihood import summarize
  from paradigms.nn import quant, xent
  from pipelines.sources import open_data
  from train.checkpoint import load_run, load_tokenizer

  config, model, params = load_run(workdir)
  if config.paradigm != 'autoregressive':
    raise SystemExit(f'error: {workdir} is a {config.paradigm} run; bits per byte here needs '
                     'an autoregressive one')
  paradigm = paradigms.get(config.paradigm)
  data = open_data(config.data, load_tokenizer(config))
  batches = data.eval_batches(batch_size=config.data.batch_size, num_batches=num_batches)
  options = dict(config.loss)
  evaluate = jax.jit(lambda p, b: paradigm.evaluate(p, b, None, model=model, **options))

  @jax.jit
  def cached(p, b):  # the window's NLL read through an int8 cache (one cached forward)
    tokens = b['tokens']
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] - 1, kv_int8=True)
    logits, _ = model.apply({'params': p}, tokens[:, :-1], cache=cache)
    nll, _ = xent.nll_from_logits(logits, tokens[:, 1:])
    return {'nats': nll.sum(), 'tokens': jnp.asarray(nll.size, jnp.float32)}

  qparams = quant.quantize_params(params)
  rows = {'f32': (evaluate, params), 'w8': (evaluate, qparams), 'kv8': (cached, params),
          'w8kv8': (cached, qparams)}
  out = {}
  for name, (fn, p) in rows.items():
    sums = {}
    for b in batches:
      r = jax.device_get(fn(p, b))
      sums = {k: sums.get(k, 0.0) + float(v) for k, v in r.items()}
    out[name] = summarize(sums, data.bytes_per_token)
  key = 'bpb' if data.bytes_per_token else 'bits_per_token'
  bpb = {k: v[key] for k, v in out.items()}
  return {'workdir': workdir, 'unit': key, 'tokens': int(sums['tokens']),
          'param_bytes': {'f32': quant.nbytes(params), 'int8': quant.nbytes(qparams)},
          key: bpb, 'relative_change': {k: v / bpb['f32'] - 1 for k, v in bpb.items()}}


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  from results_io import emit
  row = {'bench': 'quant', 'device_kind': jax.devices()[0].device_kind,
         'prompt_len': args.prompt_len, 'new_tokens': args.new_tokens}
  row['speed'] = speed(args)
  if args.workdir:
    row['quality'] = bits_per_byte(args.workdir, args.eval_batches)
    _log(f"quality: {row['quality']}")
  emit(row, args.out)
  return row


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
