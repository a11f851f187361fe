"""Image data for the image-diffusion paradigm: procedural glyphs, image folders, .npz arrays.

Nothing here downloads. Three sources (``cfg.source``), one registry (``_SOURCES``):

- ``'glyphs'`` (the default): the unbounded procedural set of rendered text of pipelines/glyphs.py;
  image ``index`` of a split is a function of both only (random access, deterministic). With
  ``cfg.prompts`` the prompt set: training images show only 'seen' strings, eval images
  held-out strings (a ``cfg.heldout_strings`` fraction by a hash of the string), and
  ``eval_batches(..., split='eval_seen')`` eval images of seen strings.
- ``'images'``: the user's image files, ``cfg.files`` is a directory (searched recursively for
  .png/.jpg/.jpeg, any case) or a glob. Each image is converted to ``cfg.channels`` (alpha is
  composited over white), resized (LANCZOS) to cover H x W = ``image_size`` x ``image_width``
  (0 = square) and centre-cropped. Whole files are held out by ``pipelines.text.is_held_out``
  (sha1 of the relative path). Unlabelled: every label is the null label ``[0]``. Decoded once
  per process and kept in memory as uint8 (meant for folders of up to ~100k small images).
- ``'npz'``: ``cfg.path`` holds ``images`` (uint8 or integer in [0, 255], or float: read as
  [-1, 1] if any value is negative, else as [0, 1]; shape [N, H, W, C] with C in {1, 3, 4} or
  [N, H, W]) and optional ``labels``: int [N] class ids (label = [id + 1], 0 = null) or int
  [N, L] per-slot labels taken as they are (1-based, 0 = null). Resized and centre-cropped
  like folders when H, W differ from ``image_size``. The last
  ``max(1, floor(N * holdout_fraction))`` rows are held out (so shuffle rows before saving if
  they are sorted by class).

Every example is ``{'image': float32 [H, W, C] in [-1, 1], 'label': int32 [L]}``, H =
``cfg.image_size``, W = ``cfg.image_width or cfg.image_size``.
Training batches come from a grain pipeline (``train_dataset``) whose element ``i`` depends on
``(seed, i)`` only, so the stream is resumable from ``iterator.get_state()`` and shardable.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
from pathlib import Path
from typing import Any, Callable

import grain
import numpy as np
from PIL import Image

from pipelines.streams import random_stream
from pipelines.text import is_held_out
from pipelines.glyphs import (DEFAULT_ALPHABET, DEFAULT_HELDOUT_STRINGS, check_alphabet,
                              check_palette, check_prompts, check_size, check_stroke,
                              render_glyph, to_float, to_gray)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
DEFAULT_GLYPH_EVAL_BATCHES = 8
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})


def _get(cfg, name: str, default: Any) -> Any:
  value = getattr(cfg, name, default)
  return default if value is None else value


# ---------------------------------------------------------------------------------------------
# Sources: what train_dataset / eval_batches / describe need from each kind of data.

@dataclasses.dataclass(frozen=True)
class _Glyphs:
  image_size: int
  channels: int
  alphabet: str
  max_chars: int
  label_len: int  # max_chars
  label_vocab: int  # len(alphabet) + 1
  jitter: float = 1.0  # spread of text size and position (1 = full, 0 = large and centred)
  stroke: float = 0.0  # letter thickening, a fraction of the font size (0 = regular weight)
  image_width: int = 0  # W (0 = image_size: square)
  prompts: bool = False  # the prompt set: seen strings to train on, held-out ones to evaluate
  heldout_strings: float = DEFAULT_HELDOUT_STRINGS  # prompts: fraction of strings held out
  palette: str = 'colour'  # 'colour' (random ink and background) | 'mono' (black on white)

  def example(self, index: int, split: str) -> dict[str, np.ndarray]:
    image, label = render_glyph(index, self.image_size, self.alphabet, self.max_chars, split,
                                 self.jitter, self.stroke, image_width=self.image_width,
                                 prompts=self.prompts, heldout_strings=self.heldout_strings,
                                 palette=self.palette)
    return {'image': to_float(image if self.channels == 3 else to_gray(image)), 'label': label}

  def train_example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return self.example(int(rng.integers(0, 2**62)), 'train')

  def eval_rows(self, batch_size: int, num_batches: int,
                split: str = 'eval') -> list[dict[str, np.ndarray]]:
    num_batches = num_batches or DEFAULT_GLYPH_EVAL_BATCHES
    examples = [self.example(i, split) for i in range(num_batches * batch_size)]
    return _batches(examples, batch_size)

  def describe(self) -> str:
    mode = 'RGB' if self.channels == 3 else 'gray'
    spread = '' if self.jitter == 1.0 else f', jitter {self.jitter:g}'
    spread += f', stroke {self.stroke:g}' if self.stroke else ''
    spread += ', black on white' if self.palette == 'mono' else ''
    what = (f'prompts of 1-{self.max_chars} chars ({self.heldout_strings:g} of strings held '
            'out)' if self.prompts else f'1-{self.max_chars} chars')
    return (f'glyphs: {self.image_size}x{self.image_width or self.image_size} {mode}, {what} '
            f'from {len(self.alphabet)} symbols{spread}, unbounded')


@dataclasses.dataclass(frozen=True)
class _Arrays:
  """Decoded images held in memory, split into train and held-out rows."""
  train_images: np.ndarray  # [N_train, H, W, C] uint8
  train_labels: np.ndarray  # [N_train, L] int32, 0 = null
  eval_images: np.ndarray  # [N_eval, H, W, C] uint8
  eval_labels: np.ndarray  # [N_eval, L] int32
  label_len: int  # L
  label_vocab: int  # every label id is < this
  what: str  # e.g. "folder 'data/cats' (120 train / 7 eval files)"

  def train_example(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    row = int(rng.integers(0, len(self.train_images)))
    return {'image': to_float(self.train_images[row]), 'label': self.train_labels[row]}

  def eval_rows(self, batch_size: int, num_batches: int,
                split: str = 'eval') -> list[dict[str, np.ndarray]]:
    n = len(self.eval_images)
    fit = max(1, n // batch_size)
    num_batches = fit if num_batches == 0 else min(num_batches, fit)
    total = num_batches * batch_size
    rows = (np.arange(total) * n) // total if total <= n else np.arange(total) % n
    return _batches([{'image': to_float(self.eval_images[r]), 'label': self.eval_labels[r]}
                     for r in rows], batch_size)

  def describe(self) -> str:
    _, h, w, c = self.train_images.shape
    labels = ('unlabelled' if self.label_vocab == 1 else
              f'labels [{self.label_len}] < {self.label_vocab}')
    return (f'{self.what}: {h}x{w} {"RGB" if c == 3 else "gray"}, {len(self.train_images)} '
            f'train / {len(self.eval_images)} eval images, {labels}')


def _batches(examples: list[dict], batch_size: int) -> list[dict[str, np.ndarray]]:
  return [{k: np.stack([e[k] for e in examples[s:s + batch_size]]) for k in examples[0]}
          for s in range(0, len(examples), batch_size)]


def _open(cfg) -> _Glyphs | _Arrays:
  """Validates ``cfg`` (the ``data`` ConfigDict) and returns its source, decoded if needed."""
  source = _get(cfg, 'source', 'glyphs')
  if source not in _SOURCES:
    raise ValueError(f'Unknown data.source={source!r} for images; use one of {sorted(_SOURCES)}.')
  image_size, channels = int(_get(cfg, 'image_size', 32)), int(_get(cfg, 'channels', 3))
  check_size(image_size, int(_get(cfg, 'image_width', 0)))
  if _get(cfg, 'prompts', False) and source != 'glyphs':
    raise ValueError(f"data.prompts=True is the prompt-conditioned glyph set; it needs "
                     f"data.source='glyphs', not {source!r} (set data.prompts=False).")
  if channels not in (1, 3):
    raise ValueError(f'data.channels={channels} must be 1 (grayscale) or 3 (RGB).')
  holdout_fraction = float(_get(cfg, 'holdout_fraction', 0.05))
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f'data.holdout_fraction={holdout_fraction} must be in (0, 1), e.g. 0.05.')
  return _SOURCES[source](cfg, image_size, channels, holdout_fraction)


def _open_glyphs(cfg, image_size: int, channels: int, holdout_fraction: float) -> _Glyphs:
  alphabet, max_chars = str(_get(cfg, 'alphabet', DEFAULT_ALPHABET)), int(_get(cfg, 'max_chars', 3))
  check_alphabet(alphabet, max_chars)
  jitter = float(_get(cfg, 'jitter', 1.0))
  if not 0.0 <= jitter <= 1.0:
    raise ValueError(f'data.jitter={jitter} must be in [0, 1] (1 = full size/position spread).')
  stroke = float(_get(cfg, 'stroke', 0.0))
  check_stroke(stroke, 'data.stroke')
  palette = str(_get(cfg, 'palette', 'colour'))
  check_palette(palette, 'data.palette')
  prompts = bool(_get(cfg, 'prompts', False))
  heldout = float(_get(cfg, 'heldout_strings', DEFAULT_HELDOUT_STRINGS))
  if prompts:
    check_prompts(alphabet, max_chars, heldout)
  return _Glyphs(image_size, channels, alphabet, max_chars, max_chars, len(alphabet) + 1, jitter,
                 stroke, int(_get(cfg, 'image_width', 0)), prompts, heldout, palette)


# ---------------------------------------------------------------------------------------------
# Decoding folders and .npz files.

def fit_image(image: Image.Image, image_size: int, channels: int,
              image_width: int = 0) -> np.ndarray:
  """Any PIL image -> uint8 [H, W, channels] (H = image_size, W = image_width or H): alpha over
  white, scaled (LANCZOS) to cover H x W, centre crop."""
  if image.mode in ('RGBA', 'LA', 'La', 'RGBa', 'PA') or (image.mode == 'P' and
                                                         'transparency' in image.info):
    rgba = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
  if image.mode.startswith('I'):  # 16-bit grayscale (convert('L') would clip it at 255)
    image = Image.fromarray(np.rint(np.asarray(image, np.float64).clip(0, 65535) / 257)
                            .astype(np.uint8), 'L')
  image = image.convert('RGB' if channels == 3 else 'L')
  w, h = image.size
  out_h, out_w = image_size, image_width or image_size
  if (w, h) != (out_w, out_h):
    scale = max(out_h / h, out_w / w)  # square: image_size / min(w, h)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    image = image.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    image = image.crop((left, top, left + out_w, top + out_h))
  return np.asarray(image, np.uint8).reshape(out_h, out_w, channels)


def _find_images(pattern: str) -> tuple[str, list[str]]:
  """Returns (root, sorted relative POSIX paths) of the image files ``data.files`` names."""
  expanded = os.path.expanduser(pattern)
  if os.path.isdir(expanded):
    root = os.path.abspath(expanded)
    paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  else:
    paths = [os.path.abspath(p) for p in glob.glob(expanded, recursive=True)]
  paths = [p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
  if not paths:
    raise ValueError(f'No images found for data.files={pattern!r} (searched recursively for '
                     f'{"/".join(IMAGE_EXTENSIONS)}, any case); point it at a folder of images '
                     'or a glob such as "photos/**/*.png".')
  if not os.path.isdir(expanded):
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
  return root, sorted(Path(p).relative_to(root).as_posix() for p in paths)


def _open_folder(cfg, image_size: int, channels: int, holdout_fraction: float) -> _Arrays:
  pattern = _get(cfg, 'files', '')
  if not pattern:
    raise ValueError("data.source='images' needs data.files, a folder or a glob of images.")
  root, relpaths = _find_images(pattern)
  stats = tuple((p, os.stat(os.path.join(root, p)).st_mtime_ns) for p in relpaths)
  return _decode_folder(pattern, root, stats, image_size, channels, holdout_fraction,
                        int(_get(cfg, 'image_width', 0)))


@functools.lru_cache(maxsize=4)
def _decode_folder(pattern: str, root: str, stats: tuple, image_size: int, channels: int,
                   holdout_fraction: float, image_width: int = 0) -> _Arrays:
  images, gray_file, colour_file = [], None, None
  for relpath, _ in stats:
    path = os.path.join(root, relpath)
    try:
      with Image.open(path) as image:
        image.load()
        if image.mode in _GRAY_MODES:
          gray_file = gray_file or path
        else:
          colour_file = colour_file or path
        if gray_file and colour_file:
          raise ValueError(
              f'data.files={pattern!r} mixes 1-channel and colour images, e.g. {gray_file!r} '
              f'(grayscale) and {colour_file!r} (colour); convert them all to one mode '
              '(e.g. RGB) or remove the odd ones, so every image means the same thing.')
        images.append(fit_image(image, image_size, channels, image_width))
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
      raise ValueError(f'Cannot decode image file {path!r} ({type(err).__name__}: {err}); '
                       'fix it or remove it from the folder.') from err
  held = np.array([is_held_out(p, holdout_fraction) for p, _ in stats])
  how = ''
  if len(stats) < 2:
    raise ValueError(f'data.files={pattern!r} holds {len(stats)} image; a run needs at least 2 '
                     '(one to train on, one held out).')
  if not held.any() or held.all():  # too few files to hold out whole ones by their hash
    held = np.zeros(len(stats), bool)
    held[len(stats) - max(1, int(len(stats) * holdout_fraction)):] = True
    how = ', too few to hold out by hash: the last ones in path order are held out'
  images = np.stack(images)  # [N, H, W, C]
  labels = np.zeros([len(images), 1], np.int32)  # unlabelled: the null label
  what = f'folder {root!r} ({int((~held).sum())} train / {int(held.sum())} eval files{how})'
  return _Arrays(images[~held], labels[~held], images[held], labels[held], 1, 1, what)


def _open_npz(cfg, image_size: int, channels: int, holdout_fraction: float) -> _Arrays:
  path = _get(cfg, 'path', '')
  if not path or not os.path.isfile(os.path.expanduser(path)):
    raise ValueError(f"data.path={path!r} is not a file; data.source='npz' needs an .npz "
                     "saved with np.savez(path, images=..., labels=...).")
  path = os.path.abspath(os.path.expanduser(path))
  return _decode_npz(path, os.stat(path).st_mtime_ns, image_size, channels, holdout_fraction,
                     int(_get(cfg, 'image_width', 0)))


def _npz_images_uint8(images: np.ndarray, path: str) -> np.ndarray:
  """Detects the value range of ``images`` and returns uint8 [N, H, W, C]."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise ValueError(f"'images' in {path!r} has shape {images.shape}; use [N, H, W, C] with C "
                     'in {1, 3, 4} or [N, H, W] (grayscale).')
  if images.shape[0] == 0:
    raise ValueError(f"'images' in {path!r} holds no images.")
  if images.dtype == np.uint8:
    return images
  lo, hi = float(images.min()), float(images.max())
  if np.issubdtype(images.dtype, np.integer):
    if lo < 0 or hi > 255:
      raise ValueError(f"Integer 'images' in {path!r} range over [{lo:g}, {hi:g}], not [0, 255]; "
                       'store uint8 pixels or floats in [0, 1] or [-1, 1].')
    return images.astype(np.uint8)
  if not np.issubdtype(images.dtype, np.floating) or lo < -1 or hi > 1 or not np.isfinite(lo):
    raise ValueError(f"'images' in {path!r} ({images.dtype}, range [{lo:g}, {hi:g}]) must be "
                     'uint8 in [0, 255] or float in [0, 1] or [-1, 1]; rescale them.')
  unit = (images + 1) / 2 if lo < 0 else images  # any negative value -> the [-1, 1] convention
  return np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)


