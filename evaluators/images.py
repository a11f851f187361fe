"""Images of a trained run, and the judges' verdict on them: the bridge from a saved config to
the pure samplers of sample/, used by notebooks, the CLI, the arena and the trainer's judge.

    from train.checkpoint import load_run, load_tokenizer
    from evaluators import images
    config, model, params = load_run('runs/dit_glyphs')          # EMA params when kept
    x, nfe = images.generate(config, model, params, jax.random.key(0), num=16,
                             sampler='heun', steps=18, cfg=2.0, labels=['7A'])   # [16, H, W, C]
    images.image_grid(x)                                          # a PIL image (shows inline)

VAR and HART runs decode through their tokenizer, which is an argument here (nothing below
reads disk): `generate(..., tokenizer=load_tokenizer(config))`, a `(vq_model, vq_params)` pair.

The noise grid of a diffusion run follows its objective: EDM -> Karras rho = 7; flow -> uniform
t (SD3) from t = 80/81 (sigma 80); eps / v / x0 -> DDIM's strided DDPM timesteps. Shortcut runs
(step-conditioned flow models) sample with Euler over `steps` uniform steps, conditioning on
d = 1/steps (steps a power of 2). Heun on a flow run takes its correction in flow time t
(`heun_step(flow_space=True)`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from paradigms.image_diffusion import Denoiser, Options
from pipelines.glyphs import encode_text
from pipelines.images import eval_batches
from sample import hybrid as hart
from sample import maskgit as mg
from sample import raster_ar as rar
from sample import transfusion as tfs
from sample import image_diffusion as sd
from sample import next_scale as var


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
  batches = eval_batches(config.data, batch_size=num, num_batches=1)
  return {k: np.asarray(v[:num]) for k, v in batches[0].items()}


def _diffusion(config, model, params, rng, labels, *, cfg: float = 1.0, tokenizer=None,
               sampler: str = 'heun', steps: int = 18, cfg_interval=None, **sampler_options):
  """image_diffusion: `sample.image_diffusion.sample` on the run's denoiser and grid."""
  del tokenizer  # pixels: no tokenizer
  if sampler == 'heun' and options(config).objective == 'flow':
    sampler_options.setdefault('flow_space', True)  # Heun's correction in flow time t
  fn = denoiser(config, model, steps, sampler)
  if cfg != 1.0:
    fn = sd.cfg_denoiser(fn, cfg, 0, cfg_interval)
  d = config.data
  shape = (len(labels), d.image_size, d.get('image_width', 0) or d.image_size, d.channels)
  out = sd.sample(sampler, fn, params, sigmas_for(config, steps), shape, jnp.asarray(labels), rng,
                  **sampler_options)
  return out.x, out.nfe


def _tokenized(draw):
  """next_scale / hybrid: `draw(model, params, vq_model, vq_params, labels, rng, **options)`."""
  def run(config, model, params, rng, labels, *, tokenizer=None, **options):
    if tokenizer is None:
      raise ValueError(f'a {config.paradigm!r} run decodes through its tokenizer: pass '
                       'tokenizer=(vq_model, vq_params), e.g. train.checkpoint.load_tokenizer(config)')
    vq_model, vq_params = tokenizer
    out = draw(model, params, vq_model, vq_params, labels, rng, **options)
    return out.images, out.nfe
  return run


# paradigm -> (generate(config, model, params, rng, labels, *, cfg, tokenizer, **options) ->
# (images, nfe), the options the trainer's judge passes from config.judge)
def _transfusion(config, model, params, rng, labels, *, cfg=1.0, tokenizer=None, sampler='euler',
                 steps=32, cfg_interval=None, **unused):
  """Transfusion: Euler steps on the image block behind the KV-cached prompt."""
  del tokenizer
  if sampler != 'euler' or cfg_interval is not None or unused:
    raise ValueError(f'a transfusion run takes sampler=euler, steps and cfg only (got {sampler!r}, '
                     f'cfg_interval={cfg_interval}, {sorted(unused)})')
  out = tfs.text_to_image(model, params, jnp.asarray(labels, jnp.int32), rng, steps=int(steps),
                          cfg=float(cfg))
  return out.images, out.nfe


GENERATORS = {
    'image_diffusion': (_diffusion, lambda j: {'sampler': j.sampler, 'steps': j.steps}),
    'next_scale': (_tokenized(var.sample), lambda j: {}),  # the full distribution, cfg only
    'hybrid': (_tokenized(hart.sample), lambda j: {'head_steps': int(j.steps)}),
    'raster_ar': (_tokenized(rar.sample), lambda j: {}),
    'maskgit': (_tokenized(mg.sample), lambda j: {'steps': int(j.steps)}),
    'transfusion': (_transfusion, lambda j: {'sampler': j.sampler, 'steps': int(j.steps)}),
}


