"""Raster-order AR (LlamaGen-style) over single-scale VQ codes of the glyph set, prompt-conditioned.

  python -m train --config configs/vqvae_glyphs.py:small,single --workdir runs/vqvae_glyphs_single
  python -m train --config configs/raster_ar_glyphs.py:small --workdir runs/raster_ar_glyphs
  python -m sample --workdir runs/raster_ar_glyphs --num 16 --out grid.png --cfg 3 --label 7A

Prompts (issue 25: strings of 1..8 characters at 32x64, held-out strings never trained on):
  python -m train --config configs/vqvae_glyphs.py:small,single,prompt \
      --workdir runs/vqvae_glyphs_single_prompt
  python -m train --config configs/raster_ar_glyphs.py:small,prompt --workdir runs/raster_ar_prompt

`,interleaved` (raster AR only, item 8): the model reads text and images as one token sequence,
BOS c1 BOI x1 EOI c2 BOI x2 EOI EOS (two pairs per sequence, model.max_images=2, next-token loss
on every token after BOS but EOI), and `python -m sample --workdir RUN --interleaved A7` lets it
decide when an image starts (sample/raster_ar.py `interleaved`).

The tokenizer is a single-scale VQ-VAE (VQConfig.scales = (h,): the finest map of the same
preset of configs/vqvae_glyphs.py, N = h w codes, w = h W/H); its shape fields (scales,
codebook_size, latent_dim; data.image_size, image_width, channels, jitter, stroke) are copied
from that preset, so `raster_ar_glyphs.py:P` pairs with `vqvae_glyphs.py:P,single`. The prompt
is the label: data.max_chars tokens (label_vocab = len(alphabet) + 1, 0 = blank / null), prefixed
to the raster code sequence. Sampling: N network passes (KV cache), CFG (--cfg w, 1 = off) in
the same pass as a doubled batch, temperature / top-k / top-p per code.
Presets: configs/var_glyphs.py's recipes, so VAR, raster AR and MaskGIT see the same images in
the same steps (second field `prompt`: 32x64 images, data.prompts=True, max_chars 8, tokenizer
runs/vqvae_glyphs_single_prompt):
  tiny   tests; d=32, 1 layer, batch 8, 20 steps over the tiny tokenizer (4x4 codes): seconds.
  small  CPU demo; d=128, 6 layers, 4 heads, batch 64, 3000 steps over the small tokenizer's
         8x8 codes (8x16 with prompts). Not yet measured.
  base   one GPU; d=1024, 16 layers, 16 heads, batch 256, bf16, lr 1e-4 (LlamaGen-B scale).
"""
import importlib.util
import os

import ml_collections

from train.config import base_config, config_arg, finalize



def get_config(arg: str = 'small'):
  return token_image_config(arg, 'raster_ar', 'configs/raster_ar_glyphs.py')


def token_image_config(arg: str, paradigm: str, name: str):
  """The config of a token-image paradigm ('raster_ar' or 'maskgit') for `arg` = 'P' or
  'P,prompt' (shared by configs/maskgit_glyphs.py)."""
  var = _var_config_module()
  extra = ('interleaved',) if paradigm == 'raster_ar' else ()
  preset, variants = config_arg(arg, var.PRESETS, ('prompt',) + extra, name)
  prompt = 'prompt' in variants
  vq = var.tokenizer_config(preset + ',single' + (',prompt' if prompt else ''))
  c = base_config()
  c.paradigm = paradigm
  c.data.source = 'glyphs'
  c.data.tokenizer = 'runs/vqvae_glyphs_single' + ('_prompt' if prompt else '')
  for k in ('image_size', 'image_width', 'channels', 'jitter', 'stroke', 'prompts',
            'max_chars'):  # the tokenizer's glyphs
    c.data[k] = vq.data[k]
  c.loss = ml_collections.ConfigDict({'label_dropout': 0.1})
  c.model = ml_collections.ConfigDict({
      'scales': tuple(vq.model.scales),  # one scale: the single-scale tokenizer
      'codebook_size': vq.model.codebook_size, 'latent_dim': vq.model.latent_dim,
      'image_size': c.data.get_ref('image_size'), 'image_width': c.data.get_ref('image_width'),
      'label_len': c.data.max_chars, 'label_vocab': len(c.data.alphabet) + 1,
      'max_images': 2 if 'interleaved' in variants else 1,
      'd_model': 128, 'n_layers': 4, 'n_heads': 4, 'n_kv_heads': 0, 'd_ff': 0,
      'rope_base': 10_000.0, 'norm_eps': 1e-6, 'dtype': 'float32', 'param_dtype': 'float32',
      'remat_policy': 'none', 'scan_unroll': 0, 'attention_impl': 'xla'})
  c.judge.name = 'glyphs'
  c.judge.steps = 8  # MaskGIT's T (raster AR takes N passes and ignores it)
  c.train.update(b2=0.95, weight_decay=0.05)
  var.PRESETS[preset](c)  # VAR's recipe: matched images seen and steps
  c.model.label_vocab = len(c.data.alphabet) + 1  # for other data set it to the largest label + 1
  c.model.label_len = c.data.get_ref('max_chars')  # the model follows data overrides
  if 'interleaved' in variants:  # the judge's single-image sampler does not apply: no judge
    c.judge.name = ''
  return finalize(c)


def _var_config_module():
  """configs/var_glyphs.py, by path (as --config loads this file): its presets and tokenizer."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'var_glyphs.py')
  spec = importlib.util.spec_from_file_location('_config_var_glyphs', path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: configs/raster_ar_glyphs.py builds on it')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
