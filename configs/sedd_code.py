"""SEDD (score entropy discrete diffusion) on the CPython standard library's source (byte level).

  python -m train --config configs/sedd_code.py:small --workdir runs/sedd_code            # uniform
  python -m train --config configs/sedd_code.py:small,absorb --workdir runs/sedd_absorb
  python -m sample --workdir runs/sedd_code --prompt 'def ' --num 2 [--steps 64 --strategy euler]
  python -m train.evaluate --workdir runs/sedd_code        # the held-out DWDSE bound in bits/byte

The presets, data and optimiser of configs/ar_code.py (and configs/mdlm_code.py), with a
bidirectional mask and the DWDSE loss (paradigms/sedd.py). Variants after the preset:
  (none)   the uniform chain over the 257 byte-and-separator states with SEDD's geometric schedule
           (sigma from 1e-4 to 20);
  absorb   the absorbing chain (mask id 257) with the log-linear schedule: MDLM's process in
           SEDD's parameterisation.
The network is conditioned on t through the adaLN hook (model.cond_dim = 16), which
adds 6 d (cond_dim + 1) parameters per block over the AR and MDLM models of the same preset.
"""
import dataclasses
import os

import ml_collections

from paradigms.sedd import Options
from train.config import config_arg, from_file


def get_config(arg: str = 'small'):
  preset, variants = config_arg(arg, {'tiny': 0, 'small': 0, 'base': 0}, ('absorb',),
                                'configs/sedd_code.py')
  c = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'ar_code.py:{preset}'))
  c.unlock()
  c.paradigm = 'sedd'
  c.model.mask = 'bidirectional'
  c.model.cond_dim = 16  # sinusoidal features of t: +6 d (16 + 1) params per block
  absorb = 'absorb' in variants
  opts = Options(graph='absorb' if absorb else 'uniform',
                 schedule='loglinear' if absorb else 'geometric')
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(opts))
  c.lock()
  return c
