"""Bits per token and per byte: the likelihood judges of every paradigm's `evaluate` sums.

A paradigm's `evaluate(params, batch, rng, ...)` returns sums over a batch: {'nats', 'tokens'}
(a negative log-likelihood or its NELBO bound, in nats), optionally {'nats_sq', 'draws'} (a
Monte-Carlo bound's second moment), and '<name>_sum' / 'count' pairs of other means. Summed over
held-out batches, `summarize` turns them into the figures the trainer, `python -m train.evaluate`
and the arena report:

    bits/token = sum nats / (sum tokens * ln 2),   bits/byte = bits/token / bytes_per_token
"""
from __future__ import annotations

import numpy as np


def summarize(sums: dict, bytes_per_token: float | None, prefix: str = '') -> dict:
  """Evaluation sums -> bits per token (and per byte); with a Monte-Carlo bound ('nats_sq',
  'draws' from a stochastic evaluate), also its standard error. Sums '<name>_sum' over 'count'
  items become means '<prefix><name>' (with or without 'nats')."""
  means = {prefix + k[:-4]: v / sums['count'] for k, v in sums.items()
           if k.endswith('_sum') and 'count' in sums}
  if 'nats' not in sums:
    return means
  bits = sums['nats'] / sums['tokens'] / np.log(2)
  out = {f'{prefix}bits_per_token': bits}
  if 'nats_sq' in sums:
    mean = sums['nats'] / sums['tokens']
    var = max(sums['nats_sq'] / sums['draws'] - mean ** 2, 0.0)
    out[f'{prefix}bits_per_token_se'] = float(np.sqrt(var / sums['draws']) / np.log(2))
  if bytes_per_token:
    for k in list(out):
      out[k.replace('bits_per_token', 'bpb')] = out[k] / bytes_per_token
  return {**out, **means}
