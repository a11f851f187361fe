"""`python -m sample` for token paradigms (autoregressive, masked and block diffusion): prompts,
the per-batch samplers behind a single prompt and --batch, and the printed or JSON output.

It lives in train/ (layer 4), not sample/: it reads `args`, the parsed command line, and loads
drafter runs (train.checkpoint, train.hf), which sample/ may not import; the samplers it calls
are the jitted functions of sample/*.py.

One batch of a token paradigm: TEXT_SAMPLERS[paradigm](args, config, model, params, prompt [B, P],
rng, tok, pad=None) -> (output with .tokens [B, T] and .nfe, P = the slot where new tokens start).
Masked-diffusion strategies (--strategy; a --batch line's "sampler"): STRATEGIES below; 'semi_ar'
commits inside each block by --rule (topk | threshold | factor | eb) and may run on Fast-dLLM's
approximate KV cache (--dllm-cache prefix|dual, --refresh R: sample/dllm_cache.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from train.cli import UserError

STRATEGIES = ('ancestral', 'remdm', 'topk', 'threshold', 'factor', 'eb', 'semi_ar', 'block')
RULES = ('topk', 'threshold', 'factor', 'eb')  # commit rules of sample/parallel_decoding.py


def encode_prompt(args, config, tok, text: str = '', ids=()) -> list:
  """A prompt's token ids: `ids` exactly as given, else `text` by the tokenizer's own BOS rule
  (--chat: as a user message in its chat template); empty: a new document (BOS, else EOS)."""
  if ids:
    ids = list(ids)
  elif tok is None or config.data.source not in ('cpython', 'text'):
    raise UserError('this model has no text tokenizer (a token-array run, or a folder without '
                    'tokenizer.json); give the prompt as token ids: --prompt-ids 1,2,3 '
                    '(--batch lines: "prompt_ids": [1, 2, 3])')
  elif args.chat:
    ids = tok.encode(tok.apply_chat_template([{'role': 'user', 'content': text}])).tolist()
  else:
    ids = tok.encode_prompt(text)  # the tokenizer's own BOS rule; bytes: the raw bytes
  if not ids:  # an empty prompt starts a new document
    ids = [tok.bos_id if tok.bos_id is not None else tok.eos_id]
  bad = [i for i in ids if not 0 <= i < config.model.vocab_size]
  if bad:
    raise UserError(f'prompt ids {bad} are outside the vocabulary [0, {config.model.vocab_size})')
  return ids


def sample_autoregressive(args, config, model, params, prompt, rng, tok, pad=None):
  """prompt [B, P] (left-padded by pad [B] slots per row, or None) -> (GenerateOutput, P)."""
  import jax.numpy as jnp
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  total = prompt.shape[1] + args.max_new_tokens
  if args.draft:
    return speculative(args, model, params, prompt, rng, tok, pad), prompt.shape[1]
  out = generate(LogitsFn(model), params, prompt, rng,
                 model.init_cache(len(prompt), total, kv_int8=args.kv_int8),
                 max_new_tokens=args.max_new_tokens, temperature=args.temperature or 1.0,
                 greedy=args.temperature == 0, top_k=args.top_k, top_p=args.top_p,
                 eos_id=None if tok is None else tok.eos_id,
                 pad=None if pad is None else jnp.asarray(pad, jnp.int32))
  return out, prompt.shape[1]


def speculative(args, model, params, prompt, rng, tok, pad):
  """--draft DIR --gamma G: speculative sampling of the target (sample/speculative.py)."""
  import jax.numpy as jnp
  import numpy as np
  from paradigms import masked_diffusion as mdp
  from paradigms.autoregressive import LogitsFn
  from sample import speculative as sp
  if args.gamma < 1 or args.draft_steps < 1:
    raise UserError(f'--gamma {args.gamma} / --draft-steps {args.draft_steps}: give >= 1')
  if pad is not None and np.any(np.asarray(pad)):
    raise UserError('--draft runs prompts of one length per batch; use --bucket 1 with --batch')
  if args.draft.startswith('hf:'):
    from train.hf import load_hf_run
    dmodel, dparams, _, dconfig = load_hf_run(args.draft[3:], dtype=args.dtype)
  else:
    from train.checkpoint import load_run
    dconfig, dmodel, dparams = load_run(args.draft)
  if dconfig.paradigm == 'masked_diffusion' and 0 < dconfig.loss.get('block_size', 0):
    mask_id = dconfig.loss.mask_id
    drafter = sp.BlockDrafter(mdp.LogitsFn(dmodel, mask_id), mask_id, dconfig.loss.block_size,
                              args.draft_steps)
  elif dconfig.paradigm == 'autoregressive':
    drafter = sp.ARDrafter(LogitsFn(dmodel))
  else:
    raise UserError(f'--draft {args.draft}: a {dconfig.paradigm!r} run cannot draft; give an AR '
                    'run or a BD3 run (masked diffusion trained with loss.block_size)')
  if args.quantize:
    from paradigms.nn.quant import quantize_params
    dparams = quantize_params(dparams)
  B, total = len(prompt), prompt.shape[1] + args.max_new_tokens + args.gamma + 1
  return sp.speculative_generate(
      LogitsFn(model), params, drafter, dparams, jnp.asarray(prompt), rng,
      model.init_cache(B, total, kv_int8=args.kv_int8), dmodel.init_cache(B, total),
      gamma=args.gamma, max_new_tokens=args.max_new_tokens,
      temperature=args.temperature or 1.0, greedy=args.temperature == 0, top_k=args.top_k,
      top_p=args.top_p, eos_id=None if tok is None else tok.eos_id)


def infill_ids(template: str, tok, mask_id: int):
  """'a{mask:3}b' -> ids of 'a', three mask ids, ids of 'b'."""
  import re
  ids, parts = [], re.split(r'\{mask:(\d+)\}', template)
  for i, part in enumerate(parts):
    ids += [mask_id] * int(part) if i % 2 else tok.encode(os.fsencode(part)).tolist()
  return ids


def default_strategy(config) -> str:
  """'block' for a BD3 run (0 < loss.block_size < data.seq_len), else 'ancestral'."""
  return 'block' if 0 < config.loss.block_size < config.data.seq_len else 'ancestral'


def sample_masked_diffusion(args, config, model, params, prompt, rng, tok, pad=None):
  """prompt [B, P] -> (DiffusionOutput, the slot where generation starts). Left padding (pad
  [B], --batch) is already in `prompt` as EOS (document breaks), which the network sees."""
  del pad  # approximate: no masking of pad slots in a bidirectional model (sample/batch.py)
  import jax.numpy as jnp
  from paradigms.masked_diffusion import LogitsFn
  from sample import masked_diffusion as mds
  mask_id, num = config.loss.mask_id, len(prompt)
  fn = LogitsFn(model, mask_id, config.loss.time_conditioning)
  strategy = args.strategy or default_strategy(config)
  common = dict(mask_id=mask_id, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p)  # temperature 0: greedy proposals
  if strategy == 'block':
    B = args.block_size or config.loss.block_size or 4
    extra = (-prompt.shape[1]) % B  # the prompt must fill whole blocks: pad with document breaks
    fill = tok.eos_id if tok is not None else 0
    prompt = np.concatenate([np.full((num, extra), fill, np.int32), prompt], 1)
    n_blocks = -(-args.max_new_tokens // B)
    total = prompt.shape[1] + n_blocks * B
    cache = model.init_cache(num, total, kv_int8=args.kv_int8)
    return mds.block_diffusion(fn, params, jnp.asarray(prompt), rng, cache,
                               block_size=B, num_blocks=n_blocks, steps_per_block=args.steps or B,
                               schedule=config.loss.schedule, **common), prompt.shape[1]
  if args.infill:
    if tok is None:
      raise UserError('--infill needs a text tokenizer; this model has none')
    x = np.asarray([infill_ids(args.infill, tok, mask_id)] * num, np.int32)
  else:
    x = np.concatenate([prompt, np.full((num, args.max_new_tokens), mask_id, np.int32)], 1)
  P = 0 if args.infill else prompt.shape[1]
  x, n_masked = jnp.asarray(x), int((x[0] == mask_id).sum())
  steps = args.steps or max(n_masked, 1)
  if strategy == 'ancestral':
    out = mds.ancestral(fn, params, x, rng, steps=steps, schedule=config.loss.schedule, **common)
  elif strategy == 'remdm':
    out = mds.remdm(fn, params, x, rng, steps=steps, eta=args.eta, schedule=config.loss.schedule,
                    **common)
  elif strategy == 'topk':
    out = mds.confidence_topk(fn, params, x, rng, steps=min(steps, max(n_masked, 1)),
                              confidence=args.confidence, **common)
  elif strategy == 'threshold':
    out = mds.confidence_threshold(fn, params, x, rng, tau=args.threshold,
                                   confidence=args.confidence, **common)
  elif strategy in ('factor', 'eb'):
    out = mds.parallel_decode(fn, params, x, rng, strategy=strategy, factor=args.factor,
                              gamma=args.eb_gamma, confidence=args.confidence, **common)
  else:
    block, L = args.block_size or 32, config.data.seq_len
    rule = dict(strategy=args.rule, steps_per_block=(args.steps or block) if args.rule == 'topk'
                else None, tau=args.threshold, factor=args.factor, gamma=args.eb_gamma)
    if args.dllm_cache:
      if args.infill:
        raise UserError('--dllm-cache decodes after a prompt; drop --infill or --dllm-cache')
      from sample.dllm_cache import cached_semi_autoregressive
      N, T = args.max_new_tokens, x.shape[1]
      cache = model.init_cache(num, T + (block if args.dllm_cache == 'dual' else N),
                               kv_int8=args.kv_int8)
      out = cached_semi_autoregressive(fn, params, x[:, :P], rng, cache, gen_len=N,
                                       block_len=block, cache_mode=args.dllm_cache,
                                       confidence=args.confidence,
                                       refresh=args.refresh, **rule, **common)
    else:
      out = mds.semi_autoregressive(fn, params, x, rng, block_len=block, confidence=args.confidence,
                                    window=L if x.shape[1] > L else None, **rule, **common)
  return out, P


def text_entry(sampler):
  """A token paradigm's entry point: build the prompt, sample, print the decoded texts.
  `args.tokenizer` is the run's text tokenizer (None: ids only)."""
  def run(args, config, model, params, rng):
    tok = args.tokenizer
    prompt = np.asarray([encode_prompt(args, config, tok, args.prompt, args.prompt_ids)] *
                        args.num, np.int32)  # [num, P]
    infill = bool(args.infill) and config.paradigm != 'autoregressive'
    length = len(infill_ids(args.infill, tok, 0)) if infill and tok is not None else \
        prompt.shape[1] + args.max_new_tokens
    if length > config.data.seq_len:
      print(f'warning: {length} tokens (prompt + --max-new-tokens) is past the '
            f'{config.data.seq_len}-token windows this model was trained on (data.seq_len); '
            'expect worse samples beyond them', file=sys.stderr)
    t0 = time.perf_counter()
    out, P = sampler(args, config, model, params, prompt, rng, tok)
    print_texts(args, out, P, tok, t0)
  return run


