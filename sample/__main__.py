"""CLI: python -m sample --workdir runs/ar_code --prompt 'def ' --num 4 --max-new-tokens 256
     python -m sample --hf DIR --prompt 'def ' --max-new-tokens 64 [--chat] [--json]

--hf takes a Hugging Face-format folder (Llama, Mistral, Qwen2/3: autoregressive; LLaDA, Dream:
masked diffusion with every strategy below) and its tokenizer.json. --json prints one JSON object
per sample ({"tokens": generated ids, prompt excluded, "text": their text, ...}). --prompt-ids
are used exactly as given; --prompt follows the tokenizer's own BOS rule; --chat wraps --prompt
in the folder's chat template as one user message.

Masked / block diffusion runs take --strategy, --steps, --block-size, --threshold, --eta and
--infill (a template with {mask:N} holes). Image diffusion runs take --sampler, --steps, --cfg,
--label, --out (a PNG grid) and --judge (score the samples with the run's external judge).
Next-scale (VAR) runs take --cfg (VAR's ramped guidance), --top-k, --top-p, --temperature,
--label, --out and --judge; they decode with the tokenizer run named by data.tokenizer.
Tokenizer (VQ-VAE) runs write held-out images beside their reconstructions (--out, --zoom) and
--judge reads both.

Loads the saved config and the newest checkpoint of --workdir, then prints the samples (text)
or writes the grid (images).

Text runs also take --batch prompts.jsonl --out results.jsonl: every {"id": ..., "prompt": ...}
line in fixed-shape batches of --num rows, streamed and resumable (sample/batch.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from train.cli import ArgumentParser, UserError, run_main

# masked-diffusion strategies (--strategy; a --batch line's "sampler"); autoregressive runs: 'ar'
STRATEGIES = ('ancestral', 'remdm', 'topk', 'threshold', 'semi_ar', 'block')


def _parse(argv):
  p = ArgumentParser(prog='python -m sample', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--workdir', help='run directory written by python -m train')
  src.add_argument('--hf', help='a Hugging Face-format folder (config.json, *.safetensors, '
                   'tokenizer.json)')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='--hf: param and compute dtype')
  p.add_argument('--json', action='store_true', help='one JSON object per sample on stdout')
  p.add_argument('--chat', action='store_true', help="--prompt as a user message in the model's "
                 'chat template')
  p.add_argument('--prompt', default='', help="text prompt, e.g. 'def '")
  p.add_argument('--prompt-ids', default='', help='comma-separated token ids (token-array corpora)')
  p.add_argument('--num', type=int, default=4, help='number of samples (the batch); --batch: '
                 'rows per batch')
  p.add_argument('--batch', default='', help='a JSONL file of {"id": ..., "prompt": ...} lines to '
                 'sample (text runs; replaces --prompt): sample/batch.py')
  p.add_argument('--bucket', type=int, default=32, help='--batch: prompt lengths round up to a '
                 'multiple of this (one compiled shape per bucket)')
  p.add_argument('--out', default=None, help='--batch: the results JSONL (required; an existing '
                 'one is resumed); image runs: the PNG grid (default samples.png)')
  p.add_argument('--max-new-tokens', type=int, default=256)
  p.add_argument('--temperature', type=float, default=1.0, help='0 = greedy (argmax)')
  p.add_argument('--top-k', type=int, default=0, help='0 = off')
  p.add_argument('--top-p', type=float, default=1.0, help='1 = off')
  p.add_argument('--seed', type=int, default=0)
  q = p.add_argument_group('inference tools (docs/inference.md)')
  q.add_argument('--quantize', default=None, choices=['', 'int8'],
                 help="int8 weight-only kernels (default: the run's sample.quantize)")
  q.add_argument('--kv-int8', action='store_true', help='an int8 KV cache (per token and head)')
  q.add_argument('--draft', default='', help='speculative decoding: the drafter, a run directory '
                 '(AR, or BD3 = masked diffusion with loss.block_size) or hf:DIR')
  q.add_argument('--gamma', type=int, default=4, help='speculative decoding: draft tokens per round')
  q.add_argument('--draft-steps', type=int, default=1,
                 help='speculative decoding with a BD3 drafter: denoising calls per drafted block')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--no-ema', action='store_true', help='use raw params even if EMA was kept')
  d = p.add_argument_group('masked / block diffusion')
  d.add_argument('--strategy', default='', choices=('',) + STRATEGIES,
                 help="default: 'block' for BD3 runs (loss.block_size > 0), else 'ancestral'")
  d.add_argument('--steps', type=int, default=0, help='denoising steps (default: one per token; '
                 'per block for block/semi_ar)')
  d.add_argument('--block-size', type=int, default=0,
                 help='semi_ar block length / BD3 block size (default: the trained block size or 32)')
  d.add_argument('--threshold', type=float, default=0.9, help='Fast-dLLM confidence tau')
  d.add_argument('--eta', type=float, default=0.5, help='ReMDM remasking strength')
  d.add_argument('--infill', default='',
                 help="template with {mask:N} holes, e.g. 'def add(a, b):\n{mask:24}\n'; "
                      'its text stays fixed (replaces --prompt)')
  i = p.add_argument_group('image diffusion')
  i.add_argument('--sampler', default='', help='ddpm | ddim | euler | heun | dpmpp_2m (default: '
                 "the run's judge.sampler; shortcut runs: euler)")
  i.add_argument('--cfg', type=float, default=1.0, help='classifier-free guidance weight (1 = off)')
  i.add_argument('--cfg-interval', default='', help="guidance only for sigma in 'lo,hi'")
  i.add_argument('--label', action='append', default=[],
                 help='text (glyph runs) or class id to draw; repeat or give one for all; '
                      'default: random labels')
  i.add_argument('--zoom', type=int, default=1,
                 help='draw each pixel as a zoom x zoom block in the grid (3 suits 32x32 glyphs)')
  i.add_argument('--judge', action='store_true',
                 help="also print the run's judge metrics (FD, recognition accuracy) of the samples")
  args = p.parse_args(argv)
  checks = [(args.num >= 1, f'--num {args.num}: give at least 1 sample'),
            (args.max_new_tokens >= 1, f'--max-new-tokens {args.max_new_tokens}: give at least 1'),
            (args.temperature >= 0, f'--temperature {args.temperature}: give >= 0 (0 = greedy)'),
            (args.top_k >= 0, f'--top-k {args.top_k}: give >= 0 (0 = off)'),
            (0 < args.top_p <= 1, f'--top-p {args.top_p}: give a value in (0, 1] (1 = off)'),
            (args.steps >= 0, f'--steps {args.steps}: give >= 0 (0 = the default)'),
            (args.block_size >= 0, f'--block-size {args.block_size}: give >= 0 (0 = the default)'),
            (0 < args.threshold <= 1, f'--threshold {args.threshold}: give a value in (0, 1]'),
            (args.eta >= 0, f'--eta {args.eta}: give >= 0'),
            (args.zoom >= 1, f'--zoom {args.zoom}: give a positive integer (1 = one pixel per pixel)'),
            (args.step is None or args.step >= 0, f'--step {args.step}: give a saved step >= 0'),
            (args.bucket >= 1, f'--bucket {args.bucket}: give a positive prompt-length multiple')]
  for ok, msg in checks:
    if not ok:
      p.error(msg)
  if args.batch:
    given = [f for f, v in (('--prompt', args.prompt), ('--prompt-ids', args.prompt_ids),
                            ('--infill', args.infill)) if v]
    if given:
      p.error(f'--batch reads its prompts from the file; drop {", ".join(given)}')
    if not args.out or os.path.abspath(args.out) == os.path.abspath(args.batch):
      p.error('--batch needs --out results.jsonl, a file other than --batch (results stream '
              'there; rerunning resumes it)')
  elif args.out is None:
    args.out = 'samples.png'
  try:
    args.prompt_ids = [int(x) for x in args.prompt_ids.split(',') if x.strip()]
  except ValueError:
    p.error(f'--prompt-ids {args.prompt_ids!r}: give comma-separated integers, e.g. 1,2,3')
  if args.cfg_interval:
    try:
      lo, hi = (float(v) for v in args.cfg_interval.split(','))
    except ValueError:
      p.error(f"--cfg-interval {args.cfg_interval!r}: give 'lo,hi', two noise levels")
    args.cfg_interval = (lo, hi)
  args.given = {a.split('=', 1)[0] for a in (argv or []) if a.startswith('--')}
  return args


# the flags each kind of run reads, beyond --workdir, --num, --seed, --step, --no-ema
_TEXT = {'--prompt', '--prompt-ids', '--max-new-tokens', '--temperature', '--top-k', '--top-p',
         '--quantize', '--kv-int8', '--batch', '--bucket', '--out'}
_GRID = {'--label', '--out', '--zoom', '--judge', '--cfg'}
FLAGS = {'autoregressive': _TEXT | {'--draft', '--gamma', '--draft-steps'},
         'masked_diffusion': _TEXT | {'--strategy', '--steps', '--block-size', '--threshold',
                                      '--eta', '--infill'},
         'image_diffusion': _GRID | {'--sampler', '--steps', '--cfg-interval'},
         'next_scale': _GRID | {'--temperature', '--top-k', '--top-p'},
         'hybrid': _GRID | {'--temperature', '--top-k', '--top-p', '--steps'},
         'vqvae': {'--out', '--zoom', '--judge', '--label'}}
_BATCH = {'--batch', '--bucket', '--out'}  # text runs with --batch
_COMMON = {'--workdir', '--hf', '--dtype', '--json', '--chat', '--num', '--seed', '--step',
           '--no-ema', '--help'}


def _check_flags(args, paradigm: str) -> None:
  """Warn about flags given on the command line that this run's paradigm does not read."""
  reads = FLAGS.get(paradigm, set()) | (_BATCH if args.batch else set())
  unused = sorted(args.given - _COMMON - reads)
  if unused:
    print(f'warning: {", ".join(unused)} do{"es" if len(unused) == 1 else ""} not apply to a '
          f'{paradigm!r} run and {"is" if len(unused) == 1 else "are"} ignored; it reads '
          f'{", ".join(sorted(reads))}', file=sys.stderr)


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


