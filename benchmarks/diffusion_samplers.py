"""Masked / block diffusion samplers beside the AR KV-cache decoder: speed, NFE and quality.

  python benchmarks/diffusion_samplers.py                       # random-init small models
  python benchmarks/diffusion_samplers.py --ar-workdir runs/ar_code \\
      --mdlm-workdir runs/mdlm_code --bd3-workdir runs/bd3_b4   # trained: adds the quality table
  python benchmarks/diffusion_samplers.py --quick               # tiny smoke test (seconds)

Every sampler writes the same N = --new-tokens tokens after the same prompt (--prompt, byte
level), at each batch size in --batches, at temperature 1 with no top-k / top-p and no EOS:
  ar                    `sample.autoregressive.generate` with the KV cache (NFE = N);
  ancestral             MDLM ancestral sampling, S steps, p cache on (NFE <= S);
  remdm                 ReMDM-cap, eta 0.5, S steps (NFE = S);
  confidence_topk       LLaDA low-confidence remasking, min(S, N) steps;
  confidence_threshold  Fast-dLLM, tau 0.9: it picks its own step count (at most N), so it runs
                        once per batch size, not once per S;
  semi_autoregressive   LLaDA semi-AR, blocks of min(32, N), top-k inside each block;
  block_diffusion       BD3-LM block by block with a KV cache, on the BD3 model.
S runs over --steps, read as the total denoising-step budget of a sequence, so every diffusion
row at one S spends about S network calls: semi_autoregressive and block_diffusion get
steps_per_block = clip(S // n_blocks, 1, block length) (for BD3 with block 4 and N = 128 that is
32 blocks, so S = 16 and 32 both give 1 step per block and S = 128 gives 4, the block size).
A setting that repeats an earlier one after this clipping is skipped (logged on stderr). BD3
prompts are left-padded with EOS to whole blocks (as `python -m sample` does), and N must be a
multiple of the BD3 block size.

Timing: at each batch size every setting is first called once untimed (compilation plus one run,
`compile_s`), then all settings are timed in `--repeats` interleaved rounds (the order flips each
round, so machine noise falls on all of them). tokens/s = batch * N / median seconds.

Quality (the speed/quality table) is measured at the largest batch size only (64 by default), on
the samples of the untimed call, and only for rows whose own model is a trained run and only when
--ar-workdir gives the AR judge; other rows report null with `quality_note` saying why:
  bits_per_byte   -log2 p_AR(new tokens | prompt) of the AR model, teacher-forced (one forward
                  pass over the unpadded prompt + sample), summed over the batch / (batch * N);
                  byte-level, so one token is one byte (a sampled EOS counts as one token too);
  parse_score     mean over the batch of `sample.code_quality.parse_prefix_score(prompt + sample)`,
                  the sample cut at its first EOS (where `python -m sample` would stop);
  entropy_bits    unigram entropy in bits of the generated token ids pooled over the batch.
Prints one JSON object {"device", "config", "rows"} on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

FULL = dict(preset='small', batches='1,64', new_tokens=128, steps='16,32,128', repeats=2)
QUICK = dict(preset='tiny', batches='1,64', new_tokens=16, steps='4,16', repeats=1)
BD3_BLOCK = 4  # block size of the random-init BD3 model (configs/bd3lm_code.py:<preset>,4)
SEMI_AR_BLOCK = 32  # LLaDA semi-AR block length (capped at N)
TAU = 0.9  # Fast-dLLM confidence threshold
ETA = 0.5  # ReMDM remasking strength


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--ar-workdir', default=None, help='trained AR run (also the quality judge)')
  p.add_argument('--mdlm-workdir', default=None, help='trained MDLM run (loss.block_size 0)')
  p.add_argument('--bd3-workdir', default=None, help='trained BD3 run (0 < loss.block_size < seq_len)')
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
  spec_batch = paradigm.example_batch(1, config.data)
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


def settings(args, bd3_block: int) -> list[dict]:
  """Every (sampler, settings) row to run, duplicates after clipping removed."""
  N, rows, seen = args.new_tokens, [], set()

  def add(sampler, model, S, **kw):
    key = (sampler, tuple(sorted(kw.items())))
    if key in seen:
      _log(f'{sampler} steps={S}: same settings {kw} as an earlier row, skipped')
      return
    seen.add(key)
    rows.append(dict(sampler=sampler, model=model, steps=S, settings=kw))

  add('ar', 'ar', None)
  semi_block = min(SEMI_AR_BLOCK, N)
  semi_blocks = -(-N // semi_block)
  bd3_blocks = N // bd3_block
  for S in args.steps:
    add('ancestral', 'mdlm', S, steps=S)
    add('remdm', 'mdlm', S, steps=S, eta=ETA)
    add('confidence_topk', 'mdlm', S, steps=min(S, N))
  add('confidence_threshold', 'mdlm', None, tau=TAU)
  for S in args.steps:
    add('semi_autoregressive', 'mdlm', S, block_len=semi_block,
        steps_per_block=min(max(S // semi_blocks, 1), semi_block))
  for S in args.steps:
    add('block_diffusion', 'bd3', S, block_size=bd3_block,
        steps_per_block=min(max(S // bd3_blocks, 1), bd3_block))
  return rows


def make_run(row: dict, models: dict, prompt_ids, B: int, N: int):
  """fn(rng) -> (output, first new-token column) for one row at batch B. prompt_ids: [P]."""
  import jax.numpy as jnp
  import numpy as np
  from paradigms import autoregressive as ar
  from paradigms import masked_diffusion as md
  from sample import masked_diffusion as mds
  from sample.autoregressive import generate
  from train.data import ByteTokenizer
  config, model, params = models[row['model']]
  P, kw = len(prompt_ids), row['settings']
  prompt = jnp.asarray(np.broadcast_to(prompt_ids, (B, P)), jnp.int32)  # [B, P]
  if row['sampler'] == 'ar':
    fn, cache = ar.LogitsFn(model), model.init_cache(B, P + N)
    return lambda rng: (generate(fn, params, prompt, rng, cache, max_new_tokens=N), P)
  mask_id = config.loss.mask_id
  fn = md.LogitsFn(model, mask_id, config.loss.time_conditioning)
  if row['sampler'] == 'block_diffusion':
    Bk = kw['block_size']
    pad = (-P) % Bk  # whole blocks: left-pad with document breaks, as `python -m sample` does
    padded = jnp.concatenate([jnp.full((B, pad), ByteTokenizer.EOS, jnp.int32), prompt], axis=1)
    cache = model.init_cache(B, P + pad + N)
    return lambda rng: (mds.block_diffusion(
        fn, params, padded, rng, cache, mask_id=mask_id, block_size=Bk, num_blocks=N // Bk,
        steps_per_block=kw['steps_per_block'], schedule=config.loss.schedule), P + pad)
  x = jnp.concatenate([prompt, jnp.full((B, N), mask_id, jnp.int32)], axis=1)  # [B, P + N]
  sampler = getattr(mds, row['sampler'])
  if row['sampler'] in ('ancestral', 'remdm'):
    kw = dict(kw, schedule=config.loss.schedule)
  elif row['sampler'] == 'semi_autoregressive':
    kw = dict(kw, strategy='topk')
  return lambda rng: (sampler(fn, params, x, rng, mask_id=mask_id, **kw), P)


def quality(new, prompt_ids, judge) -> dict:
  """bits per byte under the AR judge, parser score and unigram entropy of samples new [B, N]."""
  import numpy as np
  from sample.code_quality import parse_prefix_score
  from train.data import ByteTokenizer
  B, N = new.shape
  P = len(prompt_ids)
  seq = np.concatenate([np.broadcast_to(prompt_ids, (B, P)), new], axis=1).astype(np.int32)
  nll = np.asarray(judge(seq), np.float64)  # [B, P + N - 1] nats of tokens 1..P+N-1
  bits = nll[:, P - 1:].sum() / math.log(2.0)
  tok, prompt_text = ByteTokenizer(), ByteTokenizer().decode(prompt_ids)
  scores = []
  for row in new:
    eos = np.flatnonzero(row == ByteTokenizer.EOS)
    scores.append(parse_prefix_score(prompt_text + tok.decode(row[:eos[0] if eos.size else N])))
  counts = np.bincount(new.ravel())
  p = counts[counts > 0] / new.size
  return {'bits_per_byte': float(bits / new.size), 'parse_score': float(np.mean(scores)),
          'entropy_bits': float(-(p * np.log2(p)).sum())}


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  import numpy as np

  from paradigms.autoregressive import token_nll
  from train.data import ByteTokenizer

  specs = {'ar': (args.ar_workdir, f'configs/ar_code.py:{args.preset}'),
           'mdlm': (args.mdlm_workdir, f'configs/mdlm_code.py:{args.preset}'),
           'bd3': (args.bd3_workdir, f'configs/bd3lm_code.py:{args.preset},{BD3_BLOCK}')}
  models, sources = {}, {}
  for name, (workdir, spec) in specs.items():
    config, model, params, sources[name] = load_model(workdir, spec, args.seed)
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
  judge = None
  if args.ar_workdir:
    _, ar_model, ar_params = models['ar']
    nll_fn = jax.jit(lambda params, seq: token_nll(ar_model, params, seq)[0])
    judge = lambda seq: jax.device_get(nll_fn(ar_params, seq))

  def quality_note(row, B):
    if B != quality_batch:
      return f'quality is measured at batch {quality_batch} only'
    if judge is None:
      return 'no --ar-workdir: no trained AR judge, so no quality figures'
    if not trained[row['model']]:
      return f'the {row["model"]} model is random-init (no --{row["model"]}-workdir)'
    return None

  plan = settings(args, bd3_block)
  out_rows = []
  for B in args.batches:
    runs, rows = [], []
    for row in plan:
      fn = make_run(row, models, prompt_ids, B, N)
      tic = time.perf_counter()
      out, start = jax.block_until_ready(fn(rng))
      compile_s = time.perf_counter() - tic  # compilation + one run
      note = quality_note(row, B)
      q = ({'bits_per_byte': None, 'parse_score': None, 'entropy_bits': None} if note else
           quality(np.asarray(jax.device_get(out.tokens))[:, start:start + N], prompt_ids, judge))
      label = f'{row["sampler"]} steps={row["steps"]} batch={B}'
      _log(f'{label}: first call (compile + run) {compile_s:.1f}s, NFE {int(out.nfe)}'
           + ('' if note else f', {q}'))
      runs.append(fn)
      rows.append(dict(row, batch=B, new_tokens=N, compile_s=compile_s, seconds=[], nfe_runs=[],
                       **q, quality_note=note))
    # keys made before the clock starts: the first eager fold_in compiles, which would be
    # charged to whichever setting happened to run first
    keys = jax.block_until_ready([jax.random.fold_in(rng, 100 + i) for i in range(args.repeats)])
    for i in range(args.repeats):
      order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
      for j in order:
        tic = time.perf_counter()
        out, _ = jax.block_until_ready(runs[j](keys[i]))
        rows[j]['seconds'].append(time.perf_counter() - tic)
        rows[j]['nfe_runs'].append(int(out.nfe))
      _log(f'batch {B}: timed round {i + 1}/{args.repeats} done')
    for r in rows:
      median = statistics.median(r['seconds'])
      nfe = statistics.median(r.pop('nfe_runs'))
      r.update(median_seconds=median, tokens_per_s=B * N / median,
               nfe=int(nfe) if nfe == int(nfe) else nfe)
      _log(f'{r["sampler"]:>20} steps={str(r["steps"]):>4} batch={B:>3}: '
           f'{r["tokens_per_s"]:10.1f} tok/s, NFE {r["nfe"]}')
    out_rows += rows

  if judge is None:
    quality_summary = 'null everywhere: pass --ar-workdir (the judge) and the diffusion workdirs'
  else:
    missing = [name for name in ('mdlm', 'bd3') if not trained[name]]
    quality_summary = (f'measured at batch {quality_batch} for rows of trained models'
                       + (f'; null for the random-init {", ".join(missing)} rows' if missing else ''))
  result = {
      'device': jax.devices()[0].device_kind,
      'config': {
          'sources': sources,
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
  main()
