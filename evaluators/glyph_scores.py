"""Scores of what a glyph reader read and of image features: numpy only, no model.

- ``match_rates``: exact-string and per-character rates of predicted slot ids against the
  requested labels, also by string length (``match_rates_by_length``) and for seen vs held-out
  strings (``match_rates_by_split``).
- ``frechet_distance``: the FID formula (Heusel et al. 2017) on any two feature sets,
      FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

The glyph judge (evaluators/glyph_judge.py) supplies the predictions and features; the arena and
the tests call these on its outputs or on hand-made arrays.
"""
from __future__ import annotations

import numpy as np

from pipelines.glyphs import DEFAULT_HELDOUT_STRINGS, decode_label, is_held_out_string


def _aligned(pred, labels):
  """pred [N, J], labels [N, L] with L <= J (a judge may read longer strings than a set holds)
  -> both [N, J], the labels padded with blanks (so reading extra characters is a miss)."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if (labels.ndim != 2 or pred.ndim != 2 or pred.shape[0] != labels.shape[0]
      or labels.shape[1] > pred.shape[1]):
    raise ValueError(f'labels have shape {labels.shape} but predictions {pred.shape}; give one '
                     'per-slot label row [N, max_chars] per image (max_chars <= the judge\'s).')
  return pred, np.pad(labels, ((0, 0), (0, pred.shape[1] - labels.shape[1])))


def match_rates(pred, labels) -> tuple[float, float]:
  """(exact-string rate, per-character rate) of predicted slot ids ``pred`` [N, L] vs ``labels``.

  Rows whose label is all null (0: unconditional samples) are skipped; the per-character rate
  counts the non-blank label slots. NaN when no row / slot counts.
  """
  pred, labels = _aligned(pred, labels)
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
  width = np.asarray(labels).shape[-1]
  pred, labels = _aligned(pred, labels)
  lengths = (labels > 0).sum(-1)  # [N]
  out = {}
  for n in range(1, width + 1):
    rows = lengths == n
    exact, per_char = match_rates(pred[rows], labels[rows])
    out[n] = {'count': int(rows.sum()), 'accuracy': exact, 'char_accuracy': per_char}
  return out


def match_rates_by_split(pred, labels, alphabet: str,
                         heldout_strings: float = DEFAULT_HELDOUT_STRINGS) -> dict[str, dict]:
  """``match_rates`` and ``match_rates_by_length`` for rows whose requested string is 'seen'
  (trained on) and those whose string is 'held-out' (pipelines.glyphs.is_held_out_string):
  ``{'seen' | 'held-out': {'count', 'accuracy', 'char_accuracy', 'by_length'}}``
  (``pred``, ``labels`` int32 [N, max_chars]; all-null rows are skipped)."""
  width = np.asarray(labels).shape[-1]
  pred, labels = _aligned(pred, labels)
  held = np.array([is_held_out_string(decode_label(row, alphabet), heldout_strings)
                   for row in labels], bool).reshape(-1)  # [N]
  counted = (labels > 0).any(-1)  # [N]
  out = {}
  for name, rows in (('seen', ~held), ('held-out', held)):
    exact, per_char = match_rates(pred[rows], labels[rows])
    out[name] = {'count': int((rows & counted).sum()), 'accuracy': exact,
                 'char_accuracy': per_char,
                 'by_length': match_rates_by_length(pred[rows], labels[rows, :width])}
  return out


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
