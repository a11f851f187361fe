"""Text samplers side by side: one settings list, one timing loop, one quality score.

Shared by `arena/speed.py` and `benchmarks/diffusion_samplers.py` (a thin CLI over these
functions). Every sampler writes the same N new tokens after the same prompt (byte level), at
temperature 1 with no top-k / top-p and no EOS:
  ar                    `sample.autoregressive.generate` with the KV cache (NFE = N);
  ancestral             MDLM / MD4 ancestral sampling, S steps, p cache on (NFE <= S);
  remdm                 ReMDM-cap (Wang et al. 2025), eta 0.5, S steps (NFE = S);
  confidence_topk       MaskGIT / LLaDA low-confidence remasking, min(S, N) steps;
  confidence_threshold  Fast-dLLM (Wu et al. 2025), tau 0.9: it picks its own step count (at
                        most N), so it runs once, not once per S;
  semi_autoregressive   LLaDA semi-AR, blocks of the largest divisor of N up to 32 (31 for
                        N = 124), top-k inside each block;
  block_diffusion       BD3-LM (Arriola et al. 2025) block by block with a KV cache;
  ar_int8               the AR model with int8 weights (per-output-channel scales) and an
                        int8 KV cache (`paradigms.nn.quant`): the same loop, a quarter of the
                        bytes read per step;
  confidence_factor     Fast-dLLM's factor rule (commit the largest n with (n + 1)(1 - c_(n))
                        < FACTOR), at most N steps (`sample.masked_diffusion.parallel_decode`);
  entropy_bounded       EB-sampler (Ben-Hamu et al. 2025): by increasing entropy, the largest
                        prefix with sum H - max H <= EB_GAMMA nats;
  semi_ar_dual_cache    semi_autoregressive with Fast-dLLM's dual KV cache, refreshed once per
                        block (`sample.dllm_cache`): the same blocks and steps, fewer positions
                        per call;
  sedd_tweedie          SEDD (uniform chain; Lou et al. 2024) Tweedie tau-leaping, S steps
                        plus the final Tweedie step to t = 0 (NFE = S + 1);
  sedd_euler            the same with Euler steps of the reverse rate;
  duo_ancestral         UDLM / DUO ancestral steps through the uniform-state posterior, S
                        steps plus noise removal (NFE = S + 1); both start from uniform noise
                        and may revise any token;
  duo_distilled         the same sampler on the DUO run distilled for few steps (model
                        `duo_dcd`, DUO's discrete consistency distillation), few-step rows only;
  speculative           the AR model as the target of speculative sampling
                        (`sample.speculative`), drafted by a smaller AR model (`ar_draft`) or by
                        a small BD3 model (`bd3_draft`, one denoising call per block), gamma in
                        SPEC_GAMMAS; exact samples of the AR model, so only speed differs.
S is the total denoising-step budget of a sequence, so every diffusion row at one S spends about
S network calls: the block samplers get steps_per_block = clip(S // n_blocks, 1, block length).
A setting that repeats an earlier one after this clipping is skipped. BD3 prompts are
left-padded with EOS to whole blocks (as `python -m sample` does); N must be a multiple of the
BD3 block size.

Timing (`measure`): at one batch size every setting is first called once untimed (compilation
plus one run, `compile_s`), then all are timed in `repeats` interleaved rounds (the order flips
each round, so machine noise falls on all of them). tokens/s = batch * N / median seconds.

Quality (`quality`) of the samples of the untimed call, new tokens [B, N]:
  bits_per_byte   -log2 p_judge(new tokens | prompt) under an AR judge, teacher-forced (one
                  forward pass over prompt + sample), summed over the batch / (B * N); byte
                  level, so one token is one byte (a sampled EOS counts as one token too);
  parse_score     mean of `evaluators.code_quality.parse_prefix_score(prompt + sample)`, the sample
                  cut at its first EOS (where `python -m sample` would stop);
  entropy_bits    unigram entropy in bits of the generated ids pooled over the batch. Low values
                  expose samplers that look likely to the judge by repeating themselves.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Callable, Sequence

SAMPLERS = ('ar', 'ar_int8', 'ancestral', 'remdm', 'confidence_topk', 'confidence_threshold',
            'confidence_factor', 'entropy_bounded', 'semi_autoregressive', 'semi_ar_dual_cache',
            'block_diffusion', 'sedd_tweedie', 'sedd_euler', 'duo_ancestral', 'duo_distilled',
            'speculative')
AR_SAMPLERS = ('ar', 'ar_int8', 'speculative')  # the AR side of the race; the rest is diffusion
SPEC_GAMMAS = (2, 4)  # draft lengths of the speculative rows
SEMI_AR_BLOCK = 32  # LLaDA semi-AR block length bound (the largest divisor of N up to it)
TAU = 0.9  # Fast-dLLM confidence threshold
ETA = 0.5  # ReMDM remasking strength
FACTOR = 1.0  # Fast-dLLM factor rule's f
EB_GAMMA = 0.1  # EB-sampler's entropy bound (nats)


def log_stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def semi_ar_block(new_tokens: int) -> int:
  """The semi-AR block length for N new tokens: the largest divisor of N up to SEMI_AR_BLOCK
  (whole blocks, which the dual cache needs; 31 for N = 124)."""
  return max(b for b in range(1, min(SEMI_AR_BLOCK, new_tokens) + 1) if new_tokens % b == 0)


def settings(new_tokens: int, steps: Sequence[int], bd3_block: int, *,
             samplers: Sequence[str] = SAMPLERS, final_argmax: bool = True,
             few_steps: Sequence[int] = (),
             log: Callable[[str], None] = log_stderr) -> list[dict]:
  """Every (sampler, settings) row to run, duplicates after clipping removed.

  Rows are {'sampler', 'model' ('ar' | 'mdlm' | 'bd3' | 'sedd' | 'duo' | 'duo_dcd'), 'steps'
  (S or None), 'settings' (the sampler's keyword arguments)}. `few_steps` adds step counts for
  MDLM's ancestral sampler and the uniform-state samplers only (their few-step race; the
  distilled DUO runs only there). final_argmax=False makes the ancestral-type samplers
  (ancestral, remdm, block_diffusion) fill their last step by sampling too (the exact reverse
  process at temperature 1) instead of MDLM's final argmax; it is then recorded in the row's
  settings.
  """
  unknown = set(samplers) - set(SAMPLERS)
  if unknown:
    raise ValueError(f'unknown samplers {sorted(unknown)}; choose from {SAMPLERS}')
  if new_tokens % bd3_block and 'block_diffusion' in samplers:
    raise ValueError(f'new_tokens={new_tokens} must be a multiple of the BD3 block size '
                     f'{bd3_block} so every sampler writes the same number of tokens')
  N, rows, seen = new_tokens, [], set()
  exact = {} if final_argmax else {'final_argmax': False}

  def add(sampler, model, S, **kw):
    if sampler not in samplers:
      return
    key = (sampler, tuple(sorted(kw.items())))
    if key in seen:
      log(f'{sampler} steps={S}: same settings {kw} as an earlier row, skipped')
      return
    seen.add(key)
    rows.append(dict(sampler=sampler, model=model, steps=S, settings=kw))

  add('ar', 'ar', None)
  add('ar_int8', 'ar', None, quantize='int8', kv_int8=True)
  for drafter in ('ar_draft', 'bd3_draft'):
    for g in SPEC_GAMMAS:
      add('speculative', 'ar', None, drafter=drafter, gamma=g)
  semi_block = semi_ar_block(N)
  semi_blocks = N // semi_block
  bd3_blocks = N // bd3_block
  for S in few_steps:
    add('ancestral', 'mdlm', S, steps=S, **exact)
    add('sedd_tweedie', 'sedd', S, steps=S)
    add('sedd_euler', 'sedd', S, steps=S)
    add('duo_ancestral', 'duo', S, steps=S)
    add('duo_distilled', 'duo_dcd', S, steps=S)
  for S in steps:
    add('ancestral', 'mdlm', S, steps=S, **exact)
    add('remdm', 'mdlm', S, steps=S, eta=ETA, **exact)
    add('confidence_topk', 'mdlm', S, steps=min(S, N))
  add('confidence_threshold', 'mdlm', None, tau=TAU)
  add('confidence_factor', 'mdlm', None, strategy='factor', factor=FACTOR)
  add('entropy_bounded', 'mdlm', None, strategy='eb', gamma=EB_GAMMA)
  for sampler in ('semi_autoregressive', 'semi_ar_dual_cache'):
    for S in steps:
      add(sampler, 'mdlm', S, block_len=semi_block,
          steps_per_block=min(max(S // semi_blocks, 1), semi_block))
  for S in steps:
    add('sedd_tweedie', 'sedd', S, steps=S)
    add('sedd_euler', 'sedd', S, steps=S)
    add('duo_ancestral', 'duo', S, steps=S)
  for S in steps:
    add('block_diffusion', 'bd3', S, block_size=bd3_block,
        steps_per_block=min(max(S // bd3_blocks, 1), bd3_block), **exact)
  return rows


def label(row: dict) -> str:
  """A short human name of a settings row, e.g. 'ancestral S=16' or 'block_diffusion 4/block'."""
  kw = row['settings']
  if row['sampler'] == 'block_diffusion':
    return f'block_diffusion B={kw["block_size"]} {kw["steps_per_block"]}/block'
  if row['sampler'] == 'confidence_threshold':
    return f'confidence_threshold tau={kw["tau"]}'
  if row['sampler'] == 'confidence_factor':
    return f'confidence_factor f={kw["factor"]}'
  if row['sampler'] == 'entropy_bounded':
    return f'entropy_bounded gamma={kw["gamma"]}'
  if row['sampler'] == 'ar':
    return 'ar (KV cache)'
  if row['sampler'] == 'ar_int8':
    return 'ar int8 (weights + KV cache)'
  if row['sampler'] == 'speculative':
    return f'speculative {kw["drafter"]} gamma={kw["gamma"]}'
  return f'{row["sampler"]} S={row["steps"]}'


def make_run(row: dict, models: dict, prompt_ids, B: int, N: int):
  """fn(rng) -> (output, first new-token column) for one row at batch B.

  models: {'ar' | 'mdlm' | 'bd3' | 'ar_draft' | 'bd3_draft': (config, model, params)};
  prompt_ids: [P] int."""
  import jax.numpy as jnp
  import numpy as np
  from paradigms import autoregressive as ar
  from paradigms import masked_diffusion as md
  from sample import masked_diffusion as mds
  from sample.autoregressive import generate
  from pipelines.text import ByteTokenizer
  config, model, params = models[row['model']]
  P, kw = len(prompt_ids), dict(row['settings'])
  prompt = jnp.asarray(np.broadcast_to(prompt_ids, (B, P)), jnp.int32)  # [B, P]
  if row['sampler'] in ('ar', 'ar_int8'):
    if row['sampler'] == 'ar_int8':
      from paradigms.nn.quant import quantize_params
      params = quantize_params(params, kw['quantize'])
    fn = ar.LogitsFn(model)
    cache = model.init_cache(B, P + N, kv_int8=kw.get('kv_int8', False))
    return lambda rng: (generate(fn, params, prompt, rng, cache, max_new_tokens=N), P)
  if row['sampler'] == 'speculative':
    from sample import speculative as sp
    dconfig, dmodel, dparams = models[kw['drafter']]
    if kw['drafter'] == 'bd3_draft':
      drafter = sp.BlockDrafter(md.LogitsFn(dmodel, dconfig.loss.mask_id), dconfig.loss.mask_id,
                                dconfig.loss.block_size, 1)
    else:
      drafter = sp.ARDrafter(ar.LogitsFn(dmodel))
    size = P + N + kw['gamma'] + 1
    caches = model.init_cache(B, size), dmodel.init_cache(B, size)
    return lambda rng: (sp.speculative_generate(
        ar.LogitsFn(model), params, drafter, dparams, prompt, rng, *caches, gamma=kw['gamma'],
        max_new_tokens=N), P)
  if row['sampler'] in ('sedd_tweedie', 'sedd_euler', 'duo_ancestral', 'duo_distilled'):
    return uniform_run(row['sampler'], config, model, params, prompt, N, kw['steps'])
  mask_id = config.loss.mask_id
  fn = md.LogitsFn(model, mask_id, config.loss.time_conditioning)
  if row['sampler'] == 'block_diffusion':
    Bk = kw.pop('block_size')
    pad = (-P) % Bk  # whole blocks: left-pad with document breaks, as `python -m sample` does
    padded = jnp.concatenate([jnp.full((B, pad), ByteTokenizer.EOS, jnp.int32), prompt], axis=1)
    cache = model.init_cache(B, P + pad + N)
    return lambda rng: (mds.block_diffusion(
        fn, params, padded, rng, cache, mask_id=mask_id, block_size=Bk, num_blocks=N // Bk,
        schedule=config.loss.schedule, **kw), P + pad)
  if row['sampler'] == 'semi_ar_dual_cache':
    from sample.dllm_cache import cached_semi_autoregressive
    cache = model.init_cache(B, P + N + kw['block_len'])
    return lambda rng: (cached_semi_autoregressive(
        fn, params, prompt, rng, cache, mask_id=mask_id, gen_len=N, strategy='topk',
        cache_mode='dual', **kw), P)
  x = jnp.concatenate([prompt, jnp.full((B, N), mask_id, jnp.int32)], axis=1)  # [B, P + N]
  sampler = getattr(mds, row['sampler'] if row['sampler'] not in (
      'confidence_factor', 'entropy_bounded') else 'parallel_decode')
  if row['sampler'] in ('ancestral', 'remdm'):
    kw['schedule'] = config.loss.schedule
  elif row['sampler'] == 'semi_autoregressive':
    kw['strategy'] = 'topk'
  return lambda rng: (sampler(fn, params, x, rng, mask_id=mask_id, **kw), P)


def uniform_run(sampler: str, config, model, params, prompt, N: int, steps: int):
  """fn(rng) -> (output, P) of a uniform-state sampler: SEDD Tweedie or Euler, DUO ancestral
  (also on the distilled DUO run)."""
  P = prompt.shape[1]
  if sampler.startswith('sedd_'):
    from paradigms.sedd import Options
    from sample import sedd as ss
    fn = ss.LogScoreFn(model, Options(**config.loss))
    method = sampler.removeprefix('sedd_')
    return lambda rng: (ss.sample(fn, params, prompt, rng, length=P + N, steps=steps,
                                  method=method), P)
  from paradigms.duo import Options
  from sample import duo as sd
  fn = sd.XThetaFn(model, Options(**config.loss))
  return lambda rng: (sd.sample(fn, params, prompt, rng, length=P + N, steps=steps), P)


def judge_nll(model, params) -> Callable:
  """An AR judge as a host function: tokens [B, T] -> nats [B, T - 1] of tokens 1..T-1."""
  import jax
  from paradigms.autoregressive import token_nll
  nll_fn = jax.jit(lambda params, seq: token_nll(model, params, seq)[0])
  return lambda seq: jax.device_get(nll_fn(params, seq))


def quality(new, prompt_ids, judge: Callable) -> dict:
  """Judge bits/byte, parser score and unigram entropy (module doc) of samples new [B, N]
  written after prompt_ids [P]; judge: tokens [B, P + N] -> nats [B, P + N - 1]."""
  import numpy as np
  from evaluators.code_quality import parse_prefix_score
  from pipelines.text import ByteTokenizer
  new = np.asarray(new)
  B, N = new.shape
  P = len(prompt_ids)
  seq = np.concatenate([np.broadcast_to(prompt_ids, (B, P)), new], axis=1).astype(np.int32)
  nll = np.asarray(judge(seq), np.float64)  # [B, P + N - 1] nats of tokens 1..P+N-1
  bits = nll[:, P - 1:].sum() / math.log(2.0)
  tok = ByteTokenizer()
  prompt_text = tok.decode(prompt_ids)
  scores = []
  for row in new:
    eos = np.flatnonzero(row == ByteTokenizer.EOS)
    scores.append(parse_prefix_score(prompt_text + tok.decode(row[:eos[0] if eos.size else N])))
  counts = np.bincount(new.ravel())
  p = counts[counts > 0] / new.size
  return {'bits_per_byte': float(bits / new.size), 'parse_score': float(np.mean(scores)),
          'entropy_bits': float(abs((p * np.log2(p)).sum()))}  # abs: no -0.0


NO_QUALITY = {'bits_per_byte': None, 'parse_score': None, 'entropy_bits': None}


def measure(plan: Sequence[dict], models: dict, prompt_ids, *, batch: int, new_tokens: int, rng,
            repeats: int, judge: Callable | None = None,
            skip: Callable[[dict], str | None] | None = None,
            log: Callable[[str], None] = log_stderr) -> list[dict]:
  """Times every row of `plan` at one batch size (module doc) and scores its samples.

  Quality is measured on the samples of the untimed first call when `judge` is given, except
  for rows where skip(row) returns a reason (kept as `quality_note`). Returns one dict per
  row: the row plus batch, new_tokens, compile_s, seconds (every timed run), median_seconds,
  tokens_per_s, nfe and the quality keys (None where not measured)."""
  import jax
  import numpy as np
  B, N = batch, new_tokens
  runs, rows = [], []
  for row in plan:
    fn = make_run(row, models, prompt_ids, B, N)
    tic = time.perf_counter()
    out, start = jax.block_until_ready(fn(rng))
    compile_s = time.perf_counter() - tic  # compilation + one run
    note = (skip(row) if skip else None) or (None if judge else 'no AR judge given')
    q = NO_QUALITY if note else quality(
        np.asarray(jax.device_get(out.tokens))[:, start:start + N], prompt_ids, judge)
    log(f'{label(row)} batch={B}: first call (compile + run) {compile_s:.1f}s, NFE {int(out.nfe)}'
        + ('' if note else f', {q}'))
    runs.append(fn)
    rows.append(dict(row, batch=B, new_tokens=N, compile_s=compile_s, seconds=[], nfe_runs=[],
                     **q, quality_note=note))
  # keys made before the clock starts: the first eager fold_in compiles, which would be
  # charged to whichever setting happened to run first
  keys = jax.block_until_ready([jax.random.fold_in(rng, 100 + i) for i in range(repeats)])
  for i in range(repeats):
    order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
    for j in order:
      tic = time.perf_counter()
      out, _ = jax.block_until_ready(runs[j](keys[i]))
      rows[j]['seconds'].append(time.perf_counter() - tic)
      rows[j]['nfe_runs'].append(int(out.nfe))
    log(f'batch {B}: timed round {i + 1}/{repeats} done')
  for r in rows:
    median = statistics.median(r['seconds'])
    nfe = statistics.median(r.pop('nfe_runs'))
    r.update(median_seconds=median, tokens_per_s=B * N / median,
             nfe=int(nfe) if nfe == int(nfe) else nfe)
    log(f'{label(r):>40} batch={B:>3}: {r["tokens_per_s"]:10.1f} tok/s, NFE {r["nfe"]}')
  return rows


def held_out_continuations(tokens, prompt_ids, *, length: int, count: int, seed: int):
  """Real text to score beside the samples: `count` windows of `length` tokens that follow an
  occurrence of prompt_ids [P] in `tokens` [T] (the held-out split) with no EOS inside,
  chosen at random without replacement (deterministic given `seed`), in corpus order.
  Returns int32 [count, length]."""
  import numpy as np
  from pipelines.text import ByteTokenizer
  tokens = np.asarray(tokens)
  P = len(prompt_ids)
  if len(tokens) < P + length:
    raise ValueError(f'{len(tokens)} tokens cannot hold a prompt of {P} and {length} more')
  view = np.lib.stride_tricks.sliding_window_view(tokens[:len(tokens) - length], P)
  starts = np.flatnonzero((view == np.asarray(prompt_ids)).all(axis=1)) + P  # [M] first new token
  eos = np.concatenate([[0], np.cumsum(tokens == ByteTokenizer.EOS)])  # eos[i] = #EOS in [0, i)
  starts = starts[eos[starts + length] == eos[starts]]
  if len(starts) < count:
    raise ValueError(f'only {len(starts)} held-out windows of {length} tokens follow the prompt '
                     f'{prompt_ids.tolist()} without an EOS; lower count or length')
  chosen = np.sort(np.random.default_rng(seed).choice(starts, count, replace=False))
  return np.stack([tokens[s:s + length] for s in chosen]).astype(np.int32)