def batch_cli(args, config, model, params) -> None:
  """--batch FILE --out FILE: every line of FILE through the same per-batch sampler as a single
  prompt (TEXT_SAMPLERS), in fixed-shape left-padded batches of --num rows (sample/batch.py)."""
  from sample import batch
  tok, md = args.tokenizer, config.paradigm == 'masked_diffusion'
  sampler = TEXT_SAMPLERS[config.paradigm]

  def sample_fn(opts, prompt, pad, rng):
    name = opts.pop('sampler')
    a = argparse.Namespace(**{**vars(args), **opts, 'num': len(prompt),
                              'strategy': name if md else args.strategy})
    return sampler(a, config, model, params, prompt, rng, tok, pad=pad)

  defaults = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p,
                  sampler=(args.strategy or default_strategy(config)) if md else 'ar')
  eos = None if tok is None else tok.eos_id
  batch.run(args.batch, args.out, sample_fn=sample_fn, decode=decoder(tok),
            encode=lambda text, ids: encode_prompt(args, config, tok, text, ids),
            defaults=defaults, samplers=STRATEGIES if md else ('ar',),
            context=config.model.max_len, rows=args.num, bucket=args.bucket,
            fill=0 if eos is None else eos, seed=args.seed, seq_len=config.data.seq_len,
            fit_default='--max-new-tokens' not in args.given)


