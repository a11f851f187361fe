"""Image generation from a trained image-diffusion run: notebooks, the CLI and the trainer's
sample-based evaluation all come through here.

    from train.checkpoint import load_run
    from sample import images
    config, model, params = load_run('runs/dit_glyphs')          # EMA params when kept
    x, nfe = images.generate(config, model, params, jax.random.key(0), num=16,
                             sampler='heun', steps=18, cfg=2.0, labels=['7A'])   # [16, H, W, C]
    images.image_grid(x)                                          # a PIL image (shows inline)

The noise grid follows the run's objective: EDM -> Karras rho = 7; flow -> uniform t (SD3)
from t = 80/81 (sigma 80);
eps / v / x0 -> DDIM's strided DDPM timesteps. Shortcut runs (step-conditioned flow models)
sample with Euler over `steps` uniform steps, conditioning on d = 1/steps (steps a power of 2).
Heun on a flow run takes its correction in flow time t (`heun_step(flow_space=True)`).
The glyph judge scores any image paradigm registered in GENERATORS (image diffusion here,
VAR next-scale prediction in sample/next_scale.py) through its `generate`.
"""
from __future__ import annotations

import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.image_diffusion import Denoiser, Options
from sample import image_diffusion as sd


def options(config) -> Options:
  return Options(**dict(config.loss))


def sigmas_for(config, steps: int):
  """The default noise grid [steps + 1] for the run's objective (see the module doc)."""
  opts = options(config)
  if opts.objective == 'flow':
    # sigma_0 = 80 (t = 80/81), EDM's sigma_max, not 999: Heun's correction multiplies the
    # change of D between sigma_0 and sigma_1 by (sigma_0 - sigma_1) / (2 sigma_1), and on the
    # glyph model sigma_0 = 999 made Heun at 18 steps 4x worse in FD than Euler (80: equal).
    return sd.flow_sigmas(steps, t_max=max(80 / 81, 1 - 0.5 / steps))  # > 80 steps: room
  if opts.objective == 'edm':
    return sd.karras_sigmas(steps)
  return sd.vp_sigmas(steps, schedule=opts.vp_schedule, T=opts.vp_steps)


def denoiser(config, model, steps: int | None = None, sampler: str = 'euler') -> Denoiser:
  """The run's D(x; sigma, label). For a shortcut model sampled with Euler over `steps` steps
  the step-size index is k = log2(steps) (d = 1/steps); otherwise the finest step."""
  opts = options(config)
  step = None
  if model.cfg.step_conditioning and steps is not None and sampler == 'euler':
    k = math.log2(steps)
    if k != int(k) or k > model.cfg.max_step_index:
      raise ValueError(f'a shortcut model takes steps = 1, 2, 4, ..., {2 ** model.cfg.max_step_index}'
                       f' (powers of two), got {steps}')
    step = int(k)
  return Denoiser(model, opts.objective, opts.sigma_data, step)


def parse_labels(config, labels, num: int) -> np.ndarray:
  """Texts (glyph runs) or class ids -> int32 [num, max_chars]; one label is repeated."""
  from train.glyphs import encode_text
  d = config.data
  rows = []
  for text in labels:
    if d.source == 'glyphs':
      rows.append(encode_text(str(text), d.alphabet, d.max_chars))
    else:
      row = np.zeros(d.max_chars, np.int32)
      row[0] = int(text) + 1  # class ids are stored 1-based, 0 = null
      vocab = config.model.get('label_vocab', 0)
      if not 0 < row[0] < vocab:
        raise ValueError(f'class id {text} is outside the model\'s 0..{vocab - 2}')
      rows.append(row)
  if len(rows) not in (1, num):
    raise ValueError(f'give one label or --num={num} labels, got {len(rows)}')
  return np.asarray(rows * (num if len(rows) == 1 else 1), np.int32)


def reference(config, num: int) -> dict:
  """`num` held-out examples {'image': [num, H, W, C], 'label': [num, S]} (FD reference and the
  labels to request)."""
  from train.image_data import eval_batches
  d = config.data
  batches = eval_batches(d, batch_size=num, num_batches=1)
  return {k: np.asarray(v[:num]) for k, v in batches[0].items()}


