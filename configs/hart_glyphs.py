"""HART (VAR + a residual diffusion head) on the procedural glyph set, over a trained VQ-VAE.

  python -m train --config configs/vqvae_glyphs.py:small --workdir runs/vqvae_glyphs   # tokenizer
  python -m train --config configs/hart_glyphs.py:small --workdir runs/hart_glyphs
  python -m sample --workdir runs/hart_glyphs --num 16 --out grid.png --cfg 2.5 --top-k 100

Everything VAR has (configs/var_glyphs.py: the same presets, tokenizer pairing, sampling flags)
plus the MLP head on the tokenizer residual f - f_hat (data.tokenizer_residual=True) and its
loss options (loss.head_weight, loss.diffusion_mul). Sampling adds --steps (head solver steps,
default 8) on top of VAR's K passes.
Presets: the VAR presets, with a head of width 256 x 3 blocks (tiny: 32 x 1; base: 1024 x 6).
Measured, small on the bold glyphs of the small tokenizer, started from the trained VAR small
run (--config.train.init_from=runs/var_glyphs --config.train.init_into=var
--config.train.steps=400; 3.26M params, 36 min on 2 CPU cores shared with a DiT run, ~23 images/s
alone): held-out 3.97 bits/token (VAR alone: 4.15), head flow MSE 0.046; judge at w=3 (head 2
steps) FD 287, 14.1% of strings / 17.1% of characters read (VAR: 333, 8.2% / 10.7%). Not legible
yet beyond single characters. From scratch (regular-weight glyphs, 600 steps): 4.88 bits/token.
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
  head = {'tiny': (32, 1, 32), 'small': (256, 3, 128), 'base': (1024, 6, 256)}[arg]
  fields = dict(zip(('head_width', 'head_depth', 'head_freq_dim'), head))
  assert set(fields) <= {f.name for f in dataclasses.fields(HARTConfig)}
  for k, v in fields.items():
    c.model[k] = v
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options()))
  c.judge.steps = 8
  return finalize(c)
