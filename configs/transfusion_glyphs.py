"""Transfusion on the procedural glyph set: one Transformer that draws a string's image from its
characters (rectified flow on pixel patches) and reads the string back from an image (next-token
prediction), trained with L = L_LM + 5 L_diff (paradigms/transfusion.py).

  python -m train --config configs/transfusion_glyphs.py:small --workdir runs/transfusion_glyphs
  python -m sample --workdir runs/transfusion_glyphs --num 16 --out grid.png --cfg 3 --label 7A

Prompts (issue 25: strings of 1..8 characters at 32x64, held-out strings never trained on):
  python -m train --config configs/transfusion_glyphs.py:small,prompt --workdir runs/transfusion_prompt

Variants (after the preset, combinable with ,prompt):
  ,captioner    the separately trained AR captioner that Transfusion's reading direction is
                compared with: the same network, trained on image -> text only (ocr_fraction 1)
                with clean images (ocr_t_max 0, so L_diff = 0): next-token loss alone.
  ,interleaved  sequences of two (string, image) pairs, BOS c1 BOI I1 EOI c2 BOI I2 EOI EOS
                (loss.interleaved, model.max_images=2); `python -m sample --interleaved A7`.

No tokenizer: images enter as p x p pixel patches (N = (H/p)(W/p)), the prompt as the label's
max_chars character tokens. Each batch is half text -> image and half image -> text (OCR)
examples (loss.ocr_fraction); OCR images are noised to at most t = 0.5 (loss.ocr_t_max).
Sampling (sample/transfusion.py): text -> image in judge.steps Euler steps behind the KV-cached
prompt, CFG w (judge.cfg, 1 = off) as a doubled batch; image -> text by cached greedy decoding.
Held-out evaluation: eval_bits_per_token (OCR captions, EOS included) and eval_flow_mse.
Presets (glyphs: configs/dit_glyphs.py's, bold and centred, so judge figures compare):
  tiny   tests; d=32, 1 layer, 16x16 images in 8x8 patches (4 patches), batch 8, 20 steps:
         seconds.
  small  CPU demo; d=128, 4 layers, 4 heads, 4x4 patches (64; 128 with prompts), batch 64,
         4000 steps. Not yet measured.
  base   one GPU; d=768, 12 layers, 12 heads, 2x2 patches, batch 256, bf16.
"""
import dataclasses

import ml_collections

from paradigms.transfusion import Options, TransfusionConfig
from train.config import base_config, config_arg, finalize, use_prompts


def get_config(arg: str = 'small'):
  presets = {'tiny': _tiny, 'small': _small, 'base': _base}
  preset, variants = config_arg(arg, presets, ('prompt', 'captioner', 'interleaved'),
                                'configs/transfusion_glyphs.py')
  if {'captioner', 'interleaved'} <= variants:
    raise ValueError(f'{arg!r}: a captioner reads single images; drop ,captioner or ,interleaved')
  c = base_config()
  c.paradigm = 'transfusion'
  c.data.source = 'glyphs'
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options()))
  c.model = ml_collections.ConfigDict(dataclasses.asdict(TransfusionConfig()))
  c.judge.name = 'glyphs'
  c.judge.sampler = 'euler'  # the only one (sample/transfusion.py)
  c.train.ema_halflife_nimg = 50_000.0
  presets[preset](c)
  if 'prompt' in variants:
    use_prompts(c.data)
  if 'captioner' in variants:  # the AR captioner: image -> text only, clean images, no L_diff
    c.loss.update(ocr_fraction=1.0, ocr_t_max=0.0)
  if 'interleaved' in variants:  # item 8: two (string, image) pairs per sequence
    c.loss.interleaved = True
    c.model.max_images = 2
    c.judge.name = ''  # sequences, not single images: no judge during training
  c.model.label_vocab = len(c.data.alphabet) + 1  # for other data set it to the largest label + 1
  c.model.label_len = c.data.get_ref('max_chars')  # the model follows data overrides
  c.model.image_size = c.data.get_ref('image_size')  # H
  c.model.image_width = c.data.get_ref('image_width')  # W (0 = square)
  c.model.channels = c.data.get_ref('channels')
  return finalize(c)


def _tiny(c):
  c.data.update(image_size=16, batch_size=8)
  c.model.update(d_model=32, n_layers=1, n_heads=2, patch_size=8, freq_dim=32)
  c.train.update(steps=20, warmup_steps=2, lr=1e-3, log_every=10, eval_every=10, eval_batches=1,
                 ckpt_every=10, progress=False, ema_halflife_nimg=500.0)
  c.judge.update(num=16, steps=4, every=0, train_steps=20)


def _small(c):
  c.data.update(image_size=32, batch_size=64, jitter=0.3, stroke=0.06)
  c.model.update(d_model=128, n_layers=4, n_heads=4, patch_size=4)
  c.train.update(steps=4000, warmup_steps=100, lr=1e-3, weight_decay=0.0, log_every=50,
                 eval_every=1000, eval_batches=8, ckpt_every=500, ema_halflife_nimg=20_000.0)
  c.judge.update(num=256, steps=32, every=1000)


def _base(c):
  c.data.update(image_size=32, batch_size=256)
  c.model.update(d_model=768, n_layers=12, n_heads=12, patch_size=2, dtype='bfloat16')
  c.train.update(steps=100_000, warmup_steps=2000, lr=2e-4, weight_decay=0.0, log_every=100,
                 eval_every=5000, eval_batches=16, ckpt_every=5000, ema_halflife_nimg=500_000.0)
  c.judge.update(num=2048, steps=32, every=5000)
