"""VAR next-scale prediction on the procedural glyph set, over a trained multi-scale VQ-VAE.

  python -m train --config configs/vqvae_glyphs.py:small --workdir runs/vqvae_glyphs   # tokenizer
  python -m train --config configs/var_glyphs.py:small --workdir runs/var_glyphs
  python -m sample --workdir runs/var_glyphs --num 16 --out grid.png --cfg 2.5 --top-k 100
  python -m sample --workdir runs/var_glyphs --num 16 --out grid.png --label 7A --judge

Prompts (issue 25): `P,prompt` pairs with the tokenizer `vqvae_glyphs.py:P,prompt` (default
runs/vqvae_glyphs_prompt): strings of 1..8 characters on H x 2H images. The prompt enters twice
(model.prompt_prefix): as the S tokens E_j[label_j] that lead the sequence (attended token by
token by every scale, as a text-to-image AR model's prompt) and as their pooled sum c, VAR's
class condition (start tokens and adaLN); the null prompt (all slots 0) is the CFG drop.

`data.tokenizer` names the tokenizer's workdir (default runs/vqvae_glyphs); the data pipeline
encodes every image batch with it (pipelines/sources.py). The tokenizer's shape fields
(model.scales, codebook_size, latent_dim; data.image_size, image_width, channels) are copied
from the same preset of configs/vqvae_glyphs.py, so `var_glyphs.py:P` pairs with
`vqvae_glyphs.py:P`; a tokenizer trained otherwise needs the matching --config.model.* /
--config.data.* flags (the error names them). A rectangular tokenizer (data.image_width = W, a
multiple of H) gives rectangular scales s_k x (W/H) s_k: pass the same --config.data.image_width.
Sampling: one network pass per scale (NFE = K), VAR's ramped CFG (--cfg is the weight at the
last scale, 1 = off), top-k / top-p per scale.
Presets:
  tiny   tests; d=32, 1 layer, batch 8, 20 steps, over the tiny tokenizer: seconds.
  small  CPU demo; d=128, 6 layers, 4 heads (1.97M params), batch 64, 3000 steps (192k
         images) over the small tokenizer, on its glyphs (bold, jitter 0.3: those of
         configs/dit_glyphs.py:small). Measured from scratch over the 6000-step tokenizer
         (2-core CPU, ~45 images/s, 72 min): held-out 3.42 bits/token (EMA; 3.78 at 1500),
         judge (no guidance, NFE 6) FD 156, 30.5% of strings read (15.6% at 1500). With w=3,
         56% of a 48-sample grid (single characters 88%, pairs 57%, triples 0%). Singles and
         most pairs are legible with noisy strokes; triples are not yet (the tokenizer reads
         70% of them): training is the limit (see README, "Next-scale prediction").
  base   one GPU; VAR-d16 (d=1024, 16 layers, 16 heads), batch 256, bf16, lr 1e-4 (VAR's
         1e-4 x batch/256), weight decay 0.05.
"""
import os

import ml_collections

from train.config import base_config, config_arg, finalize, from_file

TOKENIZER_FIELDS = ('scales', 'codebook_size', 'latent_dim')


def get_config(arg: str = 'small'):
  preset, variants = config_arg(arg, PRESETS, ('prompt',), 'configs/var_glyphs.py')
  vq = tokenizer_config(arg)
  c = base_config()
  c.paradigm = 'next_scale'
  c.data.source = 'glyphs'
  c.data.tokenizer = 'runs/vqvae_glyphs' + ('_prompt' if variants else '')
  for k in ('image_size', 'image_width', 'channels', 'jitter', 'stroke', 'prompts',
            'max_chars'):  # the tokenizer's glyphs
    c.data[k] = vq.data[k]
  c.loss = ml_collections.ConfigDict({'label_dropout': 0.1})
  c.model = ml_collections.ConfigDict({
      **{k: vq.model[k] for k in TOKENIZER_FIELDS},
      'image_size': c.data.get_ref('image_size'),  # W/H sets the scales' widths
      'image_width': c.data.get_ref('image_width'),
      'label_len': c.data.max_chars, 'label_vocab': len(c.data.alphabet) + 1,
      'prompt_prefix': bool(variants),  # prompts: the S prompt tokens lead the sequence
      'd_model': 128, 'n_layers': 4, 'n_heads': 4, 'd_ff': 0, 'norm_eps': 1e-6,
      'dtype': 'float32', 'param_dtype': 'float32', 'remat_policy': 'none',
      'attention_impl': 'xla'})
  c.judge.name = 'glyphs'
  c.train.update(b2=0.95, weight_decay=0.05)
  PRESETS[preset](c)
  c.model.label_vocab = len(c.data.alphabet) + 1  # for other data set it to the largest label + 1
  c.model.label_len = c.data.get_ref('max_chars')  # the model follows data overrides
  return finalize(c)


def tokenizer_config(arg: str):
  """configs/vqvae_glyphs.py at `arg` (the same preset and variants: its model's shape fields
  and image size). Also used by configs/raster_ar_glyphs.py."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vqvae_glyphs.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: the VQ-token configs copy the tokenizer '
                            'shape fields from it')
  return from_file(f'{path}:{arg}')


def _tiny(c):
  c.data.update(batch_size=8)
  c.model.update(d_model=32, n_layers=1, n_heads=2)
  c.train.update(steps=20, warmup_steps=2, lr=1e-3, log_every=10, eval_every=10, eval_batches=1,
                 ckpt_every=10, progress=False, ema_halflife_nimg=500.0)
  c.judge.update(num=16, every=0, train_steps=20)


def _small(c):
  # glyphs: the tokenizer preset's, those of configs/dit_glyphs.py:small (judge figures compare)
  c.data.update(batch_size=64)
  c.model.update(d_model=128, n_layers=6, n_heads=4)
  c.train.update(steps=3000, warmup_steps=100, lr=1e-3, log_every=50, eval_every=750,
                 eval_batches=8, ckpt_every=300, ema_halflife_nimg=20_000.0)
  c.judge.update(num=256, every=1500)


def _base(c):
  c.data.update(batch_size=256)
  # the level mask is an explicit boolean mask over L = 130 positions: XLA's attention
  c.model.update(d_model=1024, n_layers=16, n_heads=16, dtype='bfloat16', attention_impl='xla')
  c.train.update(steps=100_000, warmup_steps=2000, lr=1e-4, clip_norm=2.0, log_every=100,
                 eval_every=5000, eval_batches=16, ckpt_every=5000, ema_halflife_nimg=500_000.0)
  c.judge.update(num=2048, every=5000)


# the training recipes, shared with configs/raster_ar_glyphs.py and configs/maskgit_glyphs.py so
# the VQ-token contestants see the same images in the same steps
PRESETS = {'tiny': _tiny, 'small': _small, 'base': _base}