def _generator(config):
  if config.paradigm not in GENERATORS:
    raise ValueError(f'no image generator for paradigm {config.paradigm!r}; known: '
                     f'{sorted(GENERATORS)}')
  return GENERATORS[config.paradigm]


def generate(config, model, params, rng, *, num: int = 16, labels=None, cfg: float = 1.0,
             tokenizer=None, **options):
  """Draw `num` images of any image paradigm in GENERATORS. labels: int32 [num, S], a list of
  texts / class ids, or None (labels of held-out examples); tokenizer: (vq_model, vq_params)
  for VAR / HART runs. Options: diffusion `sampler`, `steps`, `cfg_interval` and the sampler's
  own; VAR `top_k`, `top_p`, `temperature`; HART those and `head_steps`, `head_sampler`,
  `head_shift`. Returns (images float32 [num, H, W, C] in about [-1, 1], nfe int)."""
  if labels is None:
    labels = reference(config, num)['label']
  elif not (isinstance(labels, np.ndarray) and labels.dtype.kind == 'i'):
    labels = parse_labels(config, labels, num)
  x, nfe = _generator(config)[0](config, model, params, rng, labels, cfg=cfg,
                                 tokenizer=tokenizer, **options)
  return np.asarray(jax.device_get(x), np.float32), int(nfe)


def judge_options(config) -> dict:
  """The sampler options the trainer's judge passes to `generate` (from config.judge)."""
  return _generator(config)[1](config.judge)


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


def load_judge(config, train_steps: int = 0):
  """The glyph judge for ``config.data``'s glyph set (evaluators.glyph_judge: trained once,
  cached); ``train_steps`` 0 = its default. The prompt set's judge always reads up to
  MAX_PROMPT_CHARS (8) characters, whatever data.max_chars: one judge for every prompt run of a
  size and weight, and CTC trained on strings of at most 4 stays on its blank plateau for
  thousands of steps (27% read after 2000; the 8-character judge reads 99%+)."""
  from evaluators import glyph_judge  # imported when used: the judge pulls in optax and its cache
  from pipelines.glyphs import MAX_PROMPT_CHARS
  d = config.data
  prompts = bool(d.get('prompts', False))
  return glyph_judge.load_judge(image_size=d.image_size, alphabet=d.alphabet,
                                max_chars=MAX_PROMPT_CHARS if prompts else d.max_chars,
                                cache_dir=d.cache_dir,
                                stroke=float(d.get('stroke', 0.0)),
                                image_width=int(d.get('image_width', 0)),
                                prompts=prompts,
                                heldout_strings=float(d.get('heldout_strings', 0.2)),
                                **({'steps': train_steps} if train_steps else {}))


def score_samples(judge, x, labels, reference_images) -> dict:
  """The glyph judge's verdict on images x [N, H, W, C] requested with `labels` int32 [N, S]:
  {'fd': Frechet distance of the judge's features vs `reference_images` [M, H, W, C],
  'accuracy': exact-string rate, 'char_accuracy': per-character rate,
  'by_length': {n: {'count', 'accuracy', 'char_accuracy'}} for strings of n characters}."""
  from evaluators import glyph_judge
  return glyph_judge.glyph_metrics(judge, x, labels, reference_images)  # the judge clips x


def glyph_judge_metrics(config, model, params, rng, *, num: int, cfg: float = 1.0,
                        train_steps: int = 0, tokenizer=None, **sampler_options) -> dict:
  """The glyph judge on `num` class-conditional samples whose labels are those of `num`
  held-out glyphs: Frechet distance of the judge's features (samples vs those held-out images),
  exact-string recognition accuracy and per-character accuracy, plus the NFE. The samples come
  from `generate` with `sampler_options`."""
  ref = reference(config, num)
  x, nfe = generate(config, model, params, rng, num=num, cfg=cfg, labels=ref['label'],
                    tokenizer=tokenizer, **sampler_options)
  m = score_samples(load_judge(config, train_steps), x, ref['label'], ref['image'])
  del m['by_length']  # the trainer logs scalars
  return {**m, 'nfe': nfe}


# judge name (config.judge.name) -> metrics function
JUDGES = {'glyphs': glyph_judge_metrics}


def judge_metrics(config, model, params, rng, *, tokenizer=None, **overrides) -> dict:
  """config.judge's metrics (the trainer's sample-based evaluation), for any paradigm in
  GENERATORS; `overrides` replace the judge's num / cfg / sampler options."""
  j = config.judge
  if j.name not in JUDGES:
    raise ValueError(f'judge.name={j.name!r}: choose one of {sorted(JUDGES)}')
  kw = dict(num=j.num, cfg=j.cfg, train_steps=j.train_steps, **judge_options(config))
  return JUDGES[j.name](config, model, params, rng, tokenizer=tokenizer, **{**kw, **overrides})
