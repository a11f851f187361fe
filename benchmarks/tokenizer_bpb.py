"""Byte-level vs BPE tokenizers at equal wall-clock, in bits per byte of held-out text.

  python benchmarks/tokenizer_bpb.py                     # bytes, bpe:4096, bpe:16384; 8 min each
  python benchmarks/tokenizer_bpb.py --minutes 2 --tokenizers ,bpe:4096 --set train.lr=2e-3

For each tokenizer: configs/ar_code.py:small on the embedded corpus (the CPython standard
library) with `data.text_tokenizer` set and `model.vocab_size` = the tokenizer's size; a
calibration run (--calibrate steps, compile excluded) measures the seconds per step, the step
count is set so that training takes --minutes, the run trains with its cosine schedule over
those steps, and `train.evaluate` scores the whole held-out split. Bits per byte are
comparable across tokenizers: the held-out bytes (plus one per document break, as the byte
level counts its EOS) over the model's total bits. Training the BPE (on the training files
only) and encoding the corpus happen once, before the clock, and are cached.

Prints one JSON object per tokenizer and appends it to benchmarks/results/tokenizer_bpb.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from results_io import emit  # noqa: E402  (benchmarks/results_io.py, this script's folder)


def _config(tokenizer: str, sets: list[str]):
  from pipelines.subword import resolve_tokenizer
  from train.config import from_file
  c = from_file(os.path.join(ROOT, 'configs', 'ar_code.py:small'))
  c.data.text_tokenizer = tokenizer
  c.model.vocab_size = resolve_tokenizer(c.data).vocab_size  # trains and caches a BPE once
  c.train.progress = False
  for item in sets:
    key, _, value = item.partition('=')
    section, _, field = key.partition('.')
    c[section][field] = type(c[section][field])(json.loads(value) if value[:1] in '[{' else value)
  return c


def _seconds_per_step(config, steps: int, workdir: str) -> float:
  """Mean step time of a short run, measured from its metrics (the first step's compile and
  the evaluation excluded)."""
  from train.trainer import train
  c = config.copy_and_resolve_references()
  c.train.update(steps=steps + 1, eval_every=10 ** 6, ckpt_every=10 ** 6, log_every=steps + 1,
                 warmup_steps=1)
  t0 = time.perf_counter()
  last = train(c, workdir)
  rate = last.get('tokens_per_s')
  if rate:
    return c.data.batch_size * c.data.seq_len / rate
  return (time.perf_counter() - t0) / (steps + 1)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--tokenizers', default=',bpe:4096,bpe:16384', help="comma list; '' = bytes")
  p.add_argument('--minutes', type=float, default=8.0, help='training wall-clock per tokenizer')
  p.add_argument('--calibrate', type=int, default=20)
  p.add_argument('--set', action='append', default=[], help='config override, e.g. train.lr=2e-3')
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'tokenizer_bpb.jsonl'))
  args = p.parse_args(argv)
  import jax
  from train.evaluate import evaluate_run
  from train.trainer import train
  for tok in args.tokenizers.split(','):
    config = _config(tok, args.set)
    with tempfile.TemporaryDirectory() as tmp:
      per_step = _seconds_per_step(config, args.calibrate, os.path.join(tmp, 'calibrate'))
      steps = max(20, int(args.minutes * 60 / per_step))
      config.train.update(steps=steps, eval_every=steps, ckpt_every=steps,
                          warmup_steps=min(config.train.warmup_steps, steps // 10))
      t0 = time.perf_counter()
      train(config, os.path.join(tmp, 'run'))
      wall = time.perf_counter() - t0
      ev = evaluate_run(os.path.join(tmp, 'run'))
    row = {'bench': 'tokenizer_bpb', 'tokenizer': tok or 'bytes',
           'vocab_size': int(config.model.vocab_size), 'steps': steps,
           'seconds_per_step': per_step, 'train_wall_s': wall,
           'tokens_seen': steps * config.data.batch_size * config.data.seq_len,
           'heldout_bits_per_token': ev.get('bits_per_token'), 'heldout_bpb': ev.get('bpb'),
           'heldout_tokens': ev.get('tokens'), 'params': None,
           'device': jax.devices()[0].device_kind, 'date': time.strftime('%Y-%m-%d')}
    from train.config import model_config
    row['params'] = model_config(config).num_params()
    emit(row, args.out)


if __name__ == '__main__':
  main()
