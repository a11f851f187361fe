"""One place for the benchmarks' result rows: print a row as JSON and append it to a JSONL file."""
from __future__ import annotations

import json
import os


def emit(row: dict, out: str, indent: int | None = None) -> None:
  """Print `row` as JSON on stdout and append it as one line to `out` ('' = print only)."""
  print(json.dumps(row, indent=indent), flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'a') as f:
      f.write(json.dumps(row) + '\n')
