"""Training throughput: the trainer's step path against a bare jitted step of the same model.

  python benchmarks/train_throughput.py --config configs/ar_code.py:small
  python benchmarks/train_throughput.py --config configs/ar_code.py:base --steps 60 --set data.batch_size=32

Three measurements of one config, in one process (tokens/s = batch_size * seq_len / step time):
  (a) bare     `jax.jit(value_and_grad(paradigm.loss) + the trainer's optax update)`, params and
               optimiser state donated, one fixed batch already on device, one device, no mesh:
               the speed of the model itself.
  (b) trainer  `train.state.setup(...).train_step` fed by the real grain iterator through
               `device_batch`, metrics fetched every `train.log_every` steps: what
               `train.trainer.train` runs per step, minus logging/eval/checkpoints.
  (c) loop     the whole `train.trainer.train` on a temporary workdir for warmup + steps steps,
               its own tokens_per_s (its clock skips the compiling first step, eval and saves).
(a) and (b) alternate in `--rounds` rounds (order flipped each round, ABBA) so slow drift and
noise from other processes fall on both; the ratios are the figures to compare across runs.
FLOPs are the training FLOPs of `TransformerConfig.flops_per_token` (6N + causal attention).
Prints one JSON object on stdout; progress goes to stderr. Never asserts on speed.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import functools
import json
import statistics
import sys
import tempfile
import time

# Peak dense bf16 TFLOP/s used for MFU when --peak-tflops is not given (H100/H200 SXM).
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0}


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/ar_code.py:small', help='config file and preset')
  p.add_argument('--steps', type=int, default=30,
                 help='timed steps per path, split evenly over --rounds (and the loop runs warmup + steps)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps per path before timing (compiles)')
  p.add_argument('--rounds', type=int, default=3, help='alternating rounds of (a) and (b)')
  p.add_argument('--peak-tflops', type=float, default=None,
                 help='device peak TFLOP/s for MFU (default: 989 on H100/H200, else no MFU)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override, repeatable, e.g. --set data.batch_size=16')
  p.add_argument('--skip-loop', action='store_true', help='skip (c), the full trainer loop')
  args = p.parse_args(argv)
  if args.steps < args.rounds or args.rounds < 1 or args.warmup < 1:
    p.error('need --rounds >= 1, --steps >= --rounds and --warmup >= 1')
  return args


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _literal(text: str):
  """'16' -> 16, '(1, -1, 1)' -> tuple, 'bfloat16' -> 'bfloat16' (not a literal: kept as str)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, pairs) -> dict:
  """Set each 'a.b.c=value' on the locked ConfigDict (unknown keys fail). Returns {key: value}."""
  done = {}
  for pair in pairs:
    key, sep, text = pair.partition('=')
    if not sep:
      raise ValueError(f'--set {pair!r}: expected KEY=VALUE, e.g. --set data.batch_size=16')
    *path, leaf = key.strip().split('.')
    node = config
    for name in path:
      node = node[name]
    value = _literal(text)
    node[leaf] = value
    done[key.strip()] = value
  return done


def _median(xs):
  return statistics.median(xs) if xs else None


def _ratio(a, b):
  return a / b if a is not None and b else None


