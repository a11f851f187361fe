"""The one seam between the trainer and its data: `open_data(config.data) -> Data`.

Token sources ('cpython' | 'text' | 'tokens') live in train/data.py, image sources ('glyphs' |
'images' | 'npz') in train/image_data.py. The trainer, `python -m train.evaluate` and the
benchmarks only see `Data`, so a new source is one loader plus one line in `SOURCES`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

TOKEN_SOURCES = ('cpython', 'text', 'tokens')
IMAGE_SOURCES = ('glyphs', 'images', 'npz')
SOURCES = TOKEN_SOURCES + IMAGE_SOURCES


@dataclasses.dataclass(frozen=True)
class Data:
  """What a run needs from a source.

  train_dataset(batch_size=, seed=, process_index=, process_count=) -> grain.IterDataset of
      this process's rows of each global batch (resumable through the iterator's state);
  eval_batches(batch_size=, num_batches=) -> list of held-out numpy batches (0 = the source's
      default full pass);
  description: one log line; bytes_per_token: 1.0 for byte-level text (bits per token are
      bits per byte), else None; unit, items_per_example: what throughput counts ('tokens',
      seq_len per example; 'images', 1).
  """
  train_dataset: Callable
  eval_batches: Callable
  description: str
  bytes_per_token: float | None = None
  unit: str = 'tokens'
  items_per_example: int = 1


def open_data(cfg) -> Data:
  """The source that `cfg` (config.data) names, ready for the trainer."""
  source = cfg.source
  if source in IMAGE_SOURCES:
    return _open_images(cfg)
  if source not in TOKEN_SOURCES:
    raise ValueError(f'Unknown data.source={source!r}; use one of {SOURCES}.')
  from train import data
  corpus = data.load_corpus(cfg)
  return Data(train_dataset=functools.partial(data.train_dataset, corpus.train, seq_len=cfg.seq_len),
              eval_batches=functools.partial(data.eval_batches, corpus.eval, seq_len=cfg.seq_len),
              description=data.describe(corpus), bytes_per_token=corpus.bytes_per_token,
              items_per_example=cfg.seq_len)


def _open_images(cfg) -> Data:
  """Image sources; labels are padded with the null id 0 to `data.max_chars` slots (the label
  length every image model is built with), e.g. a class id [id + 1] -> [id + 1, 0, 0]."""
  from train import image_data
  L = image_data.label_len(cfg)
  if L > cfg.max_chars:
    raise ValueError(f'{image_data.describe(cfg)} has labels of {L} slots; set '
                     f'--config.data.max_chars={L} (the model takes that many label slots).')
  pad = _LabelPad(cfg.max_chars)

  def train_dataset(**kw):
    return image_data.train_dataset(cfg, **kw).map(pad)

  def eval_batches(**kw):
    return [pad(b) for b in image_data.eval_batches(cfg, **kw)]

  return Data(train_dataset=train_dataset, eval_batches=eval_batches,
              description=image_data.describe(cfg), unit='images')


@dataclasses.dataclass(frozen=True)
class _LabelPad:
  slots: int

  def __call__(self, batch: dict) -> dict:
    label = batch['label']  # [B, L] int32
    if label.shape[1] == self.slots:
      return batch
    out = np.zeros(label.shape[:1] + (self.slots,), np.int32)
    out[:, :label.shape[1]] = label
    return {**batch, 'label': out}