def generate(config, model, params, rng, *, num: int = 16, sampler: str = 'heun', steps: int = 18,
             cfg: float = 1.0, cfg_interval=None, labels=None, **sampler_options):
  """Draw `num` images. labels: int32 [num, S], a list of texts / class ids, or None (labels of
  held-out examples). Returns (images float32 [num, H, W, C] in about [-1, 1], nfe int)."""
  if labels is None:
    labels = reference(config, num)['label']
  elif not (isinstance(labels, np.ndarray) and labels.dtype.kind == 'i'):
    labels = parse_labels(config, labels, num)
  if sampler == 'heun' and options(config).objective == 'flow':
    sampler_options.setdefault('flow_space', True)  # Heun's correction in flow time t
  fn = denoiser(config, model, steps, sampler)
  if cfg != 1.0:
    fn = sd.cfg_denoiser(fn, cfg, 0, cfg_interval)
  d = config.data
  shape = (num, d.image_size, d.image_size, d.channels)
  out = sd.sample(sampler, fn, params, sigmas_for(config, steps), shape, jnp.asarray(labels), rng,
                  **sampler_options)
  return np.asarray(jax.device_get(out.x)), int(out.nfe)


def to_uint8(images) -> np.ndarray:
  """[..., C] in [-1, 1] -> uint8 [..., C]."""
  return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, cols: int | None = None, pad: int = 2, zoom: int = 1):
  """[N, H, W, C] in [-1, 1] -> a PIL image of the N images on a grid (white padding), each
  pixel drawn as a zoom x zoom block (nearest neighbour: no smoothing is added)."""
  if zoom < 1:
    raise ValueError(f'zoom={zoom} must be a positive integer')
  from PIL import Image
  x = to_uint8(images)
  N, H, W, C = x.shape
  cols = cols or math.ceil(math.sqrt(N))
  rows = math.ceil(N / cols)
  grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), 255, np.uint8)
  for i in range(N):
    r, c = divmod(i, cols)
    grid[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = x[i]
  grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
  return Image.fromarray(grid[..., 0] if C == 1 else grid)


def judge_options(judge) -> dict:
  """The sampler options the trainer's judge passes to `generate` (from config.judge)."""
  return dict(sampler=judge.sampler, steps=judge.steps)


# paradigm -> module with `generate(config, model, params, rng, *, num, labels, cfg, **options)
# -> (images [num, H, W, C], nfe)` and `judge_options(config.judge) -> options`
GENERATORS = {'image_diffusion': 'sample.images', 'next_scale': 'sample.next_scale',
              'hybrid': 'sample.hybrid'}


def generator(config):
  """The module that generates images for `config.paradigm` (see GENERATORS)."""
  import importlib
  if config.paradigm not in GENERATORS:
    raise ValueError(f'no image generator for paradigm {config.paradigm!r}; known: '
                     f'{sorted(GENERATORS)}')
  return importlib.import_module(GENERATORS[config.paradigm])


def load_judge(config, train_steps: int = 0):
  """The glyph judge for ``config.data``'s glyph set (sample.glyph_judge: trained once, cached);
  ``train_steps`` 0 = its default."""
  from sample import glyph_judge
  d = config.data
  return glyph_judge.load_judge(image_size=d.image_size, alphabet=d.alphabet,
                                max_chars=d.max_chars, cache_dir=d.cache_dir,
                                stroke=float(d.get('stroke', 0.0)),
                                **({'steps': train_steps} if train_steps else {}))


def score_samples(judge, x, labels, reference_images) -> dict:
  """The glyph judge's verdict on images x [N, H, W, C] requested with `labels` int32 [N, S]:
  {'fd': Frechet distance of the judge's features vs `reference_images` [M, H, W, C],
  'accuracy': exact-string rate, 'char_accuracy': per-character rate,
  'by_length': {n: {'count', 'accuracy', 'char_accuracy'}} for strings of n characters}."""
  from sample import glyph_judge  # imported when used: the judge pulls in optax and its cache
  return glyph_judge.glyph_metrics(judge, x, labels, reference_images)  # the judge clips x


def glyph_judge_metrics(config, model, params, rng, *, num: int, cfg: float = 1.0,
                        train_steps: int = 0, **sampler_options) -> dict:
  """The glyph judge on `num` class-conditional samples whose labels are those of `num`
  held-out glyphs: Frechet distance of the judge's features (samples vs those held-out images),
  exact-string recognition accuracy and per-character accuracy, plus the NFE. The samples come
  from the paradigm's `generate` (GENERATORS) with `sampler_options`."""
  ref = reference(config, num)
  x, nfe = generator(config).generate(config, model, params, rng, num=num, cfg=cfg,
                                      labels=ref['label'], **sampler_options)
  m = score_samples(load_judge(config, train_steps), x, ref['label'], ref['image'])
  del m['by_length']  # the trainer logs scalars
  return {**m, 'nfe': nfe}


# judge name (config.judge.name) -> metrics function
JUDGES = {'glyphs': glyph_judge_metrics}


def judge_metrics(config, model, params, rng, **overrides) -> dict:
  """config.judge's metrics (the trainer's sample-based evaluation), for any paradigm in
  GENERATORS; `overrides` replace the judge's num / cfg / sampler options."""
  j = config.judge
  if j.name not in JUDGES:
    raise ValueError(f'judge.name={j.name!r}: choose one of {sorted(JUDGES)}')
  kw = dict(num=j.num, cfg=j.cfg, train_steps=j.train_steps,
            **generator(config).judge_options(j))
  return JUDGES[j.name](config, model, params, rng, **{**kw, **overrides})


def cli_labels(args, config) -> np.ndarray:
  """The CLI's labels int32 [num, S]: --label texts / class ids, else those of `num` held-out
  glyphs. Checks --judge first, so a run without a judge fails before any sampling."""
  if args.judge and config.judge.name not in JUDGES:
    sys.exit(f'--judge: this run has no glyph judge (config.judge.name={config.judge.name!r}); '
             'drop --judge')
  if args.label:
    return parse_labels(config, args.label, args.num)
  return reference(config, args.num)['label']


def cli_judge(config, x, labels, nfe: int | None = None, reference_images=None) -> None:
  """--judge: the run's judge on the grid's own samples x [N, H, W, C] and the labels they were
  requested with [N, S]; FD against `reference_images` (default: N held-out images). Prints one
  line of metrics (and the NFE when given) and one of the rates by string length."""
  if reference_images is None:
    reference_images = reference(config, len(x))['image']
  m = score_samples(load_judge(config, config.judge.train_steps), x, labels, reference_images)
  by = m.pop('by_length')
  print(' '.join(f'{k}={v:.4f}' for k, v in m.items()) + ('' if nfe is None else f' nfe={nfe}'))
  print('by length (strings / characters read, count): ' + ', '.join(
      f'{n}: {v["accuracy"]:.3f} / {v["char_accuracy"]:.3f} ({v["count"]})'
      for n, v in by.items() if v['count']))


def cli(args, config, model, params, rng) -> None:
  """`python -m sample --workdir W --num 16 --out grid.png [--sampler --steps --cfg --label]`."""
  sampler = args.sampler or ('euler' if model.cfg.step_conditioning else config.judge.sampler)
  steps = args.steps or (4 if model.cfg.step_conditioning else config.judge.steps)
  interval = tuple(float(v) for v in args.cfg_interval.split(',')) if args.cfg_interval else None
  if sampler not in sd.SAMPLERS:
    sys.exit(f'--sampler {sampler!r}: choose one of {sorted(sd.SAMPLERS)}')
  labels = cli_labels(args, config)
  t0 = time.perf_counter()
  x, nfe = generate(config, model, params, rng, num=args.num, sampler=sampler, steps=steps,
                    cfg=args.cfg, cfg_interval=interval, labels=labels)
  image_grid(x, zoom=args.zoom).save(args.out)
  print(f'wrote {args.out}: {args.num} samples, {sampler} x {steps} steps, {nfe} network '
        f'evaluations, {time.perf_counter() - t0:.2f}s including compilation', file=sys.stderr)
  if args.judge:
    cli_judge(config, x, labels, nfe)
