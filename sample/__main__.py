"""CLI: python -m sample --workdir runs/ar_code --prompt 'def ' --num 4 --max-new-tokens 256
     python -m sample --hf DIR --prompt 'def ' --max-new-tokens 64 [--chat] [--json]

--hf takes a Hugging Face-format folder (Llama, Mistral, Qwen2/3: autoregressive; LLaDA, Dream:
masked diffusion with every strategy below) and its tokenizer.json. --json prints one JSON object
per sample ({"tokens": generated ids, prompt excluded, "text": their text, ...}). --prompt-ids
are used exactly as given; --prompt follows the tokenizer's own BOS rule; --chat wraps --prompt
in the folder's chat template as one user message.

Masked / block diffusion runs take --strategy, --steps, --block-size, --threshold, --factor,
--eb-gamma, --confidence, --rule, --dllm-cache, --refresh, --eta and --infill (a template with
{mask:N} holes); the text side lives in train/sample_text.py. Image diffusion runs take --sampler, --steps, --cfg,
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
import json
import os
import sys
import time

import numpy as np

from train.sample_text import (RULES, STRATEGIES, TEXT_SAMPLERS, batch_cli, sample_autoregressive,
                             sample_duo, sample_masked_diffusion, sample_sedd, text_entry)
from train.cli import ArgumentParser, UserError, run_main



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
  p.add_argument('--prompt', default='', help="text prompt, e.g. 'def '; glyph image runs: the "
                 'string to draw, e.g. AB7 (= --label AB7)')
  p.add_argument('--prompt-ids', default='', help='comma-separated token ids (token-array corpora)')
  p.add_argument('--num', type=int, default=4, help='number of samples (the batch); --batch: '
                 'rows per batch')
  p.add_argument('--embed', default='', help='a JSONL file of {"text": ...} lines to embed with '
                 'a text run into --out FILE.npy (train/embed_text.py)')
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
  d.add_argument('--strategy', default='', choices=('',) + STRATEGIES + ('tweedie', 'euler', 'greedy_tail'),
                 help="default: 'block' for BD3 runs (loss.block_size > 0), else 'ancestral'; SEDD "
                 "runs: 'tweedie' (default) or 'euler'; uniform-state (duo) runs: 'ancestral' (default) or "
                 "'greedy_tail'")
  d.add_argument('--steps', type=int, default=0, help='denoising steps (default: one per token; '
                 'per block for block/semi_ar)')
  d.add_argument('--block-size', type=int, default=0,
                 help='semi_ar block length / BD3 block size (default: the trained block size or 32)')
  d.add_argument('--threshold', type=float, default=0.9, help='Fast-dLLM confidence tau')
  d.add_argument('--factor', type=float, default=1.0, help="Fast-dLLM factor rule's f "
                 '(--strategy factor, --rule factor)')
  d.add_argument('--eb-gamma', type=float, default=0.1, help="EB-sampler's entropy bound in nats "
                 '(--strategy eb, --rule eb)')
  d.add_argument('--confidence', default='max', choices=('max', 'sampled'),
                 help="what parallel decoders rank by: max_v p(v) (the papers') or p(sampled)")
  d.add_argument('--rule', default='topk', choices=RULES,
                 help='semi_ar: the commit rule inside each block')
  d.add_argument('--dllm-cache', default='', choices=('', 'prefix', 'dual'),
                 help="semi_ar: Fast-dLLM's approximate KV cache (sample/dllm_cache.py)")
  d.add_argument('--refresh', type=int, default=0, help='--dllm-cache: recompute the cache every '
                 'R-th call of a block (0 = once per block; 1 = exact)')
  d.add_argument('--eta', type=float, default=0.5,
                 help='remdm: ReMDM remasking strength (default 0.5); duo: the corrector\'s '
                 'weight, applied only when given (off by default)')
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
  i.add_argument('--image', default='', help='transfusion runs: read the text in this image '
                 '(PNG/JPEG, fitted to the run\'s image size) instead of drawing')
  i.add_argument('--interleaved', default='', help='runs trained on interleaved sequences (raster '
                 'AR / Transfusion ,interleaved): the first string, e.g. A7; the model goes on '
                 'with images and text, deciding when an image starts')
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
            (args.factor > 0, f'--factor {args.factor}: give > 0'),
            (args.eb_gamma >= 0, f'--eb-gamma {args.eb_gamma}: give >= 0 (nats)'),
            (args.refresh >= 0, f'--refresh {args.refresh}: give >= 0 (0 = once per block)'),
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
  elif args.out is None and not args.embed:
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
         '--quantize', '--kv-int8', '--batch', '--bucket', '--out', '--embed'}
_GRID = {'--prompt', '--label', '--out', '--zoom', '--judge', '--cfg'}
FLAGS = {'autoregressive': _TEXT | {'--draft', '--gamma', '--draft-steps'},
         'masked_diffusion': _TEXT | {'--strategy', '--steps', '--block-size', '--threshold',
                                      '--factor', '--eb-gamma', '--confidence', '--rule',
                                      '--dllm-cache', '--refresh', '--eta', '--infill'},
         'sedd': _TEXT | {'--strategy', '--steps'},
         'duo': _TEXT | {'--strategy', '--steps', '--eta'},
         'image_diffusion': _GRID | {'--sampler', '--steps', '--cfg-interval'},
         'next_scale': _GRID | {'--temperature', '--top-k', '--top-p'},
         'hybrid': _GRID | {'--temperature', '--top-k', '--top-p', '--steps'},
         'raster_ar': _GRID | {'--temperature', '--top-k', '--top-p', '--interleaved'},
         'maskgit': _GRID | {'--temperature', '--top-k', '--top-p', '--steps'},
         'transfusion': _GRID | {'--sampler', '--steps', '--image', '--temperature', '--top-k',
                                 '--top-p', '--interleaved'},
         'vqvae': {'--out', '--zoom', '--judge', '--label'},
         'embedding': {'--embed', '--out'}}
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


# --- Images: diffusion, VAR, HART, and a tokenizer's reconstructions ----------------------------

def cli_labels(args, config) -> np.ndarray:
  """The labels int32 [num, S]: --label texts / class ids, else those of `num` held-out
  glyphs. Checks --judge first, so a run without a judge fails before any sampling."""
  from evaluators import images
  if args.judge and config.judge.name not in images.JUDGES:
    raise UserError(f'--judge: this run has no glyph judge (config.judge.name={config.judge.name!r}); '
             'drop --judge')
  if args.label and args.prompt:
    raise UserError('give the text to draw once: --prompt AB7 (or --label AB7, repeatable)')
  if args.label or args.prompt:
    return images.parse_labels(config, args.label or [args.prompt], args.num)
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
  few_step = getattr(model.cfg, 'step_conditioning', False)  # a shortcut DiT
  sampler = args.sampler or ('euler' if few_step else config.judge.sampler)
  steps = args.steps or (4 if few_step else config.judge.steps)
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


def transfusion_cli(args, config, model, params, rng) -> None:
  """A Transfusion run: draws like an image-diffusion run (--prompt/--label, --steps, --cfg, --out),
  or with --image IMG.png reads the image's text (OCR: the image block, then AR decoding of the
  string with the KV cache; --temperature 0 by default here means greedy)."""
  if model.cfg.max_images > 1 or args.interleaved:
    return interleaved_cli(args, config, model, params, rng)
  if not args.image:
    return image_cli(args, config, model, params, rng)
  import jax.numpy as jnp
  from PIL import Image, UnidentifiedImageError
  from pipelines.glyphs import decode_label
  from pipelines.images import fit_image
  from sample import transfusion as tfs
  d = config.data
  try:
    with Image.open(args.image) as im:
      x = fit_image(im, d.image_size, d.channels, d.get('image_width', 0))
  except (OSError, UnidentifiedImageError) as err:
    raise UserError(f'--image {args.image}: cannot read it as an image ({err})') from None
  x = jnp.asarray(x[None].astype(np.float32) / 127.5 - 1.0)  # [1, H, W, C] in [-1, 1]
  temperature = args.temperature if '--temperature' in args.given else 0.0
  out = tfs.image_to_text(model, params, x, rng, temperature=temperature, top_k=args.top_k,
                          top_p=args.top_p)
  text = decode_label(np.asarray(out.label[0]), d.alphabet)
  print(json.dumps({'image': args.image, 'text': text, 'nfe': int(out.nfe)}) if args.json else text)


def scale_cli(args, config, model, params, rng) -> None:
  """A VQ-token image run (VAR, HART, raster AR, MaskGIT): `--num 16 --out grid.png [--cfg --top-k
  --top-p --label --judge]`; HART's `--steps` are the head's solver steps (default 8), MaskGIT's
  its decoding steps (default 8); decodes through data.tokenizer."""
  from evaluators import images
  from train.checkpoint import load_tokenizer
  if getattr(model.cfg, 'max_images', 1) > 1 or args.interleaved:
    return interleaved_cli(args, config, model, params, rng)
  labels = cli_labels(args, config)
  tokenizer = load_tokenizer(config)
  t0 = time.perf_counter()
  opts = dict(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
  if config.paradigm == 'hybrid':
    opts['head_steps'] = args.steps or 8
  elif config.paradigm == 'maskgit':
    opts['steps'] = args.steps or 8
  x, nfe = images.generate(config, model, params, rng, num=args.num, labels=labels,
                           tokenizer=tokenizer, **opts)
  images.image_grid(x, zoom=args.zoom).save(args.out)
  rows = args.num * (2 if args.cfg != 1.0 else 1)
  print(f'wrote {args.out}: {args.num} samples, {nfe} network '
        f'evaluations of {rows} rows, {time.perf_counter() - t0:.2f}s including compilation',
        file=sys.stderr)
  if args.judge:
    cli_judge(config, x, labels, nfe)


def interleaved_cli(args, config, model, params, rng) -> None:
  """A run trained on interleaved sequences (raster AR or Transfusion, model.max_images >= 2):
  --interleaved A7 (or --prompt A7) starts --num sequences with BOS and that string; the model
  writes on, text and images, and decides when an image starts. Prints each sequence's text
  with <img> where an image stands; --out gets one row of M image slots per sequence."""
  import jax.numpy as jnp
  from evaluators import images
  from pipelines.glyphs import decode_label, prompt_label
  c, d = model.cfg, config.data
  if c.max_images < 2:
    raise UserError(f'--interleaved: this {config.paradigm} run draws single images (model.'
                    f'max_images=1); train a ,interleaved config, or use --prompt')
  try:
    ids = prompt_label(args.interleaved or args.prompt, d.alphabet, d.max_chars)
  except ValueError as err:
    raise UserError(f'--interleaved: {err}') from None
  t0 = time.perf_counter()
  opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  if config.paradigm == 'raster_ar':
    from sample import raster_ar as sar
    from train.checkpoint import load_tokenizer
    prompt = jnp.tile(sar.prompt_ids(c, ids), (args.num, 1))
    out = sar.interleaved(model, params, *load_tokenizer(config), prompt, rng, **opts)
    first_char = c.codebook_size  # characters are ids V + label
  else:
    from sample import transfusion as tfs
    prompt = jnp.tile(jnp.concatenate([jnp.array([c.bos]), jnp.asarray(ids)])[None],
                      (args.num, 1))
    out = tfs.interleaved(model, params, prompt, rng, steps=args.steps or config.judge.steps, **opts)
    first_char = 0
  for row in np.asarray(out.tokens):
    text = [decode_label([t - first_char], d.alphabet) if 0 < t - first_char < c.label_vocab
            else ' <img> ' if t == c.boi else '' for t in row]
    print(''.join(text).strip())
  x = np.asarray(out.images)  # [num, M, H, W, C]
  drawn = np.arange(c.max_images)[None] < np.asarray(out.n_images)[:, None]
  x = np.where(drawn[..., None, None, None], x, 1.0)  # empty slots stay white
  images.image_grid(x.reshape((-1,) + x.shape[2:]), cols=c.max_images, zoom=args.zoom).save(args.out)
  print(f'wrote {args.out}: {args.num} sequences x {c.max_images} image slots '
        f'({int(np.asarray(out.n_images).sum())} images drawn), '
        f'{time.perf_counter() - t0:.2f}s including compilation', file=sys.stderr)


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
SAMPLERS = {'autoregressive': text_entry(sample_autoregressive),
            'masked_diffusion': text_entry(sample_masked_diffusion),
            'sedd': text_entry(sample_sedd),
            'duo': text_entry(sample_duo),
            'image_diffusion': image_cli,
            'next_scale': scale_cli,
            'hybrid': scale_cli,
            'raster_ar': scale_cli,
            'maskgit': scale_cli,
            'transfusion': transfusion_cli,
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
    if config.paradigm in ('autoregressive', 'masked_diffusion', 'sedd', 'duo', 'embedding') and \
        config.data.source != 'tokens':
      args.tokenizer = load_text_tokenizer(config, args.workdir)
  if args.embed or config.paradigm == 'embedding':
    from train.embed_text import embed_cli
    if not args.embed:
      raise UserError('an embedding run embeds texts: --embed texts.jsonl --out embeddings.npy')
    return embed_cli(args, config, model, params)
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
    return batch_cli(args, config, model, params)
  SAMPLERS[config.paradigm](args, config, model, params, jax.random.key(args.seed))


if __name__ == '__main__':
  run_main(main)
