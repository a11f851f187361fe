"""Run logging: JSONL rows in the workdir, TensorBoard when installed, a tqdm progress bar.

Every row carries `step`; training rows carry `loss`, evaluation rows carry `eval_*` keys.
Only process 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import warnings

import jax


class MetricsWriter:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl` (and TensorBoard if present)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):  # drop rows a killed run logged after its last checkpoint
      rows = [line for line, row in read_rows(self.path) if row['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(rows)
    self.tb = _tensorboard(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, row: dict) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: _py(v) for k, v in row.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self.tb is not None:
      for k, v in row.items():
        if k != 'step' and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_rows(path: str) -> list[tuple[str, dict]]:
  """(line, row) of every readable line of a metrics.jsonl. A torn line (a kill or a full disk in
  the middle of a write) is skipped with a warning naming it, so it never blocks a resume."""
  out, torn = [], []
  with open(path, errors='replace') as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or 'step' not in row:
          raise ValueError('no step')
      except ValueError:
        torn.append(i)
        continue
      out.append((line if line.endswith('\n') else line + '\n', row))
  if torn:
    warnings.warn(f'{path}: skipped {len(torn)} unreadable line(s) (line {", ".join(map(str, torn[:5]))}'
                  '; a write cut short by a kill or a full disk)', stacklevel=2)
  return out


def _py(v):
  v = float(v) if not isinstance(v, (str, bool, int)) else v
  return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def _tensorboard(logdir: str):
  """A SummaryWriter from tensorboardX or torch if either is installed, else None."""
  for module in ('tensorboardX', 'torch.utils.tensorboard'):
    try:
      mod = __import__(module, fromlist=['SummaryWriter'])
      return mod.SummaryWriter(logdir)
    except Exception:  # not installed, or broken: TensorBoard is optional
      continue
  return None


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar over optimiser steps (disabled on non-zero processes or when asked)."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, disable=not enabled or jax.process_index() != 0,
              unit='step', dynamic_ncols=True, smoothing=0.1)
