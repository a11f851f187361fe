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

import numpy as np


@dataclasses.dataclass
class RetrievalSet:
  queries: list  # [Q] str
  kinds: list  # [Q] str: 'docstring' | 'signature' | 'passage' | 'passkey'
  relevant: np.ndarray  # [Q] int: the index of each query's document in `docs`
  docs: list  # [D] str
  names: list  # [D] str: the file path (or the passkey's name) of each document

  def doc_lengths(self) -> np.ndarray:
    """UTF-8 bytes of each query's relevant document: int [Q] (for length buckets)."""
    return np.asarray([len(self.docs[i].encode()) for i in self.relevant])


def held_out_files(holdout_fraction: float = 0.05) -> list[tuple[str, str]]:
  """(relative path, text) of the CPython standard library's held-out .py files (the split of
  pipelines/text.py), sorted by path."""
  from pipelines import text
  root, relpaths, _, _ = text._load_cpython(None)
  out = []
  for p in relpaths:
    if text.is_held_out(p, holdout_fraction):
      with open(os.path.join(root, p), encoding='utf-8', errors='replace') as f:
        out.append((p, f.read()))
  return out


def _first_query(source: str) -> tuple[str, str] | None:
  """(query, kind): the first docstring's first line, else the first def's signature line."""
  try:
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
  return RetrievalSet(queries, kinds, np.asarray(relevant, np.int64), [t for _, t in files],
                      [p for p, _ in files])


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
