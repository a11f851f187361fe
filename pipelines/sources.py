"""The one seam between the trainer and its data: `open_data(config.data) -> Data`.

Token sources ('cpython' | 'text' | 'tokens') live in pipelines/text.py, image sources ('glyphs' |
'images' | 'npz') in pipelines/images.py. The trainer, `python -m train.evaluate` and the
benchmarks only see `Data`, so a new source is one loader plus one line in `SOURCES`.

With `data.tokenizer` (a trained VQ-VAE workdir, `paradigms/vqvae.py`, loaded by the caller and
passed in as `open_data(cfg, tokenizer=(vq_model, vq_params))`) every image batch, train
and eval alike, is mapped through the tokenizer (a jitted encode + quantise per batch on the
default device, a grain `.map`, so the iterator stays resumable) to the token paradigms' batch
{'tokens': int32 [B, L], 'inputs': float32 [B, L - s_1^2, Cz] (VAR's teacher-forcing inputs),
'label': int32 [B, S]}, plus 'residual' float32 [B, h*w, Cz] = f - f_hat (raster) with
`data.tokenizer_residual` (HART's continuous target). The images themselves are dropped.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

TOKEN_SOURCES = ('cpython', 'text', 'tokens')
IMAGE_SOURCES = ('glyphs', 'images', 'npz')
PAIR_SOURCES = ('retrieval',)  # (query, document) pairs for embeddings (pipelines/retrieval.py)
SOURCES = TOKEN_SOURCES + IMAGE_SOURCES + PAIR_SOURCES


@dataclasses.dataclass(frozen=True)
class Data:
  """What a run needs from a source.

  train_dataset(batch_size=, seed=, process_index=, process_count=) -> grain.IterDataset of
      this process's rows of each global batch (resumable through the iterator's state);
  eval_batches(batch_size=, num_batches=) -> list of held-out numpy batches (0 = the source's
      default full pass);
  description: one log line; bytes_per_token: 1.0 for byte-level text (bits per token are
      bits per byte), else None; unit, items_per_example: what throughput counts ('tokens',
      seq_len per example; 'images', 1); label_vocab: for labelled images, the number of label
      ids a conditioning embedding needs (every id is below it), else None.
  """
  train_dataset: Callable
  eval_batches: Callable
  description: str
  bytes_per_token: float | None = None
  unit: str = 'tokens'
  items_per_example: int = 1
  label_vocab: int | None = None
  text_tokenizer: object = None  # text sources: the ByteTokenizer or subword TextTokenizer used


def open_data(cfg, tokenizer=None, text_tokenizer=None) -> Data:
  """The source that `cfg` (config.data) names, ready for the trainer. `tokenizer`: the loaded
  VQ-VAE `(vq_model, vq_params)` named by `cfg.tokenizer` (train.checkpoint.load_tokenizer),
  through which image batches become token batches. `text_tokenizer` encodes text sources
  (default: the one `cfg.text_tokenizer` names, pipelines.subword.resolve_tokenizer)."""
  source = cfg.source
  if source in IMAGE_SOURCES:
    return _open_images(cfg, tokenizer)
  if source in PAIR_SOURCES:
    from pipelines import retrieval
    return retrieval.open_pairs(cfg)
  if source not in TOKEN_SOURCES:
    raise ValueError(f'Unknown data.source={source!r}; use one of {SOURCES}.')
  from pipelines import subword, text as data
  if text_tokenizer is None and source != 'tokens':
    text_tokenizer = subword.resolve_tokenizer(cfg)
  corpus = data.load_corpus(cfg, text_tokenizer)
  return Data(train_dataset=functools.partial(data.train_dataset, corpus.train, seq_len=cfg.seq_len),
              eval_batches=functools.partial(data.eval_batches, corpus.eval, seq_len=cfg.seq_len),
              description=data.describe(corpus), bytes_per_token=corpus.bytes_per_token,
              items_per_example=cfg.seq_len, text_tokenizer=text_tokenizer)


def _open_images(cfg, tokenizer) -> Data:
  """Image sources; labels are padded with the null id 0 to `data.max_chars` slots (the label
  length every image model is built with), e.g. a class id [id + 1] -> [id + 1, 0, 0]."""
  from pipelines import images as image_data
  L = image_data.label_len(cfg)
  if L > cfg.max_chars:
    raise ValueError(f'{image_data.describe(cfg)} has labels of {L} slots; set '
                     f'--config.data.max_chars={L} (the model takes that many label slots).')
  pad = _LabelPad(cfg.max_chars)
  tokenize, what = _tokenizer(cfg, tokenizer)
  prepare = pad if tokenize is None else (lambda b: tokenize(pad(b)))

  def train_dataset(**kw):
    ds = image_data.train_dataset(cfg, **kw).map(pad)
    return ds if tokenize is None else ds.map(tokenize)

  def eval_batches(**kw):
    return [prepare(b) for b in image_data.eval_batches(cfg, **kw)]

  return Data(train_dataset=train_dataset, eval_batches=eval_batches,
              description=image_data.describe(cfg) + what, unit='images',
              label_vocab=image_data.label_vocab(cfg))


def _tokenizer(cfg, tokenizer):
  """(the batch mapping of the loaded `tokenizer`, a description) or (None, '') when
  `data.tokenizer` is unset."""
  path = getattr(cfg, 'tokenizer', '') or ''
  if not path:
    return None, ''
  if tokenizer is None:
    raise ValueError(f'data.tokenizer={path!r}: pass the loaded tokenizer, '
                     'open_data(config.data, tokenizer=train.checkpoint.load_tokenizer(config))')
  import jax
  from paradigms import vqvae
  model, params = tokenizer
  c = model.cfg
  width, want = c.image_width or c.image_size, cfg.get('image_width', 0) or cfg.image_size
  if (c.image_size, width, c.channels) != (cfg.image_size, want, cfg.channels):
    raise ValueError(f'data.tokenizer={path!r} was trained on {c.image_size}x{width} images with '
                     f'{c.channels} channels; set data.image_size={c.image_size}, '
                     f'data.image_width={c.image_width} and data.channels={c.channels} '
                     f'(now {cfg.image_size}x{want}, {cfg.channels})')
  residual = bool(getattr(cfg, 'tokenizer_residual', False))

  @jax.jit
  def encode(params, image):  # [B, H, W, C] -> the token paradigms' arrays
    f = model.apply({'params': params}, image, method='encode')  # [B, h, h, Cz]
    indices, f_hat, _ = vqvae.quantize(model, params, f)
    out = {'tokens': vqvae.flatten_indices(indices),  # [B, L]
           'inputs': vqvae.next_scale_inputs(model, params, indices)}  # [B, L - s_1^2, Cz]
    if residual:
      out['residual'] = (f - f_hat).reshape(f.shape[0], -1, c.latent_dim)  # [B, h*w, Cz]
    return out

  what = f', tokenized by {path} ({len(c.scales)} scales, {c.num_tokens} tokens)'
  return _Tokenize(functools.partial(encode, params)), what


@dataclasses.dataclass(frozen=True)
class _Tokenize:
  """Image batch -> {'tokens', 'inputs', 'label'} (+ 'residual'), numpy."""
  encode: Callable

  def __call__(self, batch: dict) -> dict:
    import jax
    out = jax.device_get(self.encode(np.asarray(batch['image'])))
    return {'label': batch['label'], **{k: np.asarray(v) for k, v in out.items()}}


@dataclasses.dataclass(frozen=True)
class _LabelPad:
  slots: int

  def __call__(self, batch: dict) -> dict:
    label = batch['label']  # [B, L] int32
    if label.shape[1] == self.slots:
      return batch
    out = np.zeros(label.shape[:1] + (self.slots,), np.int32)
    out[:, :label.shape[1]] = label
    return {**batch, 'label': out}
