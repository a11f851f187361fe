"""Retrieval metrics for embedding models (issue 26 item 5): recall@k and nDCG@k of one relevant
document per query, overall and by document-length bucket.

    scores = q @ d.T                                # [Q, D] similarities
    r = ranks(scores, relevant)                     # [Q] 0-based rank of each query's document
    recall_at(r, 10), ndcg_at(r, 10)
    by_bucket(r, doc_lengths[relevant])             # {'<256': {...}, '256-1k': ..., ...}

With one relevant document, nDCG@k = 1 / log2(rank + 2) when rank < k, else 0 (the ideal DCG is
1). Ties are broken against the query (a document scoring equal to the relevant one counts as
ranked before it), so a constant scorer gets no credit.
"""
from __future__ import annotations

import numpy as np

BUCKETS = (256, 1024, 4096, 8192)  # document length edges in bytes (issue 26: 256, 1k, 4k, 8k+)


def ranks(scores, relevant) -> np.ndarray:
  """scores [Q, D], relevant int [Q] (the index of each query's document) -> int [Q]: the
  number of documents scoring at least as high as the relevant one, itself excluded."""
  scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant)
  if scores.ndim != 2 or relevant.shape != (scores.shape[0],):
    raise ValueError(f'scores must be [Q, D] and relevant [Q]; got {scores.shape} and '
                     f'{relevant.shape}')
  if relevant.size and not (0 <= relevant.min() and relevant.max() < scores.shape[1]):
    raise ValueError(f'relevant ids must be in [0, {scores.shape[1]})')
  own = scores[np.arange(len(relevant)), relevant][:, None]
  return (scores >= own).sum(1) - 1


def recall_at(r, k: int) -> float:
  """Share of queries whose document is in the top k."""
  r = np.asarray(r)
  return float(np.mean(r < k)) if r.size else float('nan')


def query_ndcg(r, k: int = 10) -> np.ndarray:
  """Per-query nDCG@k with one relevant document: 1 / log2(rank + 2) inside the top k, else 0.
  r int [Q] -> float [Q]."""
  r = np.asarray(r)
  return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def ndcg_at(r, k: int = 10) -> float:
  """Mean nDCG@k with one relevant document per query."""
  r = np.asarray(r)
  return float(np.mean(query_ndcg(r, k))) if r.size else float('nan')


def bucket_names(edges=BUCKETS) -> list[str]:
  fmt = lambda n: f'{n // 1024}k' if n >= 1024 else str(n)
  names = [f'<{fmt(edges[0])}']
  names += [f'{fmt(a)}-{fmt(b)}' for a, b in zip(edges, edges[1:])]
  return names + [f'{fmt(edges[-1])}+']


def bucket_index(lengths, edges=BUCKETS) -> np.ndarray:
  """Each length's bucket: int [Q] in [0, len(edges)], the index into bucket_names(edges)."""
  return np.searchsorted(np.asarray(edges), np.asarray(lengths), side='right')


def by_bucket(r, lengths, edges=BUCKETS) -> dict:
  """{bucket: {'count', 'recall@1', 'recall@10', 'ndcg@10'}} by the relevant document's length
  (lengths int [Q], bytes)."""
  r, which = np.asarray(r), bucket_index(lengths, edges)
  out = {}
  for b, name in enumerate(bucket_names(edges)):
    sel = r[which == b]
    out[name] = {'count': int(sel.size), 'recall@1': recall_at(sel, 1),
                 'recall@10': recall_at(sel, 10), 'ndcg@10': ndcg_at(sel, 10)}
  return out