def _sample_autoregressive(args, config, model, params, prompt, rng, tok, pad=None):
  """prompt [B, P] (left-padded by pad [B] slots per row, or None) -> (GenerateOutput, P)."""
  import jax.numpy as jnp
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  total = prompt.shape[1] + args.max_new_tokens
  if args.draft:
    return _speculative(args, model, params, prompt, rng, tok, pad), prompt.shape[1]
  out = generate(LogitsFn(model), params, prompt, rng,
                 model.init_cache(len(prompt), total, kv_int8=args.kv_int8),
                 max_new_tokens=args.max_new_tokens, temperature=args.temperature or 1.0,
                 greedy=args.temperature == 0, top_k=args.top_k, top_p=args.top_p,
                 eos_id=None if tok is None else tok.eos_id,
                 pad=None if pad is None else jnp.asarray(pad, jnp.int32))
  return out, prompt.shape[1]


def _speculative(args, model, params, prompt, rng, tok, pad):
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


def _infill_ids(template: str, tok, mask_id: int):
  """'a{mask:3}b' -> ids of 'a', three mask ids, ids of 'b'."""
  import re
  ids, parts = [], re.split(r'\{mask:(\d+)\}', template)
  for i, part in enumerate(parts):
    ids += [mask_id] * int(part) if i % 2 else tok.encode(os.fsencode(part)).tolist()
  return ids


