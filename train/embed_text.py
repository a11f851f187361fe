"""`python -m sample --workdir RUN --embed texts.jsonl --out embeddings.npy`: embed a JSONL of
texts with a text run (issue 26 item 7).

Each line is {"text": ...} (other keys, e.g. "id", are ignored; row i of the output is line i).
The run is an embedding run (configs/embed_code.py: its pooling and pad id) or any text run
(AR: last-token pooling under its causal mask; masked diffusion, SEDD, UDLM/DUO: mean pooling),
through `paradigms.embedding.encode`: float32 [n, D] unit vectors, written with numpy.save.
Texts longer than the model's data.seq_len tokens are cut into seq_len-token chunks, embedded
chunk by chunk, and the chunk embeddings averaged (weighted by their token counts) and
renormalised: documented chunking, nothing is dropped. Batches hold --num chunks; a tqdm bar
counts texts. An empty text, a line that is not a JSON object with a "text" string, and an
empty file are one-line errors naming the line.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from train.cli import UserError


def read_texts(path: str) -> list[str]:
  texts = []
  try:
    with open(path, encoding='utf-8') as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as err:
          raise UserError(f'--embed {path}: line {n} is not JSON ({err.msg})') from None
        if not isinstance(row, dict) or not isinstance(row.get('text'), str):
          raise UserError(f'--embed {path}: line {n} needs a "text" string, e.g. {{"text": "def f():"}}')
        if not row['text']:
          raise UserError(f'--embed {path}: line {n} has an empty "text"; drop it or give text')
        texts.append(row['text'])
  except OSError as err:
    raise UserError(f'--embed {path}: cannot read it ({err.strerror})') from None
  if not texts:
    raise UserError(f'--embed {path}: no texts in the file')
  return texts


def options(config):
  """The run's embedding options: its own (embedding runs) or the paradigm's natural pooling."""
  from paradigms.embedding import Options
  if config.paradigm == 'embedding':
    return Options(**config.loss)
  return Options(pooling='last' if config.paradigm == 'autoregressive' else 'mean')


def embed_texts(model, params, opt, encode_text, texts, *, seq_len: int, batch: int,
                progress: bool = False) -> np.ndarray:
  """float32 [n, D] unit embeddings of `texts` (module doc: chunks of seq_len tokens, averaged
  by token count and renormalised). encode_text: str -> token ids."""
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm
  from paradigms import embedding
  encode = jax.jit(lambda p, x: embedding.encode(model, p, x, opt))
  chunks, owner = [], []  # (ids, text index) per chunk
  for i, text in enumerate(texts):
    ids = [int(t) for t in encode_text(text)]
    if opt.pad_id in ids:
      raise UserError(f'text {i + 1} holds token id {opt.pad_id}, the pad id (loss.pad_id); '
                      'this tokenizer needs another pad id')
    if not ids:
      raise UserError(f'text {i + 1} is empty')
    for s in range(0, len(ids), seq_len):
      chunks.append(ids[s:s + seq_len])
      owner.append(i)
  D = model.cfg.d_model
  sums, weights = np.zeros((len(texts), D)), np.zeros(len(texts))
  with tqdm(total=len(texts), desc='embedding', unit='text', file=sys.stderr,
            disable=not (progress and sys.stderr.isatty())) as bar:
    done = 0
    for b in range(0, len(chunks), batch):
      rows = chunks[b:b + batch]
      x = np.full((batch, seq_len), opt.pad_id, np.int32)
      for r, ids in enumerate(rows):
        x[r, :len(ids)] = ids
      x[len(rows):, 0] = 0  # filler rows (dropped) hold one token, so no row is all padding
      e = np.asarray(encode(params, jnp.asarray(x)))[:len(rows)]
      for r, ids in enumerate(rows):
        sums[owner[b + r]] += len(ids) * e[r]
        weights[owner[b + r]] += len(ids)
      finished = owner[min(b + batch, len(chunks)) - 1] + (1 if b + batch >= len(chunks) else 0)
      bar.update(finished - done)
      done = finished
  out = sums / weights[:, None]
  return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def embed_cli(args, config, model, params) -> None:
  if not args.out or not args.out.endswith('.npy'):
    raise UserError('--embed needs --out FILE.npy (the embeddings, one row per line)')
  tok = args.tokenizer
  if tok is None:
    raise UserError('--embed needs a run with a text tokenizer (text corpora, not token arrays)')
  opt = options(config)
  texts = read_texts(args.embed)
  try:
    out = embed_texts(model, params, opt, tok.encode, texts, seq_len=config.data.seq_len,
                      batch=args.num, progress=True)
  except UserError as err:
    raise UserError(f'--embed {args.embed}: {err}') from None
  np.save(args.out, out)
  print(f'wrote {args.out}: {len(texts)} texts x {out.shape[1]}, {opt.pooling} pooling, '
        f'chunks of <= {config.data.seq_len} tokens', file=sys.stderr)
