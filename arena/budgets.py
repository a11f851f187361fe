"""Budget presets shared by the text experiments: the contestants' network and the AR judge.

A budget sizes every experiment for a machine: `tiny` is a smoke run of a few minutes (the
tests run it), `small` an hour on a 2-core CPU (60 min from scratch), `gpu` one accelerator
slot of about 8 minutes per experiment (benchmarks/arena_gpu.sh; not yet run). Each
experiment module keeps its own experiment-specific knobs in a dict keyed the same way; the
contestants below are shared so that `speed`, `infill` and `blocks` compare the same
networks (same backbone, width, depth, data windows, optimiser and step count).
"""
from __future__ import annotations

BUDGETS = ('tiny', 'small', 'gpu')

# The text contestants (AR, MDLM, BD3): ConfigDict overrides of configs/ar_code.py:small.
TEXT = {
    'tiny': dict(model=dict(d_model=32, n_layers=2, n_heads=2, max_len=128),
                 data=dict(seq_len=32, batch_size=8),
                 train=dict(steps=30, warmup_steps=5, lr=3e-3, eval_batches=2)),
    'small': dict(model=dict(d_model=96, n_layers=3, n_heads=2, max_len=256),
                  data=dict(seq_len=128, batch_size=32),
                  train=dict(steps=500, warmup_steps=50, lr=3e-3, eval_batches=16)),
    # one 8-minute accelerator slot for `speed` (benchmarks/arena_gpu.sh): ~25M params, 1500
    # steps of 32k tokens, estimated ~20 s each on an H100 (BD3 twice that), not yet measured
    'gpu': dict(model=dict(d_model=512, n_layers=8, n_heads=8, max_len=1024, dtype='bfloat16'),
                data=dict(seq_len=512, batch_size=64),
                train=dict(steps=1500, warmup_steps=150, lr=1e-3, eval_batches=32)),
}

# The AR judge that scores text samples (bits per byte): larger and longer-trained than the
# contestants, on the same corpus.
JUDGE = {
    'tiny': dict(model=dict(d_model=32, n_layers=2, n_heads=2, max_len=256),
                 data=dict(seq_len=64, batch_size=8),
                 train=dict(steps=30, warmup_steps=5, lr=3e-3, eval_batches=2)),
    'small': dict(model=dict(d_model=128, n_layers=4, n_heads=2, max_len=512),
                  data=dict(seq_len=256, batch_size=16),
                  train=dict(steps=600, warmup_steps=50, lr=3e-3, eval_batches=16)),
    'gpu': dict(model=dict(d_model=640, n_layers=10, n_heads=10, max_len=1024, dtype='bfloat16'),
                data=dict(seq_len=512, batch_size=64),  # ~50M params, ~1 min estimated
                train=dict(steps=2000, warmup_steps=200, lr=1e-3, eval_batches=32)),
}


def check(budget: str) -> str:
  if budget not in BUDGETS:
    raise ValueError(f'unknown budget {budget!r}; choose one of {BUDGETS}')
  return budget

# The drafters of speculative decoding (arena speed): the contestants' recipe (data, steps,
# optimiser) at a quarter to a half of the width and fewer layers, so a draft call costs a
# fraction of a target call.
_DRAFT_MODEL = {'tiny': dict(d_model=16, n_layers=1), 'small': dict(d_model=48, n_layers=2),
                'gpu': dict(d_model=128, n_layers=4, n_heads=2)}
DRAFT = {b: {**TEXT[b], 'model': {**TEXT[b]['model'], **m}} for b, m in _DRAFT_MODEL.items()}
