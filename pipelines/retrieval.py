"""Retrieval sets built from the embedded corpus, with no download (issue 26 item 5).

`code_retrieval(files)`: the documents are whole source files; each file gives up to two queries,
  - its first function or class docstring's first line (>= 16 characters), else the signature
    line of its first function ('docstring' / 'signature');
  - a passage of `passage_len` bytes cut from a random place of the file ('passage'),
and each query's one relevant document is its file. Built from held-out files only
(`held_out_files`), so an embedding model fine-tuned on training files has never seen them.
`passkey_retrieval(filler)`: LongEmbed's passkey task in our corpus: every document is
`doc_len` bytes of distractor text (slices of `filler`) with one sentence
'The pass key of <name> is <5 digits>. Remember it.' at a uniformly random depth; the query
asks 'What is the pass key of <name>?', and the relevant document is the one holding that name.
Every choice is drawn from numpy's default_rng(seed): the sets are deterministic.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import warnings

import numpy as np


@dataclasses.dataclass
class RetrievalSet:
  queries: list  # [Q] str
  kinds: list  # [Q] str: 'docstring' | 'signature' | 'passage' | 'passkey'
  relevant: np.ndarray  # [Q] int: the index of each query's document in `docs`
  docs: list  # [D] str
  names: list  # [D] str: the file path (or the passkey's name) of each document
  offsets: np.ndarray | None = None  # [Q] int: byte offset of the query in its document

  def doc_lengths(self) -> np.ndarray:
    """UTF-8 bytes of each query's relevant document: int [Q] (for length buckets)."""
    return np.asarray([len(self.docs[i].encode()) for i in self.relevant])


def held_out_files(holdout_fraction: float = 0.05) -> list[tuple[str, str]]:
  """(relative path, text) of the CPython standard library's held-out .py files (the split of
  pipelines/text.py), sorted by path."""
  return files(holdout_fraction, held_out=True)


def _first_query(source: str) -> tuple[str, str] | None:
  """(query, kind): the first docstring's first line, else the first def's signature line."""
  try:
    with warnings.catch_warnings():  # some stdlib files have invalid escapes in strings
      warnings.simplefilter('ignore')
      tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return None
  lines = source.splitlines()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      doc = ast.get_docstring(node)
      first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ''
      if len(first) >= 16:
        return first, 'docstring'
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      return lines[node.lineno - 1].strip(), 'signature'
  return None


def code_retrieval(files, *, passage_len: int = 128, seed: int = 0) -> RetrievalSet:
  """The code retrieval set of `files` [(path, text)] (module doc)."""
  files = [(p, t) for p, t in files if t.strip()]
  if not files:
    raise ValueError('code_retrieval needs at least one non-empty file')
  rng = np.random.default_rng(seed)
  queries, kinds, relevant = [], [], []
  for i, (_, text) in enumerate(files):
    q = _first_query(text)
    if q is not None:
      queries.append(q[0])
      kinds.append(q[1])
      relevant.append(i)
    data = text.encode()
    if len(data) >= 2 * passage_len:
      start = int(rng.integers(0, len(data) - passage_len))
      queries.append(data[start:start + passage_len].decode('utf-8', errors='ignore'))
      kinds.append('passage')
      relevant.append(i)
  docs = [t for _, t in files]
  offsets = [docs[i].encode().find(q.encode()) for q, i in zip(queries, relevant)]
  return RetrievalSet(queries, kinds, np.asarray(relevant, np.int64), docs,
                      [p for p, _ in files], np.asarray(offsets, np.int64))


def passkey_retrieval(filler: str, *, n_docs: int = 32, doc_len: int = 4096,
                      seed: int = 0) -> RetrievalSet:
  """The passkey set (module doc): n_docs documents of doc_len bytes, one query each."""
  data = filler.encode()
  if n_docs < 2 or len(data) < doc_len:
    raise ValueError(f'passkey_retrieval needs n_docs >= 2 (got {n_docs}) and at least doc_len='
                     f'{doc_len} bytes of filler (got {len(data)})')
  rng = np.random.default_rng(seed)
  docs, queries, names = [], [], []
  for k in range(n_docs):
    name = f'agent-{k:03d}'
    key = int(rng.integers(10_000, 100_000))
    needle = f' The pass key of {name} is {key}. Remember it. '.encode()
    start = int(rng.integers(0, len(data) - doc_len + 1))
    body = data[start:start + doc_len - len(needle)]
    depth = int(rng.integers(0, len(body) + 1))
    docs.append((body[:depth] + needle + body[depth:]).decode('utf-8', errors='ignore'))
    queries.append(f'What is the pass key of {name}?')
    names.append(name)
  return RetrievalSet(queries, ['passkey'] * n_docs, np.arange(n_docs), docs, names)


