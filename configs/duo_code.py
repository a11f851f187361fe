"""Uniform-state discrete diffusion (UDLM's NELBO; the base model of DUO) on the CPython standard
library's source (byte level).

  python -m train --config configs/duo_code.py:small --workdir runs/duo_code
  python -m sample --workdir runs/duo_code --prompt 'def ' --num 2 [--steps 64 --strategy greedy_tail]
  python -m train.evaluate --workdir runs/duo_code        # the held-out NELBO in bits/byte

The presets, data and optimiser of configs/ar_code.py (and configs/mdlm_code.py), with a
bidirectional mask, the uniform chain over the 257 byte-and-separator states and the log-linear
schedule alpha_t = 1 - (1 - 1e-3) t (paradigms/duo.py). The network is conditioned on t through
the adaLN hook (model.cond_dim = 16). DUO's Gaussian curriculum and consistency
distillation are not built yet.
"""
import dataclasses
import os

import ml_collections

from paradigms.duo import Options
from train.config import config_arg, from_file


def get_config(arg: str = 'small'):
  preset, _ = config_arg(arg, {'tiny': 0, 'small': 0, 'base': 0}, (), 'configs/duo_code.py')
  c = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'ar_code.py:{preset}'))
  c.unlock()
  c.paradigm = 'duo'
  c.model.mask = 'bidirectional'
  c.model.cond_dim = 16  # sinusoidal features of t: +6 d (16 + 1) params per block
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options()))
  c.lock()
  return c
