"""Per-file `gzip -9` bits per byte on the held-out files of the embedded corpus.

    python benchmarks/gzip_baseline.py [--config configs/ar_code.py:small]

The reference a byte-level LM's held-out bits per byte should beat: every held-out file is
compressed on its own (as `gzip -9 file` would), and bpb = 8 * sum(compressed) / sum(raw).
Prints one JSON object.
"""
import argparse
import gzip
import json
import os
import sysconfig

from train.config import from_file
from pipelines.text import is_held_out


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/ar_code.py:small')
  args = p.parse_args(argv)
  c = from_file(args.config).data
  if c.source != 'cpython':
    raise SystemExit('this baseline is defined for data.source=cpython')
  root = sysconfig.get_paths()['stdlib']
  raw = packed = files = 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in ('site-packages', 'dist-packages')]
    for name in filenames:
      if not name.endswith('.py'):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root).replace(os.sep, '/')
      if not is_held_out(rel, c.holdout_fraction):
        continue
      with open(path, 'rb') as f:
        data = f.read()
      raw += len(data)
      packed += len(gzip.compress(data, compresslevel=9, mtime=0))
      files += 1
  print(json.dumps({'held_out_files': files, 'raw_bytes': raw, 'gzip9_bytes': packed,
                    'gzip9_bits_per_byte': 8 * packed / raw}))


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
