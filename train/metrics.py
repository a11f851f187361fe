"""Run logging: JSONL rows in the workdir, TensorBoard when installed, a tqdm progress bar.

Every row carries `step`; training rows carry `loss`, evaluation rows carry `eval_*` keys.
Only process 0 writes.
"""
from __future__ import annotations

import json
import math
import os

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
      with open(self.path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
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