def decoder(tok):
  """ids -> text: the tokenizer's decode, else the ids joined by spaces."""
  return tok.decode if tok is not None else (lambda ids: ' '.join(map(str, ids)))


def print_texts(args, out, P: int, tok, t0):
  """Each sample's text (prompt included), or with --json one object per line:
  {"tokens": the ids from slot P up to the sample's length, "text": their text, "sample": i,
  "nfe"}."""
  import json
  import jax
  from sample.batch import new_tokens
  tokens = jax.device_get(out.tokens)
  dt = time.perf_counter() - t0
  decode = decoder(tok)
  for i, new in enumerate(new_tokens(out, P)):
    if args.json:
      print(json.dumps({'sample': i, 'tokens': new, 'text': decode(new),
                        'prompt_tokens': [int(x) for x in tokens[i, :P]], 'nfe': int(out.nfe)}))
    else:
      print(f'===== sample {i} ({len(new)} new tokens) =====\n'
            f'{decode([int(x) for x in tokens[i, :P]] + new)}')
  print(f'[{int(out.nfe)} network evaluations, {dt:.2f}s including compilation]', file=sys.stderr)


def sample_sedd(args, config, model, params, prompt, rng, tok, pad=None):
  """SEDD (uniform or absorbing): prompt [B, P] held fixed, --max-new-tokens drawn in --steps
  (default 64) Tweedie tau-leaping steps (--strategy euler for Euler steps) -> (SEDDOutput, P)."""
  del tok, pad
  import jax.numpy as jnp
  from paradigms.sedd import Options
  from sample import sedd as ss
  method = args.strategy or 'tweedie'
  if method not in ss.METHODS:
    raise UserError(f'--strategy {method!r}: a SEDD run samples with one of {ss.METHODS}')
  fn = ss.LogScoreFn(model, Options(**config.loss))
  length = prompt.shape[1] + args.max_new_tokens
  return ss.sample(fn, params, jnp.asarray(prompt), rng, length=length, steps=args.steps or 64,
                   method=method), prompt.shape[1]


