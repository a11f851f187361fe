"""MaskGIT over single-scale VQ codes of the glyph set, prompt-conditioned (Chang et al. 2022).

  python -m train --config configs/vqvae_glyphs.py:small,single --workdir runs/vqvae_glyphs_single
  python -m train --config configs/maskgit_glyphs.py:small --workdir runs/maskgit_glyphs
  python -m sample --workdir runs/maskgit_glyphs --num 16 --out grid.png --cfg 3 --steps 8

The same data, tokenizer pairing, prompt prefix, presets and `,prompt` variant as
configs/raster_ar_glyphs.py (whose `token_image_config` builds this file's config), with the
network bidirectional and one [MASK] id: masked-token loss at cosine-schedule mask ratios
(paradigms/maskgit.py), T-step confidence decoding (sample/maskgit.py, judge.steps = T = 8).
Metrics: train 'nll' per masked token, 'accuracy' on masked codes, 'mask_ratio'; held out
'eval_masked_nll' and 'eval_masked_accuracy' (the training objective, not a likelihood).
Presets: tiny (tests, seconds), small (CPU demo, not yet measured), base (one GPU).
"""
import importlib.util
import os


def get_config(arg: str = 'small'):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'raster_ar_glyphs.py')
  spec = importlib.util.spec_from_file_location('_config_raster_ar_glyphs', path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: configs/maskgit_glyphs.py builds on it')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.token_image_config(arg, 'maskgit', 'configs/maskgit_glyphs.py')