# --- Contrastive training pairs (data.source='retrieval') --------------------------------------

PAD = 257  # the byte tokenizer's MASK id: never a text byte (paradigms.embedding.Options.pad_id)


def files(holdout_fraction: float, held_out: bool) -> list[tuple[str, str]]:
  """(path, text) of the stdlib .py files on one side of pipelines/text.py's split."""
  from pipelines import text
  root, relpaths, _, _ = text._load_cpython(None)
  out = []
  for p in relpaths:
    if text.is_held_out(p, holdout_fraction) == held_out:
      with open(os.path.join(root, p), encoding='utf-8', errors='replace') as f:
        out.append((p, f.read()))
  return out


def encode_bytes(text: str, length: int) -> np.ndarray:
  """UTF-8 bytes of `text`, truncated to `length` and right-padded with PAD: int32 [length]."""
  data = np.frombuffer(text.encode()[:length], np.uint8).astype(np.int32)
  return np.concatenate([data, np.full(length - len(data), PAD, np.int32)])


def pairs(s: RetrievalSet, *, query_len: int, doc_len: int) -> dict:
  """Every (query, relevant document) of `s` as byte arrays: {'query': int32 [Q, query_len],
  'doc': int32 [Q, doc_len]}. A query longer than query_len keeps its first bytes; a document
  longer than doc_len is cut to the doc_len-byte chunk that holds its query (centred on it where
  the file allows; the file's head when the query is not a substring)."""
  docs = []
  for q, i, off in zip(s.queries, s.relevant, s.offsets if s.offsets is not None else
                       [-1] * len(s.queries)):
    data = s.docs[i].encode()
    qn = min(len(q.encode()), query_len)
    start = 0 if off < 0 else int(np.clip(off - (doc_len - qn) // 2, 0,
                                          max(len(data) - doc_len, 0)))
    docs.append(encode_bytes(data[start:start + doc_len].decode('utf-8', errors='ignore'),
                             doc_len))
  return {'query': np.stack([encode_bytes(q, query_len) for q in s.queries]),
          'doc': np.stack(docs)}


class _RandomPair:
  """grain random_map: element index -> one random (query, document) pair of the set."""

  def __init__(self, data: dict):
    self.data = data

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    k = int(rng.integers(0, len(self.data['query'])))
    return {name: a[k] for name, a in self.data.items()}


def open_pairs(cfg):
  """The 'retrieval' source: (query, file) pairs of training files for contrastive training
  and of held-out files for evaluation (module doc; queries of data.query_len bytes, documents
  the data.seq_len-byte chunk of the file holding the query: `pairs`). Returns pipelines.sources.Data."""
  from pipelines.sources import Data
  from pipelines.streams import random_stream
  frac = cfg.get('holdout_fraction', 0.05)
  limit, qlen = cfg.seq_len, cfg.query_len
  train = pairs(code_retrieval(files(frac, False), passage_len=qlen, seed=cfg.get('seed', 0)),
                query_len=qlen, doc_len=limit)
  held = pairs(code_retrieval(files(frac, True), passage_len=qlen, seed=1), query_len=qlen,
               doc_len=limit)

  def train_dataset(*, batch_size, seed, process_index=0, process_count=1):
    if batch_size > len(train['query']):
      raise ValueError(f'data.batch_size={batch_size} is more than the {len(train["query"])} '
                       'training pairs; lower it')
    return random_stream(_RandomPair(train), batch_size=batch_size, seed=seed,
                         process_index=process_index, process_count=process_count)

  def eval_batches(*, batch_size, num_batches=0):
    n = len(held['query']) // batch_size
    if n < 1:
      raise ValueError(f'the {len(held["query"])} held-out pairs do not fill one batch of '
                       f'{batch_size}; lower data.batch_size')
    n = n if not num_batches else min(n, num_batches)
    return [{k: v[b * batch_size:(b + 1) * batch_size] for k, v in held.items()}
            for b in range(n)]

  return Data(train_dataset=train_dataset, eval_batches=eval_batches,
              description=f'retrieval pairs: {len(train["query"])} training, '
                          f'{len(held["query"])} held-out (queries {qlen} bytes, documents the '
                          f'{limit}-byte chunk of the file that holds the query)', unit='pairs')
