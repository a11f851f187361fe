"""The procedural glyph set: labels and rendering (the embedded default image data).

Image ``index`` of split ``s`` is a string of 1..``max_chars`` symbols of ``alphabet`` drawn by
Pillow's built-in FreeType font (``ImageFont.load_default(size=...)``, thickened by ``stroke``
times the font size: 0 = regular weight, 0.06 = bold) in a random colour, size and position on
a solid or two-colour-gradient background of H x W = ``image_size`` x ``image_width`` pixels
(width 0 = square), from an RNG seeded by ``(salt, SPLITS[s], index)`` only: random access,
deterministic, and 'train'/'eval' are disjoint streams. Text and background differ in luminance
by >= ``_MIN_CONTRAST``. Labels are per-slot ids: ``label[j] = 1 + alphabet.index(text[j])``,
0 = blank past the string.

Two string sets, one painter:
- the label set (``prompts=False``, the default): n ~ U{1..max_chars}, then n uniform symbols.
- the prompt set (``prompts=True``, issue 25; max_chars <= ``MAX_PROMPT_CHARS``): every string
  x is 'held-out' iff ``h(x) < heldout_strings`` with ``h(x) = blake2b-64(x) / 2**64`` in
  [0, 1) (a function of the string only, so a string's side never changes with the alphabet or
  max_chars), else 'seen'. Split 'train' draws seen strings, 'eval' held-out ones and
  'eval_seen' seen ones (eval images of training strings): the length is uniform,
  P(n) = 1 / |N| over the lengths N = {n in 1..max_chars : that side has a string of length n}
  (all of 1..max_chars but for tiny alphabets), so short strings are not swamped by the
  |A|**n long ones; given n the string is uniform over that side's strings of length n
  (rejection sampling: uniform n-strings until one lands on the side). Seeds
  ``(salt, _PROMPT_STREAM, PROMPT_SPLITS[s], index)``: streams apart from the label set's.

pipelines/images.py serves these (and users' images) as datasets; evaluators/glyph_judge.py trains
its classifier on them.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_ALPHABET = '0123456789ABCDEFGHKMNPRSTUVWXYZ'  # no I J L O Q: too close to 1 0 / 0
GLYPH_VERSION = 1  # bump when the rendering of (split, index) changes (invalidates judges)
SPLITS = {'train': 0, 'eval': 1}
PROMPT_SPLITS = {'train': 0, 'eval': 1, 'eval_seen': 2}  # prompts: seen / held-out / seen strings
MAX_PROMPT_CHARS = 8  # prompt strings of 1..8 characters (the judge reads up to 8 slots)
DEFAULT_HELDOUT_STRINGS = 0.2  # fraction of all strings held out of training (prompts)
_GLYPH_SALT = 0x676C7970  # 'glyp': keeps glyph RNG streams apart from other seeded streams
_PROMPT_STREAM = 0x70726F6D  # 'prom': the prompt set's streams
_ENUMERATE = 50_000  # lengths with <= this many strings are listed once (exact, no rejection)
_MAX_TRIES = 100_000  # rejection draws before a side is declared (nearly) empty
_SUPERSAMPLE = 2  # text is rasterized at 2x and box-downsampled
_MIN_CONTRAST = 0.4  # min |luminance(text) - luminance(background)|, luminance in [0, 1]
_EM_RANGE = (0.4, 1.0)  # font size (em) as a fraction of image_size, before shrink-to-fit
MAX_STROKE = 0.15  # data.stroke bound: wider outlines fill the counters of 8, B, 0 ...
PALETTES = ('colour', 'mono')  # data.palette: random colours / black ink on a white ground
_LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709, on sRGB values in [0, 1]


def check_alphabet(alphabet: str, max_chars: int) -> None:
  """Raises ValueError unless ``alphabet`` and ``max_chars`` define a valid glyph set."""
  if not alphabet or len(set(alphabet)) != len(alphabet) or any(c.isspace() for c in alphabet):
    raise ValueError(f'data.alphabet={alphabet!r} must be non-empty, without repeated or '
                     f'whitespace characters; e.g. {DEFAULT_ALPHABET!r}.')
  if max_chars < 1:
    raise ValueError(f'data.max_chars={max_chars} must be >= 1.')


def check_palette(palette: str, name: str = 'palette') -> None:
  """Raises ValueError unless ``palette`` is one of PALETTES."""
  if palette not in PALETTES:
    raise ValueError(f'{name}={palette!r}; use one of {PALETTES} (colour: random ink and '
                     'background, the default; mono: black ink on white).')


def check_prompts(alphabet: str, max_chars: int, heldout_strings: float) -> None:
  """Raises ValueError unless the prompt set (strings of 1..max_chars symbols of ``alphabet``,
  a fraction ``heldout_strings`` of them held out) is valid and both sides have strings."""
  check_alphabet(alphabet, max_chars)
  if max_chars > MAX_PROMPT_CHARS:
    raise ValueError(f'data.max_chars={max_chars} with data.prompts=True: prompt strings have '
                     f'at most {MAX_PROMPT_CHARS} characters; lower data.max_chars.')
  if not 0.01 <= heldout_strings <= 0.99:
    raise ValueError(f'data.heldout_strings={heldout_strings} must be in [0.01, 0.99] (the '
                     f'fraction of strings never trained on), e.g. {DEFAULT_HELDOUT_STRINGS}.')
  for held_out in (False, True):
    if not prompt_lengths(alphabet, max_chars, heldout_strings, held_out):
      raise ValueError(f'No string of 1..{max_chars} symbols of {alphabet!r} is '
                       f'{"held out" if held_out else "seen"} with data.heldout_strings='
                       f'{heldout_strings}; use a longer alphabet, a larger data.max_chars or '
                       'a fraction nearer 0.5.')


def check_size(image_size: int, image_width: int = 0) -> None:
  """Raises ValueError unless H = ``image_size`` and W = ``image_width`` (0 = H) are >= 8."""
  if image_size < 8 or not (image_width == 0 or image_width >= 8):
    raise ValueError(f'data.image_size={image_size} (the height) must be >= 8 and '
                     f'data.image_width={image_width} 0 (square) or >= 8, e.g. 32 and 64.')


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


def prompt_label(text: str, alphabet: str = DEFAULT_ALPHABET, max_chars: int = 3) -> np.ndarray:
  """The characters of a prompt that starts an interleaved sequence, as label ids
  ``1 + alphabet.index(c)``: int32 [len(text)]. Refuses, with the fix in the message, an empty
  prompt (the sampler would have no string to start from), characters outside the alphabet and
  strings longer than the model's ``max_chars`` (nothing is truncated)."""
  if not text:
    raise ValueError('the prompt is empty: give the first string to draw, e.g. "A7" (the '
                     'samplers take a token prompt of BOS alone to start from nothing)')
  return encode_text(text, alphabet, max_chars)[:len(text)]