def bare_runner(config, batch):
  """`run(n) -> loss`: n steps of `jax.jit(value_and_grad(paradigm.loss) + the trainer's optax
  update)` on one device, no mesh, params and optimiser state donated, on the fixed `batch`
  (numpy, placed once); returns the last loss (blocked on). Shared with torch_peer.py."""
  import flax.linen as nn
  import jax
  import optax

  import paradigms
  from train import config as config_lib
  from train.state import make_optimizer

  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  tx, _ = make_optimizer(config.train)
  batch = jax.device_put(batch, jax.devices()[0])
  params = jax.jit(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'])(
      jax.random.key(config.train.seed))
  grad_fn = jax.value_and_grad(
      functools.partial(paradigm.loss, model=model, **dict(config.loss)), has_aux=True)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch, rng):
    (loss, _), grads = grad_fn(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {'params': params, 'opt_state': jax.jit(tx.init)(params), 'rng': jax.random.key(1)}

  def run(n):
    loss = None
    for _ in range(n):
      state['rng'], rng = jax.random.split(state['rng'])
      state['params'], state['opt_state'], loss = step(state['params'], state['opt_state'],
                                                       batch, rng)
    return float(jax.block_until_ready(loss))

  return run


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  import jax

  import paradigms
  from train import config as config_lib
  from pipelines.text import load_corpus, train_dataset
  from train.state import device_batch, make_mesh, setup

  config = config_lib.from_file(args.config)
  overrides = apply_overrides(config, args.set)
  config_lib.validate(config)
  paradigm = paradigms.get(config.paradigm)
  cfg = config_lib.model_config(config)
  d, t = config.data, config.train
  tokens_per_step = d.batch_size * d.seq_len
  per_round = args.steps // args.rounds
  device_kind = jax.devices()[0].device_kind
  peak = args.peak_tflops
  if peak is None:
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_kind), None)
  if jax.device_count() > 1:
    _log(f'note: {jax.device_count()} devices; (a) runs on one device, (b)/(c) on mesh '
         f'{tuple(config.mesh.shape)}, so the ratios also measure the sharding')

  corpus = load_corpus(d)
  compile_s = {}

  # (a) bare: one device, no mesh, no logical rules (the activation constraints are no-ops).
  fixed = next(iter(train_dataset(corpus.train, seq_len=d.seq_len, batch_size=d.batch_size,
                                  seed=d.seed + 1)))  # {'tokens': [B, L + 1]} int32
  run_bare = bare_runner(config, fixed)

  # (b) the trainer's step path: sharded state, grain iterator -> device_batch -> train_step.
  mesh = make_mesh(config.mesh.shape)
  s = setup(config, paradigm, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(t.seed))
  trainer = {'state': s.init(init_rng)}
  iterator = iter(train_dataset(corpus.train, seq_len=d.seq_len, batch_size=d.batch_size,
                                seed=d.seed, process_index=jax.process_index(),
                                process_count=jax.process_count()))

  def run_trainer(n):
    pending = []
    for i in range(n):
      batch = device_batch(next(iterator), s.batch_sharding)
      trainer['state'], metrics = s.train_step(trainer['state'], batch, step_rng)
      pending.append(metrics)
      if (i + 1) % t.log_every == 0 or i + 1 == n:  # the trainer fetches each log interval
        jax.device_get(pending)
        pending = []
    jax.block_until_ready(trainer['state'])

  paths = {'bare': run_bare, 'trainer': run_trainer}
  for name, fn in paths.items():
    tic = time.perf_counter()
    fn(1)
    compile_s[name] = time.perf_counter() - tic  # first step: compilation + one step
    fn(args.warmup - 1)
    _log(f'{name}: first step (compile) {compile_s[name]:.1f}s')

  rates = {name: [] for name in paths}
  for r in range(args.rounds):
    order = ('bare', 'trainer') if r % 2 == 0 else ('trainer', 'bare')
    for name in order:
      tic = time.perf_counter()
      paths[name](per_round)
      rates[name].append(tokens_per_step * per_round / (time.perf_counter() - tic))
    _log(f'round {r + 1}/{args.rounds}: bare {rates["bare"][-1]:,.0f} tok/s, '
         f'trainer {rates["trainer"][-1]:,.0f} tok/s')
  paired = [b / a for a, b in zip(rates['bare'], rates['trainer'])]
  del run_bare, trainer, iterator  # free both states (and the grain threads) before (c)

  # (c) the whole trainer loop on a temporary workdir: one log interval, eval/ckpt only at the end.
  loop_rate = None
  if not args.skip_loop:
    from train.trainer import train
    c = copy.deepcopy(config)
    n = args.warmup + args.steps
    c.train.steps = n
    c.train.log_every = c.train.eval_every = c.train.ckpt_every = n
    c.train.eval_batches = 1
    c.train.progress = False
    if 'stop_at' in c.train:
      c.train.stop_at = 0
    with tempfile.TemporaryDirectory(prefix='train_throughput_') as workdir, \
        contextlib.redirect_stdout(sys.stderr):
      tic = time.perf_counter()
      last = train(c, workdir)
      _log(f'loop: {n} steps in {time.perf_counter() - tic:.1f}s wall (incl. compile, eval, save)')
    loop_rate = last.get('tokens_per_s')

  fpt = cfg.flops_per_token(d.seq_len)
  bare_rate, trainer_rate = _median(rates['bare']), _median(rates['trainer'])

  def tflops(rate):
    return None if rate is None else rate * fpt / 1e12

  out = {
      'config': args.config,
      'overrides': overrides,
      'device_kind': device_kind,
      'num_devices': jax.device_count(),
      'params': cfg.num_params(),
      'params_non_embedding': cfg.num_params(embeddings=False),
      'dtype': cfg.dtype,
      'batch_size': d.batch_size,
      'seq_len': d.seq_len,
      'tokens_per_step': tokens_per_step,
      'flops_per_token': fpt,
      'rounds': args.rounds,
      'steps_per_round': per_round,
      'warmup': args.warmup,
      'compile_s': compile_s,
      'bare_tokens_per_s': bare_rate,
      'trainer_tokens_per_s': trainer_rate,
      'trainer_loop_tokens_per_s': loop_rate,
      'bare_tokens_per_s_rounds': rates['bare'],
      'trainer_tokens_per_s_rounds': rates['trainer'],
      'trainer_over_bare': _median(paired),
      'trainer_over_bare_rounds': paired,
      'loop_over_bare': _ratio(loop_rate, bare_rate),
      'bare_tflops': tflops(bare_rate),
      'trainer_tflops': tflops(trainer_rate),
      'loop_tflops': tflops(loop_rate),
      'peak_tflops': peak,
      'bare_mfu': _ratio(tflops(bare_rate), peak),
      'trainer_mfu': _ratio(tflops(trainer_rate), peak),
      'loop_mfu': _ratio(tflops(loop_rate), peak),
  }
  print(json.dumps(out, indent=2))
  return out


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
