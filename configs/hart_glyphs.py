"""HART (VAR + a residual diffusion head) on the procedural glyph set, over a trained VQ-VAE.

  python -m train --config configs/vqvae_glyphs.py:small --workdir runs/vqvae_glyphs   # tokenizer
  python -m train --config configs/hart_glyphs.py:small --workdir runs/hart_glyphs
  python -m sample --workdir runs/hart_glyphs --num 16 --out grid.png --cfg 2.5 --top-k 100

Everything VAR has (configs/var_glyphs.py: the same presets, tokenizer pairing, sampling flags)
plus the MLP head on the tokenizer residual f - f_hat (data.tokenizer_residual=True) and its
loss options (loss.head_weight, loss.diffusion_mul). Sampling adds --steps (head solver steps,
default 8) on top of VAR's K passes.
Presets: the VAR presets, with a head of width 256 x 3 blocks (tiny: 32 x 1; base: 1024 x 6).
Measured, small on the bold glyphs of the 6000-step small tokenizer, started from the VAR small
run at 3000 steps (--config.train.init_from=runs/var_glyphs --config.train.init_into=var
--config.train.steps=300; 3.26M params, 16 min on 2 CPU cores, ~20 images/s): held-out 3.44
bits/token (VAR: 3.42), head flow MSE 0.040; judge (no guidance, head 8 steps) FD 125, 37.5% of
strings read (VAR: 156, 30.5%); a 48-sample w=3 grid with head 2 steps reads 62.5% (single
characters 100%, pairs 57%, triples 10%; VAR 56%). From scratch (regular-weight glyphs, 600
steps): 4.88 bits/token.
"""
import dataclasses
import os

import ml_collections

from paradigms.hybrid import HARTConfig, Options
from train.config import finalize, from_file


def get_config(arg: str = 'small'):
  # the sibling file by path (as --config loads this one), not `import configs`: works from any cwd
  c = from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'var_glyphs.py:{arg}'))
  c.unlock()
  c.paradigm = 'hybrid'
  c.data.tokenizer_residual = True
  head = {'tiny': (32, 1, 32), 'small': (256, 3, 128), 'base': (1024, 6, 256)}[arg.split(',')[0]]
  fields = dict(zip(('head_width', 'head_depth', 'head_freq_dim'), head))
  assert set(fields) <= {f.name for f in dataclasses.fields(HARTConfig)}
  for k, v in fields.items():
    c.model[k] = v
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options()))
  c.judge.steps = 8
  return finalize(c)