def _default_strategy(config) -> str:
  """'block' for a BD3 run (0 < loss.block_size < data.seq_len), else 'ancestral'."""
  return 'block' if 0 < config.loss.block_size < config.data.seq_len else 'ancestral'


def _sample_masked_diffusion(args, config, model, params, prompt, rng, tok, pad=None):
  """prompt [B, P] -> (DiffusionOutput, the slot where generation starts). Left padding (pad
  [B], --batch) is already in `prompt` as EOS (document breaks), which the network sees."""
  del pad  # approximate: no masking of pad slots in a bidirectional model (sample/batch.py)
  import jax.numpy as jnp
  from paradigms.masked_diffusion import LogitsFn
  from sample import masked_diffusion as mds
  mask_id, num = config.loss.mask_id, len(prompt)
  fn = LogitsFn(model, mask_id, config.loss.time_conditioning)
  strategy = args.strategy or _default_strategy(config)
  common = dict(mask_id=mask_id, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p)  # temperature 0: greedy proposals
  if strategy == 'block':
    B = args.block_size or config.loss.block_size or 4
    extra = (-prompt.shape[1]) % B  # the prompt must fill whole blocks: pad with document breaks
    fill = tok.eos_id if tok is not None else 0
    prompt = np.concatenate([np.full((num, extra), fill, np.int32), prompt], 1)
    n_blocks = -(-args.max_new_tokens // B)
    total = prompt.shape[1] + n_blocks * B
    return mds.block_diffusion(fn, params, jnp.asarray(prompt), rng, model.init_cache(num, total),
                               block_size=B, num_blocks=n_blocks, steps_per_block=args.steps or B,
                               schedule=config.loss.schedule, **common), prompt.shape[1]
  if args.infill:
    if tok is None:
      raise UserError('--infill needs a text tokenizer; this model has none')
    x = np.asarray([_infill_ids(args.infill, tok, mask_id)] * num, np.int32)
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
    out = mds.confidence_topk(fn, params, x, rng, steps=min(steps, max(n_masked, 1)), **common)
  elif strategy == 'threshold':
    out = mds.confidence_threshold(fn, params, x, rng, tau=args.threshold, **common)
  else:
    block, L = args.block_size or 32, config.data.seq_len
    out = mds.semi_autoregressive(fn, params, x, rng, block_len=block, strategy='topk',
                                  steps_per_block=args.steps or block, tau=args.threshold,
                                  window=L if x.shape[1] > L else None, **common)
  return out, P


def _text(sampler):
  """A token paradigm's entry point: build the prompt, sample, print the decoded texts.
  `args.tokenizer` is the run's text tokenizer (None: ids only)."""
  def run(args, config, model, params, rng):
    tok = args.tokenizer
    prompt = np.asarray([encode_prompt(args, config, tok, args.prompt, args.prompt_ids)] *
                        args.num, np.int32)  # [num, P]
    infill = bool(args.infill) and config.paradigm != 'autoregressive'
    length = len(_infill_ids(args.infill, tok, 0)) if infill and tok is not None else \
        prompt.shape[1] + args.max_new_tokens
    if length > config.data.seq_len:
      print(f'warning: {length} tokens (prompt + --max-new-tokens) is past the '
            f'{config.data.seq_len}-token windows this model was trained on (data.seq_len); '
            'expect worse samples beyond them', file=sys.stderr)
    t0 = time.perf_counter()
    out, P = sampler(args, config, model, params, prompt, rng, tok)
    _print_texts(args, out, P, tok, t0)
  return run


def _batch_cli(args, config, model, params) -> None:
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
                  sampler=(args.strategy or _default_strategy(config)) if md else 'ar')
  eos = None if tok is None else tok.eos_id
  batch.run(args.batch, args.out, sample_fn=sample_fn, decode=_decoder(tok),
            encode=lambda text, ids: encode_prompt(args, config, tok, text, ids),
            defaults=defaults, samplers=STRATEGIES if md else ('ar',),
            context=config.model.max_len, rows=args.num, bucket=args.bucket,
            fill=0 if eos is None else eos, seed=args.seed, seq_len=config.data.seq_len,
            fit_default='--max-new-tokens' not in args.given)


