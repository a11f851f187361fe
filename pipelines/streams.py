"""The one seeded training stream that every data source builds on (text windows, glyph images,
retrieval pairs).

Element ``i`` of the stream is ``element(i, rng)`` with ``rng`` seeded by ``(seed, i)`` alone, so
the stream is deterministic, resumable from ``iterator.get_state()`` and shardable across
processes without coordination.
"""
from __future__ import annotations

from typing import Callable

import grain
import numpy as np

_NUM_ELEMENTS = 2**40  # length of the stream: infinite for any real run


def random_stream(element: Callable[[int, np.random.Generator], dict], *, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The training stream of every source: element ``i`` is ``element(i, rng)`` with ``rng``
  seeded by ``(seed, i)`` only; process ``p`` of ``P`` keeps the ``i`` with ``i % P == p``;
  batches of ``batch_size // process_count`` (see ``pipelines.text.train_dataset``). Resumable
  and sharded."""
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  if batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} is not divisible by process_count='
                     f'{process_count}; make the global batch size a multiple of it.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, process_count={process_count}).')
  if not 0 <= seed < 2**32:
    raise ValueError(f'seed={seed} must be in [0, 2**32).')
  ds = grain.MapDataset.range(_NUM_ELEMENTS).seed(seed)
  ds = ds.random_map(element)
  ds = ds[process_index::process_count]
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
