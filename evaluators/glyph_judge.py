"""An external judge of generated glyph images: a small CNN trained on the procedural glyph set.

Two measurements for the image paradigms (neither depends on any model being judged):

- Fréchet distance (Heusel et al. 2017, the FID formula) between the judge's penultimate
  features of generated and held-out images:
      FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}).
- Recognition accuracy of class-conditional samples: does the judge read the requested text?
  ``accuracy`` is the exact-string match rate, ``char_accuracy`` the per-character rate.

The judge is trained once per (glyph generator version, Pillow version, image size, alphabet,
max_chars, architecture version, training settings) and cached as msgpack under the cache root
(``$JAX_PARADIGMS_CACHE`` or ``~/.cache/jax_paradigms``) in ``glyph_judge/``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL

from pipelines.text import cache_root
from pipelines.glyphs import DEFAULT_ALPHABET, GLYPH_VERSION, check_alphabet, glyph_example

JUDGE_VERSION = 1  # bump when GlyphNet or its training recipe changes (invalidates caches)
DEFAULT_STEPS = 3000
DEFAULT_BATCH_SIZE = 64
_EVAL_SIZE = 2048  # held-out glyphs scored after training (eval split 0 .. _EVAL_SIZE - 1)
_APPLY_BATCH = 256  # images per jitted forward in features/predict (last batch padded)


class GlyphNet(nn.Module):
  """Conv trunk -> flattened 4x4 map -> feature vector [F] -> ``max_chars`` slot classifiers.

  The head keeps the 4x4 spatial layout (no global pool) so slot ``j`` can tell the ``j``-th
  character from the others by position.
  """
  num_classes: int  # len(alphabet) + 1 (0 = blank)
  max_chars: int
  widths: tuple[int, ...] = (16, 32, 64)  # one stride-2 stage each: S -> S / 2**len(widths)
  features: int = 128

  @nn.compact
  def __call__(self, x):  # x: [B, S, S, 3] in [-1, 1]
    """Returns (features [B, F], logits [B, max_chars, num_classes])."""
    h = x
    for i, width in enumerate(self.widths):
      h = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2, name=f'conv{i}a')(h)
      h = nn.relu(nn.GroupNorm(num_groups=8)(h))
      h = nn.Conv(width, (3, 3), strides=2 if i == 0 else 1, name=f'conv{i}b')(h)
      h = nn.relu(nn.GroupNorm(num_groups=8)(h))  # [B, S / 2**(i+1), ..., width]
    h = h.reshape(h.shape[0], -1)  # [B, (S / 8)**2 * widths[-1]]
    feats = nn.relu(nn.Dense(self.features, name='features')(h))  # [B, F]
    logits = nn.Dense(self.max_chars * self.num_classes, name='heads')(feats)
    return feats, logits.reshape(-1, self.max_chars, self.num_classes)  # [B, L, K]


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: GlyphNet, params, x):
  return module.apply(params, x)  # x: [B, S, S, 3] -> ([B, F], [B, L, K])


def _glyph_batch(indices, image_size: int, alphabet: str, max_chars: int, split: str,
                 stroke: float = 0.0):
  """-> (images float32 [B, S, S, 3] in [-1, 1], labels int32 [B, max_chars])."""
  examples = [glyph_example(int(i), image_size=image_size, alphabet=alphabet,
                            max_chars=max_chars, split=split, stroke=stroke) for i in indices]
  return np.stack([e['image'] for e in examples]), np.stack([e['label'] for e in examples])


def match_rates(pred, labels) -> tuple[float, float]:
  """(exact-string rate, per-character rate) of predicted slot ids ``pred`` [N, L] vs ``labels``.

  Rows whose label is all null (0: unconditional samples) are skipped; the per-character rate
  counts the non-blank label slots. NaN when no row / slot counts.
  """
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape:
    raise ValueError(f'labels have shape {labels.shape} but predictions {pred.shape}; give one '
                     'per-slot label row [N, max_chars] per image.')
  rows = (labels > 0).any(-1)  # [N]
  slots = labels > 0  # [N, L]
  exact = float((pred == labels).all(-1)[rows].mean()) if rows.any() else float('nan')
  per_char = float((pred == labels)[slots].mean()) if slots.any() else float('nan')
  return exact, per_char


def match_rates_by_length(pred, labels) -> dict[int, dict[str, float]]:
  """``match_rates`` split by string length n = the non-blank slots of each label row:
  ``{n: {'count': rows of length n, 'accuracy': exact-string rate, 'char_accuracy':
  per-character rate}}`` for n = 1 .. max_chars (``pred``, ``labels`` int32 [N, max_chars]).

  Legibility against string length: the exact-string rate of an n-character label is at most
  the per-character rate to the power n if characters were read independently. Lengths with no
  row give count 0 and NaN rates; all-null rows (unconditional samples) are skipped.
  """
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or labels.ndim != 2:
    raise ValueError(f'labels have shape {labels.shape} but predictions {pred.shape}; give one '
                     'per-slot label row [N, max_chars] per image.')
  lengths = (labels > 0).sum(-1)  # [N]
  out = {}
  for n in range(1, labels.shape[1] + 1):
    rows = lengths == n
    exact, per_char = match_rates(pred[rows], labels[rows])
    out[n] = {'count': int(rows.sum()), 'accuracy': exact, 'char_accuracy': per_char}
  return out


def train_judge(*, image_size: int = 32, alphabet: str = DEFAULT_ALPHABET, max_chars: int = 3,
                steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                learning_rate: float = 4e-3, stroke: float = 0.0) -> tuple[dict, dict]:
  """Trains ``GlyphNet`` on fresh train-split glyphs (never the same one twice, in practice)
  of letter weight ``stroke`` (pipelines.glyphs; the full size/position spread, jitter 1).

  Per-slot softmax cross-entropy, AdamW with warmup + cosine decay, one jitted step; the next
  batch is rendered by a worker thread while the step runs. Returns ``(params, info)``, info
  holding the held-out exact-string / per-character accuracy on eval glyphs
  ``0 .. _EVAL_SIZE - 1`` and the wall time.
  """
  check_alphabet(alphabet, max_chars)
  if steps < 1 or batch_size < 1:
    raise ValueError(f'steps={steps} and batch_size={batch_size} must both be >= 1.')
  module = GlyphNet(num_classes=len(alphabet) + 1, max_chars=max_chars)
  params = module.init(jax.random.key(seed), jnp.zeros([1, image_size, image_size, 3]))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 2), steps,
                                                learning_rate * 0.01)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):  # x: [B, S, S, 3], y: [B, L]
    def loss_fn(p):
      _, logits = module.apply(p, x)  # [B, L, K]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  draws = [rng.integers(0, 2**62, batch_size) for _ in range(steps)]  # [steps][B] glyph ids
  render = lambda ids: _glyph_batch(ids, image_size, alphabet, max_chars, 'train', stroke)
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(render, draws[0])
    for k in range(steps):
      x, y = pending.result()
      if k + 1 < steps:
        pending = pool.submit(render, draws[k + 1])
      params, opt_state, loss = step(params, opt_state, x, y)
  loss = float(loss)
  train_seconds = time.perf_counter() - start
  judge = Judge(module, jax.device_get(params), image_size, alphabet, max_chars)
  x, y = _glyph_batch(range(_EVAL_SIZE), image_size, alphabet, max_chars, 'eval', stroke)
  exact, per_char = match_rates(judge.predict(x), y)
  info = {'steps': steps, 'batch_size': batch_size, 'final_loss': loss,
          'train_seconds': train_seconds, 'eval_size': _EVAL_SIZE, 'eval_accuracy': exact,
          'eval_char_accuracy': per_char}
  return judge.params, info


@dataclasses.dataclass(frozen=True, eq=False)
class Judge:
  """A trained GlyphNet and the glyph set it reads."""
  module: GlyphNet
  params: dict
  image_size: int
  alphabet: str
  max_chars: int
  info: dict = dataclasses.field(default_factory=dict)  # see train_judge

  def _forward(self, images) -> tuple[np.ndarray, np.ndarray]:
    """images [N, S, S, 3] (float in [-1, 1], clipped; or uint8) -> ([N, F], [N, L, K])."""
    images = np.asarray(images)
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise ValueError(f'The glyph judge reads RGB images [N, {s}, {s}, 3]; got shape '
                       f'{images.shape}. Sample at data.image_size={s} with 3 channels.')
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 127.5 - 1.0
    images = np.clip(images.astype(np.float32), -1.0, 1.0)
    n = len(images)
    pad = -n % _APPLY_BATCH
    images = np.concatenate([images, np.zeros((pad, s, s, 3), np.float32)])
    feats, logits = [], []
    for b in range(0, len(images), _APPLY_BATCH):
      f, l = _apply(self.module, self.params, images[b:b + _APPLY_BATCH])
      feats.append(np.asarray(f))
      logits.append(np.asarray(l))
    return np.concatenate(feats)[:n], np.concatenate(logits)[:n]

  def features(self, images) -> np.ndarray:
    """Penultimate features of ``images`` [N, S, S, 3]: float64 [N, F] (for Fréchet distance)."""
    return self._forward(images)[0].astype(np.float64)

  def predict(self, images) -> np.ndarray:
    """Read text as per-slot ids (0 = blank): int32 [N, max_chars]."""
    return self._forward(images)[1].argmax(-1).astype(np.int32)

  def accuracy(self, images, labels) -> float:
    """Exact-string match rate of ``predict(images)`` vs ``labels`` [N, max_chars]."""
    return match_rates(self.predict(images), labels)[0]

  def char_accuracy(self, images, labels) -> float:
    """Per-character match rate over the non-blank slots of ``labels`` [N, max_chars]."""
    return match_rates(self.predict(images), labels)[1]


def frechet_distance(feats_a, feats_b) -> float:
  """FD between Gaussians fitted to ``feats_a`` [N, F] and ``feats_b`` [M, F] (float64).

      FD = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})    (Heusel et al. 2017)

  Without scipy: ``tr((S_a S_b)^{1/2}) = sum_i sqrt(lambda_i)``, lambda_i the eigenvalues of the
  symmetric PSD ``S_a^{1/2} S_b S_a^{1/2}`` (similar to ``S_a S_b``), with ``S_a^{1/2}`` from a
  symmetric eigendecomposition; tiny negative eigenvalues (round-off) are clipped to 0.
  Covariances are unbiased (ddof=1).
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'Feature sets must be [N, F] with the same F; got {a.shape} and {b.shape}.')
  if min(len(a), len(b)) < 2:
    raise ValueError(f'Need >= 2 samples per set for a covariance; got {len(a)} and {len(b)}.')
  mu_a, mu_b = a.mean(0), b.mean(0)  # [F]
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # [F, F]
  w, v = np.linalg.eigh(s_a)
  sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^{1/2}
  m = sqrt_a @ s_b @ sqrt_a
  lam = np.linalg.eigvalsh((m + m.T) / 2)
  tr_sqrt = float(np.sqrt(np.clip(lam, 0, None)).sum())
  fd = float(((mu_a - mu_b)**2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)
  return max(fd, 0.0)


def glyph_metrics(judge: Judge, samples, labels, reference_images) -> dict:
  """FD of ``samples`` vs ``reference_images`` (both [N, S, S, 3]) and how well the judge reads
  the requested ``labels`` [N, max_chars] in the samples (None: unconditional -> NaN accuracy),
  from one pass of the judge over the samples.

  Returns ``{'fd': float, 'accuracy': float, 'char_accuracy': float, 'by_length': {n: {'count',
  'accuracy', 'char_accuracy'}}}`` (``match_rates_by_length``; empty when unconditional).
  """
  feats, logits = judge._forward(samples)
  fd = frechet_distance(feats.astype(np.float64), judge.features(reference_images))
  if labels is None:
    return {'fd': fd, 'accuracy': float('nan'), 'char_accuracy': float('nan'), 'by_length': {}}
  pred = logits.argmax(-1).astype(np.int32)
  exact, per_char = match_rates(pred, labels)
  return {'fd': fd, 'accuracy': exact, 'char_accuracy': per_char,
          'by_length': match_rates_by_length(pred, labels)}


# ---------------------------------------------------------------------------------------------
# Cache.

def _cache_path(cache_dir: str, key: dict) -> Path:
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  root = cache_root(types.SimpleNamespace(cache_dir=cache_dir))
  return Path(root) / 'glyph_judge' / f"{key['image_size']}px-{digest}.msgpack"


def load_judge(image_size: int = 32, alphabet: str = DEFAULT_ALPHABET, max_chars: int = 3,
               cache_dir: str = '', *, steps: int = DEFAULT_STEPS,
               batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, stroke: float = 0.0) -> Judge:
  """The judge for this glyph set: loaded from the cache, or trained once (1-3 CPU minutes)
  and cached (atomic write) under ``<cache root>/glyph_judge/``.

  The cache key covers everything that changes the judge: ``GLYPH_VERSION``, the Pillow
  version (its built-in font), image_size, alphabet, max_chars, the letter weight ``stroke``
  (keyed only when non-zero, so regular-weight caches stay valid), ``JUDGE_VERSION`` and the
  training settings; ``cache_dir`` '' = $JAX_PARADIGMS_CACHE or ~/.cache/jax_paradigms.
  """
  check_alphabet(alphabet, max_chars)
  module = GlyphNet(num_classes=len(alphabet) + 1, max_chars=max_chars)
  key = {'glyph_version': GLYPH_VERSION, 'pillow': PIL.__version__, 'image_size': image_size,
         'alphabet': alphabet, 'max_chars': max_chars, 'judge_version': JUDGE_VERSION,
         'steps': steps, 'batch_size': batch_size, 'seed': seed}
  if stroke:
    key['stroke'] = stroke
  path = _cache_path(cache_dir, key)
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros([1, image_size, image_size, 3]))
  try:
    stored = flax.serialization.msgpack_restore(path.read_bytes())
    params, info = stored['params'], stored['info']
    if (jax.tree.structure(params) != jax.tree.structure(shapes) or
        [p.shape for p in jax.tree.leaves(params)] != [s.shape for s in jax.tree.leaves(shapes)]):
      raise ValueError('stale layout')
    return Judge(module, params, image_size, alphabet, max_chars, info)
  except FileNotFoundError:
    pass
  except Exception as err:  # a truncated/foreign file: retrain and overwrite it
    print(f'glyph_judge: ignoring unreadable cache {path} ({err})', file=sys.stderr)
  print(f'glyph_judge: training the {image_size}px glyph judge ({steps} steps, once; cached '
        f'at {path})', file=sys.stderr)
  params, info = train_judge(image_size=image_size, alphabet=alphabet, max_chars=max_chars,
                             steps=steps, batch_size=batch_size, seed=seed, stroke=stroke)
  _write_atomic(path, flax.serialization.msgpack_serialize({'params': params, 'info': info}))
  print(f"glyph_judge: trained in {info['train_seconds']:.0f}s, held-out exact-string accuracy "
        f"{info['eval_accuracy']:.4f}", file=sys.stderr)
  return Judge(module, params, image_size, alphabet, max_chars, info)


def _write_atomic(path: Path, payload: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