def decode_label(label, alphabet: str = DEFAULT_ALPHABET) -> str:
  """Inverse of ``encode_text``: slot ids ``[L]`` -> text; blanks (0) are skipped."""
  return ''.join(alphabet[int(i) - 1] for i in np.asarray(label).reshape(-1) if 0 < i
                 <= len(alphabet))


def string_hash(text: str) -> float:
  """h(x) = blake2b-64(utf-8 x) / 2**64 in [0, 1): a stable hash of the string alone."""
  digest = hashlib.blake2b(text.encode('utf-8'), digest_size=8, person=b'glyph-heldout')
  return int.from_bytes(digest.digest(), 'big') / 2.0**64


def is_held_out_string(text: str, heldout_strings: float = DEFAULT_HELDOUT_STRINGS) -> bool:
  """Whether prompt ``text`` is held out of training: ``h(text) < heldout_strings``."""
  return string_hash(text) < heldout_strings


@functools.lru_cache(maxsize=32)
def prompt_lengths(alphabet: str, max_chars: int, heldout_strings: float,
                   held_out: bool) -> tuple[int, ...]:
  """The lengths n in 1..max_chars with at least one string on the ``held_out`` side: lengths
  with <= ``_ENUMERATE`` strings are checked by listing them; longer ones are kept (their side
  holds ~heldout_strings * |A|**n >= 500 strings)."""
  lengths = []
  for n in range(1, max_chars + 1):
    if len(alphabet)**n > _ENUMERATE or any(
        is_held_out_string(''.join(t), heldout_strings) == held_out
        for t in itertools.product(alphabet, repeat=n)):
      lengths.append(n)
  return tuple(lengths)


