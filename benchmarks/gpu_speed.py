"""One-GPU speed report: cuDNN attention against XLA, AR training MFU, samples/s of every paradigm.

  python benchmarks/gpu_speed.py                       # base presets, one H100/H200, < 8 min
  python benchmarks/gpu_speed.py --only train          # one part (attention, train, samplers)
  JAX_PLATFORMS=cpu python benchmarks/gpu_speed.py --preset tiny   # smoke test: ~1.5 min on 2 cores

Three parts, each measurement one untimed call (compilation plus one run, `compile_s`), then the
median of `--repeats` timed calls closed by `jax.block_until_ready`:
  attention  the shared op (`paradigms.nn.attention.Attention`, causal, bf16, [B, L, H, Dh] of
             the preset) with implementation='cudnn' against 'xla' on the same params and input:
             max |difference| of the outputs and of d(<y, g>)/dx (the backward pass), each one's
             max error against an fp32 XLA reference, forward and forward+backward times; then a
             whole AR forward (configs/ar_code.py:<preset>, random params) with
             model.attention_impl='cudnn' against 'xla': max |logit difference| and times.
             Skipped off GPU (cuDNN needs an NVIDIA GPU).
  train      configs/ar_code.py:<preset> through the trainer's own jitted step
             (`train.state.setup(...).train_step`, AdamW, state donated) on a one-device mesh,
             fed one fixed random batch already on the device (the data pipeline is
             benchmarks/train_throughput.py's business). tokens/s = batch * seq_len / step time;
             MFU = flops_per_token (`TransformerConfig.flops_per_token(seq_len)`, 6N + causal
             attention) * tokens/s / peak (train_throughput.PEAK_TFLOPS: 989 dense bf16 on
             H100/H200; null elsewhere). Rows: the preset, every other remat policy of
             REMAT_POLICIES, bf16 with XLA attention and fp32 (XLA attention; cuDNN's flash
             kernel takes only 16-bit inputs). A row that runs out of memory is retried once at
             half the batch (its `batch_size` says which).
  samplers   random-init params at the preset (speed does not depend on the values), the
             library's jitted samplers: AR `generate` with the KV cache, MDLM ancestral
             (configs/mdlm_code.py), BD3 block diffusion with a KV cache
             (configs/bd3lm_code.py:<preset>,4) through arena/text_samplers.make_run;
             DiT through `evaluators.images.generate` at a few (sampler, steps); VAR
             (`sample.next_scale.sample`) and HART (`sample.hybrid.sample`) over a random-init
             VQ-VAE of configs/vqvae_glyphs.py:<preset> through the `Tokenizer` seam. No
             guidance, no EOS; text rows write `new_tokens` after the prompt 'def '.
             samples/s = batch / median seconds (tokens/s = batch * new_tokens / median).
Essential rows run first (attention, the preset's training row and its remat contrast, 'dots'
or 'none', and one row per paradigm); the others run while `--budget-s` allows: an optional row
is skipped when the time so far plus the longest earlier row of its part would pass the budget,
no row starts past it, and skipped rows say why. The base default, 400 s, keeps a whole run
under 8 minutes on one H100/H200: on one H200 (jax 0.11.2) every row ran, in 307 s
(benchmarks/results/gpu_speed_h200.json). A row that raises reports its error and the rest go
on (the traceback goes to stderr).
Prints one JSON object on stdout, and with `--out F` rewrites F after every row (`finished` says
whether the run ended); progress goes to stderr. Never asserts on speed.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
import traceback

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import paradigms
from paradigms.nn.transformer import REMAT_POLICIES
from train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the library, arena/ and benchmarks/ (train_throughput)
  sys.path.insert(0, ROOT)
from arena.text_samplers import make_run  # noqa: E402 (needs ROOT on the path)
from benchmarks import train_throughput  # noqa: E402

T0 = time.perf_counter()  # wall_s and --budget-s count from here (after the imports)

PARTS = ('attention', 'train', 'samplers')
LABEL = '7A'  # glyph text every image sampler is asked for
# Per preset: attention shape (B, L, H, Dh) and calls per timed attention run; train steps per
# timed call; text batch, prompt and new tokens; MDLM steps S; BD3 steps per block; images per
# call; DiT (sampler, steps); HART head solver steps; default --budget-s.
PRESETS = {
    'base': dict(attn=(4, 1024, 12, 64), attn_inner=20, train_steps=5, text_batch=64,
                 prompt='def ', new_tokens=256, mdlm_steps=(64, 256), bd3_steps=(4, 1),
                 images=256, dit=(('euler', 4), ('euler', 16), ('heun', 18)), head_steps=8,
                 budget_s=400.0),
    'tiny': dict(attn=(1, 64, 2, 16), attn_inner=2, train_steps=2, text_batch=4, prompt='def ',
                 new_tokens=16, mdlm_steps=(4, 16), bd3_steps=(4, 1), images=8,
                 dit=(('euler', 2), ('heun', 4)), head_steps=2, budget_s=240.0),
}


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--preset', default='base', choices=sorted(PRESETS), help='size preset of every config')
  p.add_argument('--only', default=','.join(PARTS), help=f'comma-separated parts of {PARTS}')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per measurement (median)')
  p.add_argument('--budget-s', type=float, default=None,
                 help='time guard: no row starts past it, and an optional row not when the longest '
                      'earlier row of its part would end past it (default: base 400 s, tiny 240 s)')
  p.add_argument('--peak-tflops', type=float, default=None,
                 help='peak TFLOP/s for MFU (default: train_throughput.PEAK_TFLOPS by device kind)')
  p.add_argument('--out', default=None,
                 help='also write the JSON here, rewritten after every row (a killed run keeps '
                      'the rows it finished)')
  args = p.parse_args(argv)
  args.only = [s.strip() for s in args.only.split(',') if s.strip()]
  bad = sorted(set(args.only) - set(PARTS))
  if bad or not args.only:
    p.error(f'--only {bad or args.only}: choose from {PARTS}')
  if args.repeats < 1:
    p.error('--repeats must be >= 1')
  return args


def _log(msg: str) -> None:
  print(f'[{time.perf_counter() - T0:6.1f}s] {msg}', file=sys.stderr, flush=True)


def _on_gpu() -> bool:
  return jax.default_backend() == 'gpu'


def _spec(name: str, preset: str) -> str:
  """'ar_code', 'tiny' -> '<repo>/configs/ar_code.py:tiny' (bd3lm_code takes 'tiny,4')."""
  arg = f'{preset},4' if name == 'bd3lm_code' else preset
  return os.path.join(ROOT, 'configs', f'{name}.py') + f':{arg}'


def load_config(spec: str, overrides=()):
  """The locked config of `spec` with 'a.b=value' overrides; off GPU cuDNN attention -> XLA."""
  config = config_lib.from_file(spec)
  train_throughput.apply_overrides(config, overrides)
  if not _on_gpu() and config.model.get('attention_impl') == 'cudnn':
    config.model.attention_impl = 'xla'  # cuDNN needs a GPU; the configs' base presets ask for it
  config_lib.validate(config)
  return config


@functools.lru_cache(maxsize=None)
def random_model(spec: str, seed: int = 0):
  """(config, model, params) of `spec` with random float32 params (cached; `cache_clear` frees)."""
  config = load_config(spec)
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  spec_batch = paradigm.example_batch(1, config.data, model.cfg)
  batch = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), spec_batch)
  params = jax.jit(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'])(
      jax.random.key(seed))
  return config, model, params


def timed(call, repeats: int, inner: int = 1) -> dict:
  """One untimed `call()` (compile + run), then `repeats` timed runs of `inner` calls each.
  Returns {'out': first output, 'compile_s', 'seconds': per call, 'median_s'}."""
  tic = time.perf_counter()
  out = jax.block_until_ready(call())
  compile_s = time.perf_counter() - tic
  seconds = []
  for _ in range(repeats):
    tic = time.perf_counter()
    for _ in range(inner):
      last = call()
    jax.block_until_ready(last)
    seconds.append((time.perf_counter() - tic) / inner)
  return {'out': out, 'compile_s': compile_s, 'seconds': seconds,
          'median_s': statistics.median(seconds)}


def _clock(t: dict) -> dict:
  return {'compile_s': t['compile_s'], 'seconds': t['seconds'], 'median_s': t['median_s']}


def _max_abs(a, b=None) -> float:
  a = jnp.asarray(a, jnp.float32)
  return float(jnp.max(jnp.abs(a if b is None else a - jnp.asarray(b, jnp.float32))))


# --- Part 1: cuDNN flash attention against XLA --------------------------------------------------

def attention_check(P: dict, args) -> dict:
  """The shared attention op and a whole AR forward, implementation 'cudnn' vs 'xla' (bf16)."""
  from paradigms.nn.attention import Attention
  B, L, H, Dh = P['attn']
  kx, kg, kp, kt = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, (B, L, H * Dh), jnp.float32)  # [B, L, D]
  g = jax.random.normal(kg, (B, L, H * Dh), jnp.float32)  # [B, L, D] cotangent of the output
  pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))  # [B, L] positions = ids
  mods = {impl: Attention(H, H, Dh, 'causal', implementation=impl, dtype=jnp.bfloat16)
          for impl in ('xla', 'cudnn')}
  mods['fp32'] = Attention(H, H, Dh, 'causal', implementation='xla', dtype=jnp.float32)
  params = nn.meta.unbox(mods['fp32'].init(kp, x, pos, pos))['params']
  op = {'shape': {'B': B, 'L': L, 'H': H, 'Dh': Dh}, 'mask': 'causal', 'dtype': 'bfloat16'}
  outs, grads, fwd_ms, bwd_ms = {}, {}, {}, {}
  for impl, m in mods.items():
    dt = m.dtype
    fwd = jax.jit(lambda p, x, m=m, dt=dt: m.apply({'params': p}, x.astype(dt), pos, pos)[0])
    dx = jax.jit(jax.grad(lambda p, x, g, m=m, dt=dt: jnp.sum(
        m.apply({'params': p}, x.astype(dt), pos, pos)[0].astype(jnp.float32) * g), argnums=1))
    t_f = timed(lambda: fwd(params, x), args.repeats, P['attn_inner'])
    t_b = timed(lambda: dx(params, x, g), args.repeats, P['attn_inner'])
    outs[impl], grads[impl] = t_f['out'], t_b['out']
    fwd_ms[impl], bwd_ms[impl] = 1e3 * t_f['median_s'], 1e3 * t_b['median_s']
    _log(f'attention {impl}: fwd {fwd_ms[impl]:.3f} ms, fwd+bwd {bwd_ms[impl]:.3f} ms')
  op.update(
      out_max_abs_diff=_max_abs(outs['cudnn'], outs['xla']), out_max_abs=_max_abs(outs['xla']),
      out_max_abs_err_vs_fp32={k: _max_abs(outs[k], outs['fp32']) for k in ('xla', 'cudnn')},
      grad_max_abs_diff=_max_abs(grads['cudnn'], grads['xla']), grad_max_abs=_max_abs(grads['xla']),
      grad_max_abs_err_vs_fp32={k: _max_abs(grads[k], grads['fp32']) for k in ('xla', 'cudnn')},
      fwd_ms={k: fwd_ms[k] for k in ('xla', 'cudnn')},
      fwd_bwd_ms={k: bwd_ms[k] for k in ('xla', 'cudnn')},
      cudnn_speedup_fwd=fwd_ms['xla'] / fwd_ms['cudnn'],
      cudnn_speedup_fwd_bwd=bwd_ms['xla'] / bwd_ms['cudnn'])

  spec = _spec('ar_code', args.preset)
  config, model, params = random_model(spec)
  tokens = jax.random.randint(kt, (B, config.data.seq_len), 0, model.cfg.vocab_size, jnp.int32)
  logits, ms = {}, {}
  for impl in ('xla', 'cudnn'):
    cfg = dataclasses.replace(model.cfg, attention_impl=impl, dtype='bfloat16')  # cuDNN: 16-bit
    m = paradigms.get(config.paradigm).build(cfg)
    fwd = jax.jit(lambda p, t, m=m: m.apply({'params': p}, t)[0])  # [B, L, V] float32
    t = timed(lambda: fwd(params, tokens), args.repeats)
    logits[impl], ms[impl] = t['out'], 1e3 * t['median_s']
    _log(f'AR forward {impl}: {ms[impl]:.2f} ms')
  return {'op': op, 'model': {
      'config': os.path.relpath(spec, ROOT), 'dtype': 'bfloat16',
      'tokens': [B, config.data.seq_len],
      'logits_max_abs_diff': _max_abs(logits['cudnn'], logits['xla']),
      'logits_max_abs': _max_abs(logits['xla']), 'fwd_ms': ms,
      'cudnn_speedup': ms['xla'] / ms['cudnn']}}


# --- Part 2: AR training throughput and MFU ------------------------------------------------------

def train_plan(preset: str) -> list[tuple]:
  """(name, overrides, essential) rows: the preset, the other remat policies, bf16 XLA, fp32."""
  base = load_config(_spec('ar_code', preset)).model
  rows = [('preset', (), True)]
  rows += [(f'remat={p}', (f'model.remat_policy={p}',), p in ('dots', 'none'))
           for p in REMAT_POLICIES if p != base.remat_policy]
  rows += [('bfloat16+xla', ('model.dtype=bfloat16', 'model.attention_impl=xla'), False),
           ('float32+xla', ('model.dtype=float32', 'model.attention_impl=xla'), False)]
  seen, out = set(), []
  for name, overrides, essential in rows:  # drop a row that resolves to an earlier one
    m = load_config(_spec('ar_code', preset), overrides).model
    key = (m.dtype, m.attention_impl, m.remat_policy)
    if key not in seen:
      seen.add(key)
      out.append((name, overrides, essential))
  return out


def _oom(err: Exception) -> bool:
  text = str(err)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def train_row(P: dict, args, overrides) -> dict:
  """tokens/s, TFLOP/s and MFU of the trainer's step; on out-of-memory, once more at half batch."""
  spec = _spec('ar_code', args.preset)
  try:
    return _train_once(P, args, spec, overrides)
  except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
    if not _oom(err):
      raise
    batch = load_config(spec, overrides).data.batch_size // 2
    _log(f'out of memory at batch {2 * batch}; retrying at {batch}')
  row = _train_once(P, args, spec, tuple(overrides) + (f'data.batch_size={batch}',))
  row['note'] = f'out of memory at batch {2 * batch}: measured at {batch}'
  return row


