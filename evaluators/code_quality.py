"""An external judge of code samples: how much of a sample is valid Python.

    score(text) = k* / n,   k* = max { k : ast.parse(first k lines) succeeds },  n = #lines

The longest whole-line prefix that Python's own parser accepts, as a share of the sample's
lines. It is independent of every model here, cheap, and monotone in what a reader cares about
(a sample that derails after 3 lines scores low however fluent the rest looks).
"""
from __future__ import annotations

import ast
import warnings


def parse_prefix_score(text: str) -> float:
  """Share of lines in the longest whole-line prefix of `text` that `ast.parse` accepts."""
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines = lines[:-1]  # a trailing newline ends the last line; it is not an extra line
  n = len(lines)
  if n == 0:
    return 0.0
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # invalid escape sequences etc. in generated code
    for k in range(n, 0, -1):
      try:
        ast.parse('\n'.join(lines[:k]))
        return k / n
      except (SyntaxError, ValueError, MemoryError, RecursionError):
        continue
  return 0.0


def mean_score(texts) -> float:
  texts = list(texts)
  return sum(parse_prefix_score(t) for t in texts) / max(len(texts), 1)
