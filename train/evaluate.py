"""Held-out evaluation of a saved run: python -m train.evaluate --workdir runs/ar_code [--batches 0]

Prints one JSON object with bits per token (and per byte for byte-level corpora). `--batches 0`
(the default) is a full pass over the held-out split; the trainer's periodic evaluation uses
`train.eval_batches` evenly spaced batches instead.
"""
from __future__ import annotations

import json
import time

import jax

import paradigms
from evaluators.likelihood import summarize
from pipelines.sources import open_data
from train.checkpoint import load_run, load_tokenizer
from train.cli import ArgumentParser, run_main


def evaluate_run(workdir: str, batches: int = 0, step: int | None = None, ema: bool | None = None,
                 seed: int = 0, loss: dict | None = None) -> dict:
  """Held-out sums of the run's `evaluate` over `batches` evenly spaced batches (0 = all),
  summarised; `loss` overrides keys of the saved config.loss (e.g. {'mask_all': True})."""
  config, model, params = load_run(workdir, step, ema)
  paradigm = paradigms.get(config.paradigm)
  data = open_data(config.data, load_tokenizer(config))
  evals = data.eval_batches(batch_size=config.data.batch_size, num_batches=batches)
  options = {**dict(config.loss), **(loss or {})}
  fn = jax.jit(lambda p, b, r: paradigm.evaluate(p, b, r, model=model, **options))
  sums = {}
  t0 = time.perf_counter()
  for i, b in enumerate(evals):
    r = jax.device_get(fn(params, b, jax.random.fold_in(jax.random.key(seed), i)))
    sums = {k: sums.get(k, 0.0) + float(v) for k, v in r.items()}
  count = sums['tokens'] if 'tokens' in sums else sums['count']
  out = {'workdir': workdir, 'paradigm': config.paradigm, data.unit: int(count),
         **summarize(sums, data.bytes_per_token), 'seconds': time.perf_counter() - t0}
  return out


def main(argv=None):
  p = ArgumentParser(prog='python -m train.evaluate', description=__doc__)
  p.add_argument('--workdir', required=True)
  p.add_argument('--batches', type=int, default=0, help='0 = the whole held-out split')
  p.add_argument('--step', type=int, default=None)
  args = p.parse_args(argv)
  print(json.dumps(evaluate_run(args.workdir, args.batches, args.step)))


if __name__ == '__main__':
  run_main(main)