def _train_once(P: dict, args, spec: str, overrides) -> dict:
  from train.config import keeps_ema
  from train.state import device_batch, make_mesh, setup
  config = load_config(spec, overrides)
  paradigm = paradigms.get(config.paradigm)
  cfg, d = config_lib.model_config(config), config.data
  s = setup(config, paradigm, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  rs = np.random.default_rng(0)
  batch = {k: rs.integers(0, cfg.vocab_size, a.shape).astype(a.dtype)  # token batches only
           for k, a in paradigm.example_batch(d.batch_size, d, cfg).items()}
  batch = device_batch(batch, s.batch_sharding)
  box = {'state': s.init(jax.random.key(config.train.seed))}
  rng, n = jax.random.key(1), P['train_steps']

  def call():
    for _ in range(n):
      box['state'], metrics = s.train_step(box['state'], batch, rng)
    return box['state'], metrics

  t = timed(call, args.repeats)
  loss = float(t['out'][1]['loss'])
  step_s = t['median_s'] / n
  rate = d.batch_size * d.seq_len / step_s
  fpt = cfg.flops_per_token(d.seq_len)
  peak = args.peak
  return {'overrides': list(overrides), 'dtype': cfg.dtype, 'attention_impl': cfg.attention_impl,
          'remat_policy': cfg.remat_policy, 'batch_size': d.batch_size, 'seq_len': d.seq_len,
          'ema': keeps_ema(config), 'steps_per_call': n, 'compile_s': t['compile_s'],
          'step_s': step_s,
          'step_seconds': [x / n for x in t['seconds']], 'tokens_per_s': rate,
          'tflops': rate * fpt / 1e12, 'mfu': rate * fpt / 1e12 / peak if peak else None,
          'loss': loss}


# --- Part 3: samples/s of every paradigm ---------------------------------------------------------

def text_row(P: dict, args, kind: str, sampler: str, settings: dict) -> dict:
  """A token sampler (AR / MDLM / BD3) through arena.text_samplers.make_run: B x new_tokens."""
  from pipelines.text import ByteTokenizer
  name = {'ar': 'ar_code', 'mdlm': 'mdlm_code', 'bd3': 'bd3lm_code'}[kind]
  spec = _spec(name, args.preset)
  config, model, params = random_model(spec)
  prompt_ids = ByteTokenizer().encode(P['prompt']).astype(np.int32)  # [P]
  B, N = P['text_batch'], P['new_tokens']
  row = dict(sampler=sampler, model=kind, settings=settings)
  fn = make_run(row, {kind: (config, model, params)}, prompt_ids, B, N)
  key = jax.random.key(0)
  t = timed(lambda: fn(key)[0], args.repeats)
  return {'paradigm': config.paradigm, 'config': os.path.relpath(spec, ROOT), 'sampler': sampler,
          'settings': settings, 'params': model.cfg.num_params(), 'dtype': model.cfg.dtype,
          'attention_impl': model.cfg.attention_impl, 'batch': B, 'prompt_len': len(prompt_ids),
          'new_tokens': N, 'nfe': int(t['out'].nfe), **_clock(t),
          'samples_per_s': B / t['median_s'], 'tokens_per_s': B * N / t['median_s']}


def _image_row(config, model, spec, sampler, settings, num, t, nfe, **extra) -> dict:
  return {'paradigm': config.paradigm, 'config': os.path.relpath(spec, ROOT), 'sampler': sampler,
          'settings': settings, 'params': model.cfg.num_params(), 'dtype': model.cfg.dtype,
          'batch': num, 'nfe': nfe, **extra, **_clock(t), 'samples_per_s': num / t['median_s']}


def dit_row(P: dict, args, sampler: str, steps: int) -> dict:
  """DiT images through `evaluators.images.generate` (the run's noise grid for its objective)."""
  from evaluators import images
  spec = _spec('dit_glyphs', args.preset)
  config, model, params = random_model(spec)
  num, key = P['images'], jax.random.key(0)
  labels = images.parse_labels(config, [LABEL], num)  # int32 [num, S]
  t = timed(lambda: images.generate(config, model, params, key, num=num, sampler=sampler,
                                    steps=steps, labels=labels), args.repeats)  # numpy: synced
  return _image_row(config, model, spec, sampler, {'steps': steps}, num, t, t['out'][1],
                    attention_impl=model.cfg.attention_impl)


def scale_row(P: dict, args, name: str) -> dict:
  """VAR (`next_scale.sample`) or HART (`hybrid.sample`) over a random-init VQ-VAE tokenizer."""
  from paradigms.next_scale import check_tokenizer
  from evaluators import images
  from sample import hybrid, next_scale
  spec, vq_spec = _spec(name, args.preset), _spec('vqvae_glyphs', args.preset)
  config, model, params = random_model(spec)
  _, vq_model, vq_params = random_model(vq_spec)
  vq = vq_model.cfg
  check_tokenizer(model.cfg, {'scales': vq.scales, 'codebook_size': vq.codebook_size,
                              'latent_dim': vq.latent_dim}, os.path.relpath(vq_spec, ROOT))
  num, key = P['images'], jax.random.key(0)
  labels = jnp.asarray(images.parse_labels(config, [LABEL], num))  # int32 [num, S]
  if config.paradigm == 'hybrid':
    settings = {'head_steps': P['head_steps']}
    fn = lambda: hybrid.sample(model, params, vq_model, vq_params, labels, key, **settings)
  else:
    settings = {}
    fn = lambda: next_scale.sample(model, params, vq_model, vq_params, labels, key)
  t = timed(fn, args.repeats)
  out = t['out']
  extra = {'head_nfe': int(out.head_nfe)} if config.paradigm == 'hybrid' else {}
  return _image_row(config, model, spec, config.paradigm, settings, num, t, int(out.nfe),
                    scales=list(model.cfg.scales), tokenizer=os.path.relpath(vq_spec, ROOT),
                    **extra)


def sampler_plan(P: dict) -> list[tuple]:
  """(name, fn(P, args) -> row, essential): one essential row per paradigm, then the rest."""
  S1, *S_rest = P['mdlm_steps']
  b1, *b_rest = P['bd3_steps']
  (dit_s, dit_n), *dit_rest = P['dit']
  first = [('ar', functools.partial(text_row, kind='ar', sampler='ar', settings={})),
           (f'mdlm ancestral S={S1}', functools.partial(
               text_row, kind='mdlm', sampler='ancestral', settings={'steps': S1})),
           (f'bd3 steps_per_block={b1}', functools.partial(
               text_row, kind='bd3', sampler='block_diffusion',
               settings={'block_size': 4, 'steps_per_block': b1})),
           (f'dit {dit_s} {dit_n}', functools.partial(dit_row, sampler=dit_s, steps=dit_n)),
           ('var', functools.partial(scale_row, name='var_glyphs')),
           ('hart', functools.partial(scale_row, name='hart_glyphs'))]
  rest = [(f'mdlm ancestral S={S}', functools.partial(
              text_row, kind='mdlm', sampler='ancestral', settings={'steps': S})) for S in S_rest]
  rest += [(f'bd3 steps_per_block={b}', functools.partial(
               text_row, kind='bd3', sampler='block_diffusion',
               settings={'block_size': 4, 'steps_per_block': b})) for b in b_rest]
  rest += [(f'dit {s} {n}', functools.partial(dit_row, sampler=s, steps=n)) for s, n in dit_rest]
  return [(n, f, True) for n, f in first] + [(n, f, False) for n, f in rest]


# --- The runner ----------------------------------------------------------------------------------

class Runner:
  """Runs rows in the given order under the time budget; keeps each part's rows in plan order."""

  def __init__(self, budget_s: float):
    self.budget_s, self.durations, self.rows = budget_s, {}, {}

  def __call__(self, part: str, index: int, name: str, fn, essential: bool) -> None:
    elapsed = time.perf_counter() - T0
    estimate = 0.0 if essential else max(self.durations.get(part, [0.0]))
    if elapsed + estimate > self.budget_s:
      row = {'skipped': f'budget: {elapsed:.0f}s elapsed + ~{estimate:.0f}s for this row > '
                        f'--budget-s {self.budget_s:.0f}'}
      _log(f'{part} {name}: skipped ({row["skipped"]})')
    else:
      _log(f'{part} {name}: start')
      tic = time.perf_counter()
      try:
        row = fn()
      except Exception as err:  # noqa: BLE001 - report it in the JSON, go on with the rest
        traceback.print_exc(file=sys.stderr)
        row = {'error': f'{type(err).__name__}: {str(err)[:500]}'}
      row['wall_s'] = time.perf_counter() - tic
      self.durations.setdefault(part, []).append(row['wall_s'])
      _log(f'{part} {name}: done in {row["wall_s"]:.1f}s')
    self.rows.setdefault(part, []).append((index, {'name': name, **row}))

  def part(self, part: str) -> list[dict]:
    return [row for _, row in sorted(self.rows.get(part, []), key=lambda r: r[0])]


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  import jaxlib
  absl_logging.set_verbosity(absl_logging.WARNING)
  P = PRESETS[args.preset]
  budget = P['budget_s'] if args.budget_s is None else args.budget_s
  kind = jax.devices()[0].device_kind
  args.peak = args.peak_tflops or next(
      (v for k, v in train_throughput.PEAK_TFLOPS.items() if k in kind), None)
  _log(f'{kind} ({jax.default_backend()}), jax {jax.__version__}, preset {args.preset}, '
       f'budget {budget:.0f}s')
  run = Runner(budget)
  out = {'device_kind': kind, 'backend': jax.default_backend(), 'num_devices': jax.device_count(),
         'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__,
         'preset': args.preset, 'parts': args.only, 'repeats': args.repeats, 'budget_s': budget,
         'command': ' '.join(['python', 'benchmarks/gpu_speed.py', *sys.argv[1:]])}
  trains = train_plan(args.preset) if 'train' in args.only else []
  samplers = sampler_plan(P) if 'samplers' in args.only else []

  if trains:  # the model's figures once; the rows fill in as they finish
    spec = _spec('ar_code', args.preset)
    config = load_config(spec)
    cfg = config_lib.model_config(config)
    train_head = {'config': os.path.relpath(spec, ROOT), 'params': cfg.num_params(),
                  'flops_per_token': cfg.flops_per_token(config.data.seq_len),
                  'peak_tflops': args.peak}

  def report(done: bool) -> dict:
    """`out` with every finished row; written to --out after each row (done: the run ended)."""
    if trains:
      rows = run.part('train')
      first = rows[0] if rows and rows[0]['name'] == 'preset' else {}
      out['train'] = {**train_head, 'tokens_per_s': first.get('tokens_per_s'),
                      'mfu': first.get('mfu'), 'rows': rows}
    if samplers:
      out['samplers'] = {'rows': run.part('samplers')}
    out['wall_s'], out['finished'] = time.perf_counter() - T0, done
    if args.out:
      with open(args.out + '.tmp', 'w') as f:
        json.dump(out, f, indent=2)
      os.replace(args.out + '.tmp', args.out)
    return out

  if 'attention' in args.only:
    if _on_gpu():
      run('attention', 0, 'attention', lambda: attention_check(P, args), True)
      out['attention'] = run.part('attention')[0]
    else:
      out['attention'] = {'skipped': f'cuDNN flash attention needs an NVIDIA GPU; the backend is '
                                     f'{jax.default_backend()!r}'}
    report(False)
  jobs = [('train', i, n, functools.partial(train_row, P, args, o), e)
          for i, (n, o, e) in enumerate(trains)]
  jobs += [('samplers', i, n, functools.partial(f, P, args), e)
           for i, (n, f, e) in enumerate(samplers)]
  order = ([j for j in jobs if j[4]] + [j for j in jobs if not j[4] and j[0] == 'samplers']
           + [j for j in jobs if not j[4] and j[0] == 'train'])
  freed = False
  for part, index, name, fn, essential in order:
    if part == 'train' and not essential and not freed:
      random_model.cache_clear()  # the sampler models' params leave room for the train state
      freed = True
    run(part, index, name, fn, essential)
    report(False)
  print(json.dumps(report(True), indent=2))
  return out


if __name__ == '__main__':
  main()