# --- Images: diffusion, VAR, HART, and a tokenizer's reconstructions ----------------------------

def cli_labels(args, config) -> np.ndarray:
  """The labels int32 [num, S]: --label texts / class ids, else those of `num` held-out
  glyphs. Checks --judge first, so a run without a judge fails before any sampling."""
  from evaluators import images
  if args.judge and config.judge.name not in images.JUDGES:
    raise UserError(f'--judge: this run has no glyph judge (config.judge.name={config.judge.name!r}); '
             'drop --judge')
  if args.label:
    return images.parse_labels(config, args.label, args.num)
  return images.reference(config, args.num)['label']


def cli_judge(config, x, labels, nfe: int | None = None, reference_images=None) -> None:
  """--judge: the run's judge on the grid's own samples x [N, H, W, C] and the labels they were
  requested with [N, S]; FD against `reference_images` (default: N held-out images). Prints one
  line of metrics (and the NFE when given) and one of the rates by string length."""
  from evaluators import images
  if reference_images is None:
    reference_images = images.reference(config, len(x))['image']
  m = images.score_samples(images.load_judge(config, config.judge.train_steps), x, labels,
                           reference_images)
  by = m.pop('by_length')
  print(' '.join(f'{k}={v:.4f}' for k, v in m.items()) + ('' if nfe is None else f' nfe={nfe}'))
  print('by length (strings / characters read, count): ' + ', '.join(
      f'{n}: {v["accuracy"]:.3f} / {v["char_accuracy"]:.3f} ({v["count"]})'
      for n, v in by.items() if v['count']))