def _npz_labels(labels: np.ndarray | None, n: int, path: str) -> np.ndarray:
  """-> int32 [N, L] per-slot labels, 0 = null."""
  if labels is None:
    return np.zeros([n, 1], np.int32)
  if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (1, 2):
    raise ValueError(f"'labels' in {path!r} is {labels.dtype} {labels.shape}; use int [N] class "
                     'ids or int [N, L] per-slot labels (1-based, 0 = null).')
  if labels.shape[0] != n:
    raise ValueError(f"'labels' in {path!r} has {labels.shape[0]} rows but 'images' has {n}; "
                     'give one label per image.')
  if labels.size and labels.min() < 0:
    row = int(np.argwhere(labels < 0)[0][0])
    raise ValueError(f"'labels' in {path!r} has a negative id ({int(labels.min())}, row {row}); "
                     'class ids start at 0 and per-slot labels use 0 for null.')
  return (labels[:, None] + 1 if labels.ndim == 1 else labels).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _decode_npz(path: str, mtime_ns: int, image_size: int, channels: int,
                holdout_fraction: float, image_width: int = 0) -> _Arrays:
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as err:
    raise ValueError(f'Cannot read {path!r} as .npz ({err}); point data.path at a file saved '
                     'with np.savez(path, images=..., labels=...).') from err
  if not hasattr(npz, 'files'):
    raise ValueError(f'{path!r} holds a single array, not an .npz archive; save it with '
                     'np.savez(path, images=..., labels=...).')
  with npz:
    if 'images' not in npz.files:
      raise ValueError(f"{path!r} has no 'images' array (keys: {sorted(npz.files)}); save "
                       'with np.savez(path, images=..., labels=...).')
    images = _npz_images_uint8(npz['images'], path)
    labels = _npz_labels(npz['labels'] if 'labels' in npz.files else None, len(images), path)
  n, h, w, c = images.shape
  if (h, w) != (image_size, image_width or image_size) or c != channels:
    modes = {1: 'L', 3: 'RGB', 4: 'RGBA'}
    images = np.stack([fit_image(Image.fromarray(x if c > 1 else x[..., 0], modes[c]),
                                 image_size, channels, image_width) for x in images])
  if n < 2:
    raise ValueError(f'{path!r} holds {n} image; an .npz needs >= 2 (train and held-out rows).')
  num_eval = max(1, int(n * holdout_fraction))
  if num_eval >= n:
    raise ValueError(f'Holding out {num_eval} of {n} rows leaves no training images; lower '
                     'data.holdout_fraction or add images.')
  vocab = int(labels.max()) + 1
  what = f'npz {path!r}'
  return _Arrays(images[:-num_eval], labels[:-num_eval], images[-num_eval:], labels[-num_eval:],
                 labels.shape[1], vocab, what)