def sample_duo(args, config, model, params, prompt, rng, tok, pad=None):
  """Uniform-state diffusion (UDLM / DUO): prompt [B, P] held fixed, --max-new-tokens drawn in
  --steps (default 64) ancestral steps; --strategy greedy_tail takes the last step's argmax;
  --eta > 0 mixes in the corrector (sample/duo.py; default 0 here)."""
  del tok, pad
  import jax.numpy as jnp
  from paradigms.duo import Options
  from sample import duo as sd
  if args.strategy not in ('', 'ancestral', 'greedy_tail'):
    raise UserError(f'--strategy {args.strategy!r}: a uniform-state run samples with ancestral '
                    '(default) or greedy_tail')
  fn = sd.XThetaFn(model, Options(**config.loss))
  length = prompt.shape[1] + args.max_new_tokens
  eta = args.eta if '--eta' in getattr(args, 'given', set()) else 0.0
  if not 0.0 <= eta <= 1.0:
    raise UserError(f'--eta {eta}: the corrector share of a uniform-state step is in [0, 1]')
  return sd.sample(fn, params, jnp.asarray(prompt), rng, length=length, steps=args.steps or 64,
                   greedy_tail=args.strategy == 'greedy_tail', eta=eta), prompt.shape[1]


# one batch of a token paradigm: (args, config, model, params, prompt, rng, tok, pad) -> (out, P)
TEXT_SAMPLERS = {'autoregressive': sample_autoregressive,
                 'masked_diffusion': sample_masked_diffusion,
                 'sedd': sample_sedd,
                 'duo': sample_duo}