def _prompt_text(rng: np.random.Generator, alphabet: str, max_chars: int,
                 heldout_strings: float, held_out: bool) -> str:
  """n ~ U(prompt_lengths), then uniform n-strings until one is on the ``held_out`` side."""
  lengths = prompt_lengths(alphabet, max_chars, heldout_strings, held_out)
  n = lengths[int(rng.integers(0, len(lengths)))]
  for _ in range(_MAX_TRIES):
    text = ''.join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))
    if is_held_out_string(text, heldout_strings) == held_out:
      return text
  raise ValueError(f'Found no {"held-out" if held_out else "seen"} string of {n} symbols of '
                   f'{alphabet!r} in {_MAX_TRIES} draws (data.heldout_strings='
                   f'{heldout_strings}); use a fraction nearer 0.5 or another alphabet.')


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
def _gradient_axes(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel centres in units of the height, centred: x [1, W] (times W / H), y [H, 1]."""
  axis = lambda n: (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
  return axis(width)[None, :] * np.float32(width / height), axis(height)[:, None]


def _text_alpha(text: str, height: int, em: float, u: float, v: float,
                stroke: float = 0.0, width: int = 0, spans: bool = False):
  """Coverage of ``text`` drawn at ``em * height`` px (shrunk until its box fits inside a
  1-pixel margin) at relative position ``(u, v)`` in [0, 1]^2, its outline thickened by
  ``round(stroke * font size)`` px (0 = the font's regular weight). Returns float32 [H, W, 1]
  in [0, 1] (``width`` 0 = ``height``); with ``spans`` also each character's horizontal
  extent in output pixels, float32 [len(text), 2] (left, right: its ink box, outline included).
  """
  width = width or height
  canvas_h, canvas_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
  avail_h, avail_w = canvas_h - 2 * _SUPERSAMPLE, canvas_w - 2 * _SUPERSAMPLE
  outline = lambda size: int(round(stroke * size))  # outline px at the 2x canvas
  box = lambda size: _font(size).getbbox(text, stroke_width=outline(size))
  size = max(4, int(em * canvas_h))
  left, top, right, bottom = box(size)
  scale = min(1.0, avail_w / max(right - left, 1), avail_h / max(bottom - top, 1))
  if scale < 1.0:
    size = max(4, int(size * scale))
    left, top, right, bottom = box(size)
    while size > 4 and (right - left > avail_w or bottom - top > avail_h):
      size -= 1
      left, top, right, bottom = box(size)
  x0 = _SUPERSAMPLE - left + u * max(avail_w - (right - left), 0)
  y0 = _SUPERSAMPLE - top + v * max(avail_h - (bottom - top), 0)
  mask = Image.new('L', (canvas_w, canvas_h), 0)
  ImageDraw.Draw(mask).text((x0, y0), text, fill=255, font=_font(size),
                            stroke_width=outline(size), stroke_fill=255)
  alpha = np.asarray(mask.reduce(_SUPERSAMPLE), np.float32)[..., None] / 255.0
  if not spans:
    return alpha
  font, pad = _font(size), outline(size)
  extent = []  # character i: its ink box, placed at the advance of the characters before it
  for i, c in enumerate(text):
    c_left, _, c_right, _ = font.getbbox(c, stroke_width=pad)
    advance = font.getlength(text[:i])
    extent.append((x0 + advance + c_left, x0 + advance + c_right))
  return alpha, np.asarray(extent, np.float32).reshape(-1, 2) / _SUPERSAMPLE


def _paint(rng: np.random.Generator, text: str, height: int, width: int, jitter: float,
           stroke: float, spans: bool = False, palette: str = 'colour'):
  """Draws colours, background, size and position from ``rng`` and renders ``text``:
  uint8 [H, W, 3] (with ``spans``, also the characters' extents, see ``_text_alpha``).
  ``palette`` 'mono' paints black ink on white after the same draws (size and position
  unchanged)."""
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
    background = np.broadcast_to(bgs[0].astype(np.float32), (height, width, 3))
  else:  # linear gradient bg0 -> bg1 along a random direction
    theta = rng.uniform(0, 2 * np.pi)
    x, y = _gradient_axes(height, width)
    t = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))  # [H, W]
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]  # [H, W, 1] in [0, 1]
    background = (1 - t) * bgs[0].astype(np.float32) + t * bgs[1].astype(np.float32)
  if palette == 'mono':
    ink, background = np.zeros(3), np.full((height, width, 3), 255.0, np.float32)
  em, (u, v) = rng.uniform(*_EM_RANGE), rng.random(2)
  if jitter != 1.0:  # shrink toward the largest size and the centre
    em = _EM_RANGE[1] - jitter * (_EM_RANGE[1] - em)
    u, v = 0.5 + jitter * (u - 0.5), 0.5 + jitter * (v - 0.5)
  alpha = _text_alpha(text, height, em, u, v, stroke, width, spans)  # [H, W, 1]
  alpha, extent = alpha if spans else (alpha, None)
  image = background * (1 - alpha) + ink.astype(np.float32) * alpha  # [H, W, 3]
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return (image, extent) if spans else image


def render_glyph(index: int, image_size: int, alphabet: str, max_chars: int,
                  split: str, jitter: float = 1.0, stroke: float = 0.0, *,
                  image_width: int = 0, prompts: bool = False,
                  heldout_strings: float = DEFAULT_HELDOUT_STRINGS, spans: bool = False,
                  palette: str = 'colour') -> tuple[np.ndarray, ...]:
  """Returns (image uint8 [H, W, 3], label int32 [max_chars]) for glyph ``index`` of ``split``,
  H = ``image_size``, W = ``image_width`` (0 = H; a square image is the same pixels whatever
  the width argument says). ``spans`` adds a third array, float32 [max_chars, 2]: each
  character's (left, right) ink extent in pixels (0 past the string), for training readers.

  ``jitter`` in [0, 1] scales the spread of text size and position toward large and centred
  (1 = the full set; the same random draws, so 1 reproduces it exactly). ``stroke`` in
  [0, MAX_STROKE] thickens the letters by that fraction of the font size (0 = the regular
  weight, bit for bit; 0.06 = bold). ``palette`` 'mono' draws black on white (the same
  strings, sizes and positions as 'colour'). ``prompts``: the prompt set (module docstring; splits
  'train' | 'eval' | 'eval_seen'), its held-out strings a ``heldout_strings`` fraction. Inputs
  are checked by ``glyph_example``; this is the unchecked fast path."""
  if index < 0:
    raise ValueError(f'Glyph index {index} must be >= 0.')
  splits = PROMPT_SPLITS if prompts else SPLITS
  if split not in splits:
    raise ValueError(f'split={split!r}; use one of {sorted(splits)}'
                     + ('' if prompts else " ('eval_seen' needs data.prompts=True)") + '.')
  if prompts:
    rng = np.random.default_rng((_GLYPH_SALT, _PROMPT_STREAM, PROMPT_SPLITS[split], int(index)))
    text = _prompt_text(rng, alphabet, max_chars, heldout_strings, split == 'eval')
  else:
    rng = np.random.default_rng((_GLYPH_SALT, SPLITS[split], int(index)))
    ids = rng.integers(0, len(alphabet), size=int(rng.integers(1, max_chars, endpoint=True)))
    text = ''.join(alphabet[i] for i in ids)
  image = _paint(rng, text, image_size, image_width or image_size, jitter, stroke, spans,
                 palette)
  image, extent = image if spans else (image, None)
  label = np.zeros([max_chars], np.int32)
  label[:len(text)] = [1 + alphabet.index(c) for c in text]
  if not spans:
    return image, label
  out = np.zeros([max_chars, 2], np.float32)
  out[:len(text)] = extent
  return image, label, out


def glyph_example(index: int, *, image_size: int = 32, alphabet: str = DEFAULT_ALPHABET,
                  max_chars: int = 3, split: str = 'train', jitter: float = 1.0,
                  stroke: float = 0.0, image_width: int = 0, prompts: bool = False,
                  heldout_strings: float = DEFAULT_HELDOUT_STRINGS,
                  palette: str = 'colour') -> dict[str, np.ndarray]:
  """Glyph ``index`` (any int >= 0) of ``split`` ('train' | 'eval', and 'eval_seen' with
  ``prompts``); a function of both only (and of the set's settings, see ``render_glyph``).

  Returns ``{'image': float32 [H, W, 3] in [-1, 1], 'label': int32 [max_chars]}``.
  """
  check_size(image_size, image_width)
  check_stroke(stroke)
  check_palette(palette)
  if prompts:
    check_prompts(alphabet, max_chars, heldout_strings)
  else:
    check_alphabet(alphabet, max_chars)
  image, label = render_glyph(index, image_size, alphabet, max_chars, split, jitter, stroke,
                              image_width=image_width, prompts=prompts,
                              heldout_strings=heldout_strings, palette=palette)
  return {'image': to_float(image), 'label': label}


def to_float(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / 127.5 - 1.0  # uint8 [..., C] -> float32 in [-1, 1]


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> uint8 [..., 1] by ITU-R 601-2 luma (what PIL's convert('L') uses)."""
  luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]

