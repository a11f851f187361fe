"""The procedural glyph set: labels and rendering (the embedded default image data).

Image ``index`` of split ``s`` is a string of 1..``max_chars`` symbols of ``alphabet`` drawn by
Pillow's built-in FreeType font (``ImageFont.load_default(size=...)``, thickened by ``stroke``
times the font size: 0 = regular weight, 0.06 = bold) in a random colour, size and position on
a solid or two-colour-gradient background, from an RNG seeded by ``(salt, SPLITS[s], index)``
only: random access, deterministic, and 'train'/'eval' are disjoint streams. Text and
background differ in luminance by >= ``_MIN_CONTRAST``. Labels are per-slot ids:
``label[j] = 1 + alphabet.index(text[j])``, 0 = blank past the string.

pipelines/images.py serves these (and users' images) as datasets; evaluators/glyph_judge.py trains
its classifier on them.
"""
from __future__ import annotations

import functools
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_ALPHABET = '0123456789ABCDEFGHKMNPRSTUVWXYZ'  # no I J L O Q: too close to 1 0 / 0
GLYPH_VERSION = 1  # bump when the rendering of (split, index) changes (invalidates judges)
SPLITS = {'train': 0, 'eval': 1}
_GLYPH_SALT = 0x676C7970  # 'glyp': keeps glyph RNG streams apart from other seeded streams
_SUPERSAMPLE = 2  # text is rasterized at 2x and box-downsampled
_MIN_CONTRAST = 0.4  # min |luminance(text) - luminance(background)|, luminance in [0, 1]
_EM_RANGE = (0.4, 1.0)  # font size (em) as a fraction of image_size, before shrink-to-fit
MAX_STROKE = 0.15  # data.stroke bound: wider outlines fill the counters of 8, B, 0 ...
_LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709, on sRGB values in [0, 1]


def check_alphabet(alphabet: str, max_chars: int) -> None:
  """Raises ValueError unless ``alphabet`` and ``max_chars`` define a valid glyph set."""
  if not alphabet or len(set(alphabet)) != len(alphabet) or any(c.isspace() for c in alphabet):
    raise ValueError(f'data.alphabet={alphabet!r} must be non-empty, without repeated or '
                     f'whitespace characters; e.g. {DEFAULT_ALPHABET!r}.')
  if max_chars < 1:
    raise ValueError(f'data.max_chars={max_chars} must be >= 1.')


def check_stroke(stroke: float, name: str = 'stroke') -> None:
  if not 0.0 <= stroke <= MAX_STROKE:
    raise ValueError(f'{name}={stroke} must be in [0, {MAX_STROKE}] (a fraction of the font '
                     'size; 0 = regular weight, 0.06 = bold).')


def encode_text(text: str, alphabet: str = DEFAULT_ALPHABET, max_chars: int = 3) -> np.ndarray:
  """Per-slot label of ``text``: ``1 + alphabet.index(c)``, then 0 (blank). int32 [max_chars]."""
  if len(text) > max_chars:
    raise ValueError(f'{text!r} has {len(text)} characters, more than max_chars={max_chars}; '
                     'shorten it or raise data.max_chars.')
  missing = sorted(set(text) - set(alphabet))
  if missing:
    raise ValueError(f'{text!r} uses {"".join(missing)!r}, not in the alphabet {alphabet!r}; '
                     'use only those characters or extend data.alphabet.')
  label = np.zeros([max_chars], np.int32)
  label[:len(text)] = [1 + alphabet.index(c) for c in text]
  return label


def decode_label(label, alphabet: str = DEFAULT_ALPHABET) -> str:
  """Inverse of ``encode_text``: slot ids ``[L]`` -> text; blanks (0) are skipped."""
  return ''.join(alphabet[int(i) - 1] for i in np.asarray(label).reshape(-1) if 0 < i
                 <= len(alphabet))


_FONTS = threading.local()  # FreeType faces are not shared across grain's worker threads


def _font(size: int) -> ImageFont.FreeTypeFont:
  fonts = _FONTS.__dict__.setdefault('by_size', {})
  if size not in fonts:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
      raise RuntimeError('Pillow was built without FreeType, so it cannot draw glyphs at a '
                         "chosen size; install a Pillow wheel with FreeType or use "
                         "data.source='images' or 'npz'.")
    fonts[size] = font
  return fonts[size]


def _luminance(rgb: np.ndarray) -> float:
  return float(rgb @ _LUMA) / 255.0


def _at_least(rgb: np.ndarray, lo: float) -> np.ndarray:
  """Blends ``rgb`` toward white until its luminance is >= lo (luminance is linear in RGB)."""
  lum = _luminance(rgb)
  return rgb if lum >= lo else rgb + (255.0 - rgb) * min(1.0, (lo - lum) / (1.0 - lum))


def _at_most(rgb: np.ndarray, hi: float) -> np.ndarray:
  """Scales ``rgb`` toward black until its luminance is <= hi."""
  lum = _luminance(rgb)
  return rgb if lum <= hi else rgb * (max(hi, 0.0) / lum)