_SOURCES: dict[str, Callable[[Any, int, int, float], _Glyphs | _Arrays]] = {
    'glyphs': _open_glyphs, 'images': _open_folder, 'npz': _open_npz}


# ---------------------------------------------------------------------------------------------
# Public pipeline API.

def label_len(cfg) -> int:
  """L, the length of every example's label (glyphs: max_chars; unlabelled data: 1)."""
  return _open(cfg).label_len


def label_vocab(cfg) -> int:
  """Number of distinct label ids a conditioning embedding needs (id 0 = null/blank)."""
  return _open(cfg).label_vocab


def describe(cfg) -> str:
  """One log line, e.g. 'glyphs: 32x32 RGB, 1-3 chars from 31 symbols, unbounded' (H x W)."""
  return _open(cfg).describe()


def train_dataset(cfg, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """An (effectively) infinite, seeded, resumable stream of training image batches.

  Element ``i`` is drawn by an RNG seeded by ``(seed, i)`` only: for glyphs, train glyph
  ``index ~ U[0, 2**62)``; for folders/.npz, a uniformly random training row (with
  replacement). Global step ``k`` is elements ``[k * batch_size, (k + 1) * batch_size)``;
  process ``p`` of ``P`` keeps those ``i`` with ``i % P == p`` (local row ``j`` is global row
  ``j * P + p``), so the processes' rows are disjoint and their union is, as a set, exactly the
  single-process global batch.
  Resume: ``it = iter(ds); state = it.get_state(); ...; it2 = iter(ds); it2.set_state(state)``
  continues with exactly the batches ``it`` would have produced.

  Args:
    cfg: the ``data`` ConfigDict (see the module docstring for its fields).
    batch_size: the global batch size, divisible by process_count.
    seed: pipeline seed in [0, 2**32).
    process_index, process_count: this process's shard (``jax.process_index()/count()``).

  Returns:
    grain.IterDataset of ``{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b, L]}``,
    ``b = batch_size // process_count``.
  """
  return random_stream(_open(cfg).train_example, batch_size=batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)


def eval_batches(cfg, *, batch_size: int, num_batches: int,
                 split: str = 'eval') -> list[dict[str, np.ndarray]]:
  """Deterministic held-out batches.

  Glyphs: eval-split glyphs ``0 .. num_batches * batch_size - 1`` in order; ``num_batches=0``
  means ``DEFAULT_GLYPH_EVAL_BATCHES`` (the set is unbounded). With ``data.prompts`` the 'eval'
  split shows held-out strings, and ``split='eval_seen'`` gives eval images of seen (trained)
  strings instead (its own stream: none of them is a training image). Folders/.npz: of the ``n``
  held-out images, ``num_batches * batch_size`` evenly spaced ones (``r_k = k * n // total``);
  ``num_batches=0`` uses every whole batch (one full pass up to the last partial batch). If
  fewer images are held out than asked, fewer batches are returned (``n // batch_size``), but at
  least one: when even one batch does not fit, rows wrap around (``k % n``), so some repeat.

  Returns:
    list of ``{'image': float32 [batch_size, H, W, C] in [-1, 1], 'label': int32 [batch_size, L]}``.
  """
  if batch_size < 1 or num_batches < 0:
    raise ValueError(f'batch_size={batch_size} must be >= 1 and num_batches={num_batches} >= 0 '
                     '(0 = the default: all whole batches, or 8 for glyphs).')
  source = _open(cfg)
  if split != 'eval' and not (split == 'eval_seen' and getattr(source, 'prompts', False)):
    raise ValueError(f"split={split!r}: use 'eval', or 'eval_seen' (eval images of seen "
                     "strings) with data.source='glyphs' and data.prompts=True.")
  return source.eval_rows(batch_size, num_batches, split)
