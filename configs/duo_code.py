"""Uniform-state discrete diffusion (UDLM's NELBO; the base model of DUO) on the CPython standard
library's source (byte level).

  python -m train --config configs/duo_code.py:small --workdir runs/duo_code
  python -m sample --workdir runs/duo_code --prompt 'def ' --num 2 [--steps 64 --strategy greedy_tail]
  python -m train.evaluate --workdir runs/duo_code        # the held-out NELBO in bits/byte

The presets, data and optimiser of configs/ar_code.py (and configs/mdlm_code.py), with a
bidirectional mask, the uniform chain over the 257 byte-and-separator states and the log-linear
schedule alpha_t = 1 - (1 - 1e-3) t (paradigms/duo.py). The network is conditioned on t through
the adaLN hook (model.cond_dim = 16).

`P[,curriculum|distill]`:
  curriculum  DUO's stage 1: the Gaussian-guided curriculum (loss.curriculum_tau = 1e-3, t drawn
              where alpha_t is in [0.05, 0.95]); stage 2 is the plain config from it:
                python -m train --config configs/duo_code.py:small,curriculum --workdir runs/duo_cl
                python -m train --config configs/duo_code.py:small --workdir runs/duo_code \
                    --config.train.init_from=runs/duo_cl
  distill     discrete consistency distillation of a trained run (train.init_from, default
              runs/duo_code): 5 rounds, delta = 1/64 doubling each round, the teacher refreshed
              per round, EMA 0.99; then sample with few steps:
                python -m train --config configs/duo_code.py:small,distill --workdir runs/duo_dcd
                python -m sample --workdir runs/duo_dcd --prompt 'def ' --steps 8 --strategy greedy_tail
"""
import dataclasses
import os

import ml_collections

from paradigms.duo import Options
from train.config import config_arg, from_file


def get_config(arg: str = 'small'):
  preset, variants = config_arg(arg, {'tiny': 0, 'small': 0, 'base': 0},
                                ('curriculum', 'distill'), 'configs/duo_code.py')
  if len(variants) > 1:
    raise ValueError(f'{arg!r}: curriculum and distill are separate runs; name one')
  c = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'ar_code.py:{preset}'))
  c.unlock()
  c.paradigm = 'duo'
  c.model.mask = 'bidirectional'
  c.model.cond_dim = 16  # sinusoidal features of t: +6 d (16 + 1) params per block
  opt = Options()
  if 'curriculum' in variants:
    opt = Options(curriculum_tau=1e-3)
  if 'distill' in variants:
    rounds, per_round = 5, (2 if preset == 'tiny' else 200)
    opt = Options(distill_delta=1 / 64, distill_round_steps=per_round)
    # EMA 0.99 (half-life ~70 updates): at 0.999 a 1000-update run would keep 0.999^1000 = 37%
    # of the undistilled start in the EMA the sampler reads
    c.train.update(steps=rounds * per_round, init_from='runs/duo_code', lr=1e-4,
                   warmup_steps=min(50, per_round), ema_decay=0.99)
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(opt))
  c.lock()
  return c