@functools.lru_cache(maxsize=16)
def _gradient_axes(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  c = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5  # [S]
  return c[None, :], c[:, None]  # x [1, S], y [S, 1]


def _text_alpha(text: str, image_size: int, em: float, u: float, v: float,
                stroke: float = 0.0) -> np.ndarray:
  """Coverage of ``text`` drawn at ``em * image_size`` px (shrunk until its box fits inside a
  1-pixel margin) at relative position ``(u, v)`` in [0, 1]^2, its outline thickened by
  ``round(stroke * font size)`` px (0 = the font's regular weight). Returns float32 [S, S, 1]
  in [0, 1].
  """
  canvas = image_size * _SUPERSAMPLE
  avail = canvas - 2 * _SUPERSAMPLE
  width = lambda size: int(round(stroke * size))  # outline px at the 2x canvas
  box = lambda size: _font(size).getbbox(text, stroke_width=width(size))
  size = max(4, int(em * canvas))
  left, top, right, bottom = box(size)
  scale = min(1.0, avail / max(right - left, 1), avail / max(bottom - top, 1))
  if scale < 1.0:
    size = max(4, int(size * scale))
    left, top, right, bottom = box(size)
    while size > 4 and (right - left > avail or bottom - top > avail):
      size -= 1
      left, top, right, bottom = box(size)
  x0 = _SUPERSAMPLE - left + u * max(avail - (right - left), 0)
  y0 = _SUPERSAMPLE - top + v * max(avail - (bottom - top), 0)
  mask = Image.new('L', (canvas, canvas), 0)
  ImageDraw.Draw(mask).text((x0, y0), text, fill=255, font=_font(size),
                            stroke_width=width(size), stroke_fill=255)
  return np.asarray(mask.reduce(_SUPERSAMPLE), np.float32)[..., None] / 255.0


def render_glyph(index: int, image_size: int, alphabet: str, max_chars: int,
                  split: str, jitter: float = 1.0,
                  stroke: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Returns (image uint8 [S, S, 3], label int32 [max_chars]) for glyph ``index`` of ``split``.

  ``jitter`` in [0, 1] scales the spread of text size and position toward large and centred
  (1 = the full set; the same random draws, so 1 reproduces it exactly). ``stroke`` in
  [0, MAX_STROKE] thickens the letters by that fraction of the font size (0 = the regular
  weight, bit for bit; 0.06 = bold)."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r}; use one of {sorted(SPLITS)}.')
  if index < 0:
    raise ValueError(f'Glyph index {index} must be >= 0.')
  rng = np.random.default_rng((_GLYPH_SALT, SPLITS[split], int(index)))
  ids = rng.integers(0, len(alphabet), size=int(rng.integers(1, max_chars, endpoint=True)))
  text = ''.join(alphabet[i] for i in ids)
  # Colours: text on the dark or light side, every background colour >= _MIN_CONTRAST away.
  dark_text = rng.random() < 0.5
  colours = rng.uniform(0, 255, size=(3, 3))  # [text, bg0, bg1] x RGB
  if dark_text:
    ink = _at_most(colours[0], 1.0 - _MIN_CONTRAST - 0.1 * rng.random())
    bgs = [_at_least(c, _luminance(ink) + _MIN_CONTRAST + 0.01) for c in colours[1:]]
  else:
    ink = _at_least(colours[0], _MIN_CONTRAST + 0.1 * rng.random())
    bgs = [_at_most(c, _luminance(ink) - _MIN_CONTRAST - 0.01) for c in colours[1:]]
  if rng.random() < 0.5:  # solid background
    background = np.broadcast_to(bgs[0].astype(np.float32), (image_size, image_size, 3))
  else:  # linear gradient bg0 -> bg1 along a random direction
    theta = rng.uniform(0, 2 * np.pi)
    x, y = _gradient_axes(image_size)
    t = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))  # [S, S]
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]  # [S, S, 1] in [0, 1]
    background = (1 - t) * bgs[0].astype(np.float32) + t * bgs[1].astype(np.float32)
  em, (u, v) = rng.uniform(*_EM_RANGE), rng.random(2)
  if jitter != 1.0:  # shrink toward the largest size and the centre
    em = _EM_RANGE[1] - jitter * (_EM_RANGE[1] - em)
    u, v = 0.5 + jitter * (u - 0.5), 0.5 + jitter * (v - 0.5)
  alpha = _text_alpha(text, image_size, em, u, v, stroke)  # [S, S, 1]
  image = background * (1 - alpha) + ink.astype(np.float32) * alpha  # [S, S, 3]
  label = np.zeros([max_chars], np.int32)
  label[:len(ids)] = ids + 1
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def glyph_example(index: int, *, image_size: int = 32, alphabet: str = DEFAULT_ALPHABET,
                  max_chars: int = 3, split: str = 'train',
                  jitter: float = 1.0, stroke: float = 0.0) -> dict[str, np.ndarray]:
  """Glyph ``index`` (any int >= 0) of ``split`` ('train' | 'eval'); a function of both only.

  Returns ``{'image': float32 [S, S, 3] in [-1, 1], 'label': int32 [max_chars]}``.
  """
  check_alphabet(alphabet, max_chars)
  check_stroke(stroke)
  image, label = render_glyph(index, image_size, alphabet, max_chars, split, jitter, stroke)
  return {'image': to_float(image), 'label': label}


def to_float(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / 127.5 - 1.0  # uint8 [..., C] -> float32 in [-1, 1]


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> uint8 [..., 1] by ITU-R 601-2 luma (what PIL's convert('L') uses)."""
  luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]