def image_cli(args, config, model, params, rng) -> None:
  """An image-diffusion run: `--num 16 --out grid.png [--sampler --steps --cfg --label --judge]`."""
  from evaluators import images
  from sample import image_diffusion as sd
  sampler = args.sampler or ('euler' if model.cfg.step_conditioning else config.judge.sampler)
  steps = args.steps or (4 if model.cfg.step_conditioning else config.judge.steps)
  interval = args.cfg_interval or None  # (lo, hi), parsed with the arguments
  if sampler not in sd.SAMPLERS:
    raise UserError(f'--sampler {sampler!r}: choose one of {sorted(sd.SAMPLERS)}')
  labels = cli_labels(args, config)
  t0 = time.perf_counter()
  x, nfe = images.generate(config, model, params, rng, num=args.num, sampler=sampler, steps=steps,
                           cfg=args.cfg, cfg_interval=interval, labels=labels)
  images.image_grid(x, zoom=args.zoom).save(args.out)
  print(f'wrote {args.out}: {args.num} samples, {sampler} x {steps} steps, {nfe} network '
        f'evaluations, {time.perf_counter() - t0:.2f}s including compilation', file=sys.stderr)
  if args.judge:
    cli_judge(config, x, labels, nfe)


def scale_cli(args, config, model, params, rng) -> None:
  """A VAR or HART run: `--num 16 --out grid.png [--cfg --top-k --top-p --label --judge]`, and
  for HART `--steps` (the head's solver steps, default 8); decodes through data.tokenizer."""
  from evaluators import images
  from train.checkpoint import load_tokenizer
  labels = cli_labels(args, config)
  tokenizer = load_tokenizer(config)
  t0 = time.perf_counter()
  opts = dict(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
  if config.paradigm == 'hybrid':
    opts['head_steps'] = args.steps or 8
  x, nfe = images.generate(config, model, params, rng, num=args.num, labels=labels,
                           tokenizer=tokenizer, **opts)
  images.image_grid(x, zoom=args.zoom).save(args.out)
  rows = args.num * (2 if args.cfg != 1.0 else 1)
  print(f'wrote {args.out}: {args.num} samples, {len(model.cfg.scales)} scales, {nfe} network '
        f'evaluations of {rows} rows, {time.perf_counter() - t0:.2f}s including compilation',
        file=sys.stderr)
  if args.judge:
    cli_judge(config, x, labels, nfe)


def tokenizer_cli(args, config, model, params, rng) -> None:
  """A tokenizer (VQ-VAE) run: N held-out images beside their reconstructions decode(f_hat)
  (VAR Algorithm 1 then 2), interleaved on the grid; --judge reads three sets of the same
  images, the real ones, decode(f) (no quantisation) and decode(f_hat), each against its own
  labels with the FD against the N real images (the generators' judge protocol). No VAR or
  HART sample is read more often than decode(f_hat): check this first."""
  del rng  # reconstruction is deterministic
  import jax
  from evaluators import images
  from paradigms import vqvae
  if args.label:
    raise UserError('--label: a tokenizer run reconstructs held-out images, it does not draw labels; '
             'drop --label')
  if args.judge and config.data.source != 'glyphs':
    raise UserError(f'--judge: the glyph judge reads glyph images; this tokenizer was trained on '
             f'data.source={config.data.source!r}; drop --judge')
  t0 = time.perf_counter()
  ref = images.reference(config, args.num)
  x, labels = ref['image'], ref['label']
  recon = jax.jit(vqvae.reconstruct, static_argnums=0)(model, params, x)
  x_f, x_fhat = (np.asarray(a) for a in jax.device_get(recon))
  pairs = np.stack([x, x_fhat], 1).reshape(2 * args.num, *x.shape[1:])
  cols = 2 * int(np.ceil(np.sqrt(args.num / 2)))
  images.image_grid(pairs, cols=cols, zoom=args.zoom).save(args.out)
  mse = float(np.mean((x_fhat - x) ** 2))
  print(f'wrote {args.out}: {args.num} held-out images, each beside decode(f_hat); mse '
        f'{mse:.5f} per pixel, {time.perf_counter() - t0:.2f}s including compilation',
        file=sys.stderr)
  if args.judge:
    for name, xs in (('real', x), ('decode(f)', x_f), ('decode(f_hat)', x_fhat)):
      print(f'{name}: ', end='')
      cli_judge(config, xs, labels, reference_images=x)


# paradigm name -> sampling entry point: the one place the CLI branches on the paradigm
# one batch of a token paradigm: (args, config, model, params, prompt, rng, tok, pad) -> (out, P)
TEXT_SAMPLERS = {'autoregressive': _sample_autoregressive,
                 'masked_diffusion': _sample_masked_diffusion}
SAMPLERS = {'autoregressive': _text(_sample_autoregressive),
            'masked_diffusion': _text(_sample_masked_diffusion),
            'image_diffusion': image_cli,
            'next_scale': scale_cli,
            'hybrid': scale_cli,
            'vqvae': tokenizer_cli}


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = _parse(argv)
  import jax
  if args.hf:
    from train.hf import load_hf_run
    if args.step is not None or args.no_ema:
      raise UserError('--step and --no-ema apply to --workdir runs, not to --hf folders')
    model, params, args.tokenizer, config = load_hf_run(args.hf, dtype=args.dtype)
  else:
    from train.checkpoint import load_run, load_text_tokenizer
    config, model, params = load_run(args.workdir, args.step, ema=False if args.no_ema else None)
    args.tokenizer = None
    if config.paradigm in ('autoregressive', 'masked_diffusion') and \
        config.data.source != 'tokens':
      args.tokenizer = load_text_tokenizer(config, args.workdir)
  if config.paradigm not in SAMPLERS:
    raise UserError(f'no sampler for paradigm {config.paradigm!r}; known: {sorted(SAMPLERS)}')
  if args.quantize is None:
    args.quantize = config.get('sample', {}).get('quantize', '')
  args.kv_int8 = args.kv_int8 or bool(config.get('sample', {}).get('kv_int8', False))
  if args.quantize:
    from paradigms.nn.quant import quantize_params
    params = quantize_params(params)
  if args.batch and config.paradigm not in TEXT_SAMPLERS:
    raise UserError(f'--batch samples text prompts; this is a {config.paradigm!r} run: drop '
                    '--batch (its samples go to --out grid.png)')
  _check_flags(args, config.paradigm)
  if args.batch:
    return _batch_cli(args, config, model, params)
  SAMPLERS[config.paradigm](args, config, model, params, jax.random.key(args.seed))


def _decoder(tok):
  """ids -> text: the tokenizer's decode, else the ids joined by spaces."""
  return tok.decode if tok is not None else (lambda ids: ' '.join(map(str, ids)))


def _print_texts(args, out, P: int, tok, t0):
  """Each sample's text (prompt included), or with --json one object per line:
  {"tokens": the ids from slot P up to the sample's length, "text": their text, "sample": i,
  "nfe"}."""
  import json
  import jax
  from sample.batch import new_tokens
  tokens = jax.device_get(out.tokens)
  dt = time.perf_counter() - t0
  decode = _decoder(tok)
  for i, new in enumerate(new_tokens(out, P)):
    if args.json:
      print(json.dumps({'sample': i, 'tokens': new, 'text': decode(new),
                        'prompt_tokens': [int(x) for x in tokens[i, :P]], 'nfe': int(out.nfe)}))
    else:
      print(f'===== sample {i} ({len(new)} new tokens) =====\n'
            f'{decode([int(x) for x in tokens[i, :P]] + new)}')
  print(f'[{int(out.nfe)} network evaluations, {dt:.2f}s including compilation]', file=sys.stderr)


if __name__ == '__main__':
  run_main(main)
