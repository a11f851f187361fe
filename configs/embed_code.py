"""Contrastive text embeddings on the CPython standard library's source, from a trained text run.

  python -m train --config configs/ar_code.py:small --workdir runs/ar_code          # pre-train
  python -m train --config configs/embed_code.py:small,ar --workdir runs/embed_ar \
      --config.train.init_from=runs/ar_code
  python -m sample --workdir runs/embed_ar --embed texts.jsonl --out embeddings.npy

`P[,backbone]` with backbone (default ar) one of
  ar      the causal AR model, last-token pooling (its last state has read the whole text);
  ar_bi   the same AR weights with bidirectional attention switched on for the fine-tune and
          mean pooling: the LLM2Vec-style control;
  mdlm    a masked-diffusion run (configs/mdlm_code.py), mean pooling;
  sedd    a SEDD run (configs/sedd_code.py), mean pooling;
  duo     a uniform-state run (configs/duo_code.py), mean pooling.
The model fields are the backbone config's at the same preset, so `train.init_from` (default
runs/<backbone>_code; runs/ar_code for ar_bi) loads its params. Data (data.source='retrieval',
pipelines/retrieval.py): (query, file) pairs of training files, a docstring / signature or a
passage of data.query_len bytes against the file's first data.seq_len bytes; InfoNCE with
in-batch negatives at temperature 0.05 (paradigms/embedding.py). Held-out evaluation: InfoNCE and
top-1 in-batch accuracy on pairs of held-out files.
"""
import dataclasses
import os

import ml_collections

from paradigms.embedding import Options
from train.config import config_arg, from_file

BACKBONES = {'ar': 'ar_code.py', 'ar_bi': 'ar_code.py', 'mdlm': 'mdlm_code.py',
             'sedd': 'sedd_code.py', 'duo': 'duo_code.py'}


def get_config(arg: str = 'small,ar'):
  preset, variants = config_arg(arg, {'tiny': 0, 'small': 0, 'base': 0}, tuple(BACKBONES),
                                'configs/embed_code.py')
  if len(variants) > 1:
    raise ValueError(f'{arg!r}: name one backbone after the preset, one of {sorted(BACKBONES)} '
                     '(e.g. small,ar)')
  backbone = variants.pop() if variants else 'ar'
  here = os.path.dirname(os.path.abspath(__file__))
  c = from_file(os.path.join(here, f'{BACKBONES[backbone]}:{preset}'))
  c.unlock()
  c.paradigm = 'embedding'
  c.model.mask = 'causal' if backbone == 'ar' else 'bidirectional'
  c.loss = ml_collections.ConfigDict(dataclasses.asdict(
      Options(pooling='last' if backbone == 'ar' else 'mean')))
  c.data.source = 'retrieval'
  c.train.init_from = f'runs/{"ar" if backbone == "ar_bi" else backbone}_code'
  c.train.update(steps=20 if preset == 'tiny' else 400, warmup_steps=2 if preset == 'tiny' else 20,
                 lr=1e-4)
  c.lock()
  return c
