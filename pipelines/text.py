"""Token data for the language paradigms: corpora, random training windows, held-out batches.

Nothing here downloads. Three sources (``cfg.source``), one registry (``_LOADERS``):

- ``'cpython'``: text of the CPython standard library's ``.py`` sources found at
  ``sysconfig.get_paths()['stdlib']`` (``site-packages``/``dist-packages`` excluded). The
  default corpus: code, present on every machine that runs this project.
- ``'text'``: text of the user's files, ``cfg.files`` is a (recursive) glob.

Text is byte-level by default; ``cfg.text_tokenizer`` picks another (``subword.resolve_tokenizer``):
``'bpe:N'`` trains a byte-level BPE of N ids on the training files (pipelines/subword.py),
``'hf:DIR'`` reads DIR/tokenizer.json. Bits per byte stay comparable across tokenizers:
``bytes_per_token`` is the held-out split's UTF-8 bytes (one per document break) per token.
- ``'tokens'``: a pre-tokenized 1-D token array, nanoGPT ``.bin`` (raw ``cfg.token_dtype``) or
  ``.npy``; held out is ``cfg.eval_path`` or else the last ``cfg.holdout_fraction`` of it.

For text sources each file is one document, ``encode(text) + [EOS]``, and whole files are held
out: a file is held out iff ``int(sha1(relpath), 16) % 10_000 < holdout_fraction * 10_000``.
Train and eval are separate arrays, so no training window ever contains a held-out token.
Built text corpora are cached as raw uint16 files (written atomically) and returned as
read-only ``np.memmap``s.

Training batches come from a grain pipeline (``train_dataset``): element ``i`` is a window of
``seq_len + 1`` tokens at an offset drawn from an RNG seeded by ``(seed, i)``, so the stream is
deterministic, resumable from ``iterator.get_state()``, and shardable across processes.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import grain
import numpy as np

from pipelines.streams import random_stream

_CACHE_FORMAT = 2  # bump when the cached layout or the document encoding changes
_EXCLUDED_DIRS = ('site-packages', 'dist-packages')
_HOLDOUT_BUCKETS = 10_000
_CONTROL = np.isin(np.arange(256), [*range(0, 9), *range(14, 27), *range(28, 32)])  # not \t\n\v\f\r, ESC


class ByteTokenizer:
  """Byte-level tokenizer: ids 0..255 are bytes; 256 = EOS (document separator), 257 = MASK.

  MASK is never emitted by ``encode``; it is reserved for masked (absorbing) diffusion, so
  ``vocab_size`` (the number of distinct ids a model must embed) is 258.
  """
  EOS = 256
  MASK = 257
  vocab_size = 258
  eos_id, mask_id, bos_id, pad_id = EOS, MASK, None, None  # the TextTokenizer names
  name = 'bytes'

  def encode(self, text: str | bytes) -> np.ndarray:
    """UTF-8 bytes of ``text`` (or the raw ``bytes`` given, UTF-8 or not) as ids, no EOS
    appended. Returns uint16 [N]."""
    raw = text if isinstance(text, bytes) else text.encode('utf-8')
    return np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)

  def encode_prompt(self, text: str | bytes) -> list[int]:
    """A prompt's ids: its bytes (no BOS; the byte tokenizer has none)."""
    return self.encode(os.fsencode(text) if isinstance(text, str) else text).tolist()

  def decode(self, ids) -> str:
    """Inverse of ``encode``: drops special ids (>= 256), decodes with errors='replace'."""
    ids = np.asarray(ids).reshape(-1)
    return ids[ids < 256].astype(np.uint8).tobytes().decode('utf-8', errors='replace')


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A tokenized corpus split into train and held-out token streams."""
  train: np.ndarray  # [N_train] token ids (np.memmap or ndarray, uint16 or uint32)
  eval: np.ndarray  # [N_eval] held-out token ids
  vocab_size: int  # every id is < this
  bytes_per_token: float | None  # held-out bytes per token (1.0 byte-level); None: token arrays
  train_files: tuple[str, ...]  # relative POSIX paths of training documents; () for arrays
  eval_files: tuple[str, ...]  # relative POSIX paths of held-out documents; () for arrays
  holdout: str = 'files'  # 'files': whole files held out; 'tail': the last tokens of the stream


# ---------------------------------------------------------------------------------------------
# Corpus loading.

def load_corpus(cfg, tokenizer=None) -> Corpus:
  """Loads the corpus that ``cfg`` (the ``data`` ConfigDict, or any attribute object) names.

  Fields: ``source`` ('cpython' | 'text' | 'tokens'), ``files`` (glob, 'text'), ``path``,
  ``eval_path``, ``token_dtype`` ('tokens'), ``holdout_fraction`` (default 0.05),
  ``vocab_size``, ``seq_len`` (checked: a window of seq_len + 1 tokens must fit in both
  splits), ``train_tokens`` (> 0 keeps only the first that many training tokens: a
  data-constrained run repeats them for steps x batch x seq_len / train_tokens epochs), ``cache_dir`` ('' = $JAX_PARADIGMS_CACHE or ~/.cache/jax_paradigms).
  `tokenizer` encodes text sources (default: ``resolve_tokenizer(cfg)``).
  Raises ValueError, saying what to change, for any bad input.
  """
  source = _get(cfg, 'source', 'cpython')
  if source not in _LOADERS:
    raise ValueError(f'Unknown data.source={source!r}; use one of {sorted(_LOADERS)}.')
  holdout_fraction = float(_get(cfg, 'holdout_fraction', 0.05))
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f'data.holdout_fraction={holdout_fraction} must be in (0, 1), e.g. 0.05.')
  if source == 'tokens':
    corpus = _load_tokens(cfg, holdout_fraction)
  else:
    if tokenizer is None:
      from pipelines.subword import resolve_tokenizer
      tokenizer = resolve_tokenizer(cfg)
    corpus = _load_documents(*_LOADERS[source](cfg), holdout_fraction, cfg, tokenizer)
  unique = int(_get(cfg, 'train_tokens', 0))
  if unique < 0:
    raise ValueError(f'data.train_tokens={unique} must be >= 0 (0 = the whole training split).')
  if unique:  # the data-constrained setting: only the first `unique` training tokens, repeated
    if unique > len(corpus.train):
      raise ValueError(f'data.train_tokens={unique} is more than the {len(corpus.train)} training '
                       'tokens of the corpus; lower it or set 0 for all of them.')
    corpus = dataclasses.replace(corpus, train=corpus.train[:unique])
  seq_len = _get(cfg, 'seq_len', None)
  if seq_len is not None:
    window = int(seq_len) + 1
    if window > min(len(corpus.train), len(corpus.eval)):
      raise ValueError(
          f'A window of seq_len + 1 = {window} tokens is longer than the corpus splits '
          f'(train: {len(corpus.train)} tokens, eval: {len(corpus.eval)} tokens); lower '
          f'data.seq_len below {min(len(corpus.train), len(corpus.eval))} or add data.')
  return corpus


def _get(cfg, name: str, default: Any) -> Any:
  value = getattr(cfg, name, default)
  return default if value is None else value


def _text_vocab_size(cfg, tokenizer) -> int:
  vocab_size = int(_get(cfg, 'vocab_size', tokenizer.vocab_size))
  if vocab_size < tokenizer.vocab_size:
    what = ('Byte-level text uses ids up to 257 (256 bytes + EOS + MASK)'
            if isinstance(tokenizer, ByteTokenizer) else
            f'The tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids')
    raise ValueError(f'{what} but model.vocab_size={vocab_size}; raise model.vocab_size (and '
                     f'data.vocab_size) to at least {tokenizer.vocab_size}, or use a tokenizer '
                     'whose ids fit the model.')
  return vocab_size


def _load_cpython(cfg):
  root = sysconfig.get_paths()['stdlib']
  relpaths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    rel_dir = Path(dirpath).relative_to(root)
    relpaths += [(rel_dir / f).as_posix() for f in filenames if f.endswith('.py')]
  if not relpaths:
    raise ValueError(f'No *.py files found under the stdlib root {root!r}; this Python has no '
                     "standard-library sources, use data.source='text' or 'tokens'.")
  key = {'source': 'cpython', 'python': sys.version, 'root': root}
  return root, sorted(relpaths), key, f'the stdlib at {root}'


def _load_text(cfg):
  pattern = _get(cfg, 'files', '')
  if not pattern:
    raise ValueError("data.source='text' needs data.files, a glob such as 'notes/**/*.md', a "
                     'folder or a file.')
  expanded = os.path.expanduser(pattern)
  if os.path.isdir(expanded):  # a folder: every (non-hidden) file under it
    expanded = os.path.join(expanded, '**', '*')
  paths = [os.path.abspath(p) for p in glob.glob(expanded, recursive=True)
           if os.path.isfile(p)]
  if not paths:
    raise ValueError(f'No files match data.files={pattern!r}; fix the glob (use ** with '
                     'recursive patterns) or check the working directory.')
  root = os.path.commonpath([os.path.dirname(p) for p in paths])
  relpaths = sorted(Path(p).relative_to(root).as_posix() for p in paths)
  key = {'source': 'text', 'glob': pattern, 'root': root}
  return root, relpaths, key, f'data.files={pattern!r}'


def is_held_out(relpath: str, holdout_fraction: float) -> bool:
  """The whole-file hold-out rule: sha1 of the relative POSIX path, bucketed into 10_000."""
  bucket = int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % _HOLDOUT_BUCKETS
  return bucket < holdout_fraction * _HOLDOUT_BUCKETS


def _load_documents(root: str, relpaths: Sequence[str], key: dict, what: str,
                    holdout_fraction: float, cfg, tokenizer) -> Corpus:
  """Splits files by hold-out, then loads (or builds and caches) their token streams."""
  vocab_size = _text_vocab_size(cfg, tokenizer)
  stats = [(p, *_size_mtime(os.path.join(root, p))) for p in relpaths]
  if all(size == 0 for _, size, _ in stats):
    raise ValueError(f'The corpus is empty: all {len(relpaths)} files of {what} are empty; '
                     'point data.files at non-empty text files.')
  eval_files = tuple(p for p in relpaths if is_held_out(p, holdout_fraction))
  train_files = tuple(p for p in relpaths if not is_held_out(p, holdout_fraction))
  tail = not eval_files or not train_files  # too few files to hold out whole ones
  if tail:
    train_files = eval_files = tuple(relpaths)
  key = dict(key, format=_CACHE_FORMAT, holdout_fraction=holdout_fraction,
             files=hashlib.sha1(json.dumps(stats).encode()).hexdigest(),
             **({'split': 'tail'} if tail else {}), **_tokenizer_key(tokenizer))
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  cache = Path(cache_root(cfg)) / f"{key['source']}-{digest}"
  arrays = _read_cache(cache)
  if arrays is None:
    if tail:  # one stream; its last holdout_fraction of tokens (at least one) is held out
      stream, odd, counts = _encode_documents(root, relpaths, tokenizer)
      n_eval = max(1, int(len(stream) * holdout_fraction))
      train, evals = stream[:len(stream) - n_eval], stream[len(stream) - n_eval:]
      eval_bytes = counts[1] * n_eval / max(len(stream), 1)  # the stream's mean bytes per token
    else:
      train, odd_train, _ = _encode_documents(root, train_files, tokenizer)
      evals, odd_eval, (_, eval_bytes) = _encode_documents(root, eval_files, tokenizer)
      odd = odd_train + odd_eval
    _write_cache(cache, train, evals, dict(key, train_files=train_files, eval_files=eval_files,
                                           nontext_files=odd, eval_bytes=eval_bytes))
    arrays = _read_cache(cache)
    if arrays is None:
      raise RuntimeError(f'Wrote the corpus cache {cache} but cannot read it back; delete it '
                         'or set data.cache_dir to a writable local directory.')
  meta = json.loads((cache / 'meta.json').read_text())
  odd = meta.get('nontext_files', [])
  if odd:
    warnings.warn(f'{len(odd)} of the {len(relpaths)} files of {what} do not look like text (NUL '
                  f'or other control bytes), e.g. {odd[0]!r}; they are read as text with '
                  'replacement characters. Narrow data.files to text files.', stacklevel=3)
  bpt = meta['eval_bytes'] / max(len(arrays[1]), 1)
  return Corpus(train=arrays[0], eval=arrays[1], vocab_size=vocab_size,
                bytes_per_token=1.0 if isinstance(tokenizer, ByteTokenizer) else bpt,
                train_files=train_files, eval_files=eval_files,
                holdout='tail' if tail else 'files')


def _tokenizer_key(tokenizer) -> dict:
  """What identifies the tokenizer in a corpus cache key ({} for bytes: old caches stay valid)."""
  if isinstance(tokenizer, ByteTokenizer):
    return {}
  return {'tokenizer': hashlib.sha1(tokenizer.tokenizer.to_str().encode()).hexdigest(),
          'eos': tokenizer.eos_id}


def _size_mtime(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def _read_text(path: str) -> tuple[str, bool]:
  """(the file as text, UTF-8 with invalid bytes replaced and newlines normalised; whether it
  does not look like text: a NUL byte, or more than 5% of its bytes control characters other
  than whitespace and escape)."""
  with open(path, 'rb') as f:
    raw = f.read()
  text = raw.decode('utf-8', errors='replace').replace('\r\n', '\n').replace('\r', '\n')
  control = int(_CONTROL[np.frombuffer(raw, np.uint8)].sum())
  return text, b'\0' in raw or control > 0.05 * len(raw)  # legacy 8-bit text is fine


def _encode_documents(root: str, relpaths: Sequence[str], tokenizer):
  """Concatenates ``encode(text) + [EOS]`` over files. Returns (ids [sum(len_i + 1)] in the
  cache dtype, the files that do not look like text, (tokens, bytes) where bytes counts the
  UTF-8 bytes of the texts plus one per EOS)."""
  docs, odd, n_bytes = [], [], 0
  eos = np.array([tokenizer.EOS], dtype=np.uint32)
  for relpath in relpaths:
    text, binary = _read_text(os.path.join(root, relpath))
    if binary:
      odd.append(relpath)
    docs += [np.asarray(tokenizer.encode(text), np.uint32), eos]
    n_bytes += len(text.encode('utf-8')) + 1
  ids = np.concatenate(docs) if docs else np.zeros([0], np.uint32)
  return ids.astype(_cache_dtype(tokenizer.vocab_size)), odd, (len(ids), n_bytes)


def _cache_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def cache_root(cfg) -> str:
  """`cfg.cache_dir`, else $JAX_PARADIGMS_CACHE, else ~/.cache/jax_paradigms (built corpora, judges)."""
  cache_dir = _get(cfg, 'cache_dir', '')
  return cache_dir or os.environ.get('JAX_PARADIGMS_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'jax_paradigms')


def _read_cache(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
  """Returns (train [N_train], eval [N_eval]) uint16 (uint32 past 65,536 ids) memmaps, or None
  if the cache is absent."""
  try:
    meta = json.loads((cache / 'meta.json').read_text())
    dtype = np.dtype(meta.get('dtype', 'uint16'))
    arrays = []
    for split in ('train', 'eval'):
      path = cache / f'{split}.tok'
      if path.stat().st_size != dtype.itemsize * meta[f'num_{split}_tokens']:
        return None
      arrays.append(np.memmap(path, dtype=dtype, mode='r'))
    return arrays[0], arrays[1]
  except (OSError, ValueError, KeyError):
    return None


def _write_cache(cache: Path, train: np.ndarray, evals: np.ndarray, meta: dict) -> None:
  """Writes each file to a temp name then ``os.replace``s it: safe for parallel writers."""
  cache.mkdir(parents=True, exist_ok=True)
  meta = dict(meta, num_train_tokens=len(train), num_eval_tokens=len(evals),
              dtype=str(train.dtype))
  payloads = {'train.tok': train.tobytes(),
              'eval.tok': evals.astype(train.dtype).tobytes(),
              'meta.json': json.dumps(meta, indent=1).encode()}  # last: marks completion
  for name, payload in payloads.items():
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f'.{name}.')
    try:
      with os.fdopen(fd, 'wb') as f:
        f.write(payload)
      os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable
      os.replace(tmp, cache / name)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise


def _load_tokens(cfg, holdout_fraction: float) -> Corpus:
  vocab_size = _get(cfg, 'vocab_size', None)
  if vocab_size is None:
    raise ValueError("data.source='tokens' needs data.vocab_size (the tokenizer's vocab size).")
  tokens = _read_token_file(_get(cfg, 'path', ''), cfg, 'data.path')
  eval_path = _get(cfg, 'eval_path', '')
  if eval_path:
    train, evals = tokens, _read_token_file(eval_path, cfg, 'data.eval_path')
  else:
    num_eval = int(len(tokens) * holdout_fraction)
    if num_eval == 0 or num_eval == len(tokens):
      raise ValueError(
          f'Holding out the last holdout_fraction={holdout_fraction} of {len(tokens)} tokens '
          f'leaves {"no held-out" if num_eval == 0 else "no training"} tokens; change '
          'data.holdout_fraction, add tokens, or set data.eval_path.')
    train, evals = tokens[:len(tokens) - num_eval], tokens[len(tokens) - num_eval:]
  path = _get(cfg, 'path', '')
  _check_ids(train, int(vocab_size), f'data.path={path!r}', offset=0)
  _check_ids(evals, int(vocab_size), f'data.eval_path={eval_path!r}' if eval_path else
             f'data.path={path!r}', offset=0 if eval_path else len(train))
  return Corpus(train=train, eval=evals, vocab_size=int(vocab_size), bytes_per_token=None,
                train_files=(), eval_files=())


def _read_token_file(path: str, cfg, field: str) -> np.ndarray:
  """Memory-maps a .npy or raw .bin token file. Returns [N] (flattened if saved as N-D)."""
  if not path or not os.path.isfile(path):
    raise ValueError(f'{field}={path!r} is not a file; point it at a .bin or .npy token array.')
  if path.endswith('.npy'):
    tokens = np.load(path, mmap_mode='r')
  elif path.endswith('.bin'):
    dtype = _get(cfg, 'token_dtype', 'uint16')
    if dtype not in ('uint16', 'uint32'):
      raise ValueError(f"data.token_dtype={dtype!r} must be 'uint16' or 'uint32' (the dtype "
                       f'the .bin file {path!r} was written with).')
    if os.path.getsize(path) % np.dtype(dtype).itemsize:
      raise ValueError(f'{path!r} has {os.path.getsize(path)} bytes, not a whole number of '
                       f'{dtype} tokens; check data.token_dtype.')
    if os.path.getsize(path) == 0:
      raise ValueError(f'The corpus is empty: {field}={path!r} holds no tokens.')
    tokens = np.memmap(path, dtype=dtype, mode='r')
  else:
    raise ValueError(f'{field}={path!r}: unknown token file type; use .bin (raw) or .npy.')
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f'{field}={path!r} holds {tokens.dtype}, not integer token ids.')
  if tokens.size == 0:
    raise ValueError(f'The corpus is empty: {field}={path!r} holds no tokens.')
  return tokens.reshape(-1)


def _check_ids(tokens: np.ndarray, vocab_size: int, where: str, offset: int,
               chunk: int = 1 << 24) -> None:
  """Raises if any id is outside [0, vocab_size), naming the first bad id and its position."""
  if np.iinfo(tokens.dtype).max < vocab_size and np.iinfo(tokens.dtype).min >= 0:
    return  # the dtype cannot hold a bad id; skips scanning multi-GB arrays
  for start in range(0, len(tokens), chunk):
    block = np.asarray(tokens[start:start + chunk])
    bad = (block >= vocab_size) | (block < 0)
    if bad.any():
      i = int(np.argmax(bad))
      fix = ('token ids must be non-negative; re-tokenize the data' if block[i] < 0 else
             f'raise model.vocab_size/data.vocab_size above {int(block.max())} or '
             're-tokenize the data')
      raise ValueError(f'Token id {int(block[i])} at position {offset + start + i} of {where} '
                       f'is outside [0, vocab_size={vocab_size}); {fix}.')


# text sources: cfg -> (root, relative paths, cache key, what to call them in messages)
_LOADERS: dict[str, Callable[[Any], tuple]] = {'cpython': _load_cpython, 'text': _load_text,
                                               'tokens': None}


def describe(corpus: Corpus) -> str:
  """One log line: files and tokens per split."""
  if corpus.holdout == 'tail':
    n = len(corpus.train_files)
    files = (f'{n} file{"s" if n > 1 else ""}, too few to hold out whole ones: the last '
             f'{len(corpus.eval):,} tokens are held out, ')
  else:
    files = (f'{len(corpus.train_files)} train / {len(corpus.eval_files)} eval files, '
             if corpus.train_files else 'token arrays, ')
  unit = 'byte-level' if corpus.bytes_per_token == 1.0 else (
      'bits/token' if corpus.bytes_per_token is None else
      f'{corpus.bytes_per_token:.3f} held-out bytes/token')
  return (f'corpus: {files}{len(corpus.train):,} train / {len(corpus.eval):,} eval tokens, '
          f'vocab {corpus.vocab_size} ({unit})')


# ---------------------------------------------------------------------------------------------
# Pipelines.

class _RandomWindow:
  """grain random_map: element index -> one window at a uniformly random offset."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens = tokens  # [N]
    self.seq_len = seq_len

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    offset = int(rng.integers(0, len(self.tokens) - (self.seq_len + 1), endpoint=True))
    return {'tokens': np.asarray(self.tokens[offset:offset + self.seq_len + 1], np.int32)}


def train_dataset(tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """An (effectively) infinite, seeded, resumable stream of random training windows.

  Element ``i`` is ``tokens[o_i : o_i + seq_len + 1]`` with ``o_i`` uniform in
  ``[0, len(tokens) - seq_len - 1]`` drawn from an RNG seeded by ``(seed, i)`` only.
  Global step ``k`` is elements ``[k * batch_size, (k + 1) * batch_size)``; process ``p`` of
  ``P`` keeps those ``i`` with ``i % P == p`` (local row ``j`` is global row ``j * P + p``), so
  at every step the processes' rows are disjoint and their union is, as a set, exactly the
  single-process global batch.
  Resume: ``it = iter(ds); state = it.get_state(); ...; it2 = iter(ds); it2.set_state(state)``
  continues with exactly the batches ``it`` would have produced.

  Args:
    tokens: [N] token ids (train split).
    seq_len: model context length; windows hold seq_len + 1 tokens (inputs + shifted targets).
    batch_size: the global batch size, divisible by process_count.
    seed: pipeline seed in [0, 2**32).
    process_index, process_count: this process's shard (``jax.process_index()/count()``).

  Returns:
    grain.IterDataset of ``{'tokens': np.int32 [batch_size // process_count, seq_len + 1]}``.
  """
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f'seq_len={seq_len} and batch_size={batch_size} must both be >= 1.')
  if len(tokens) < seq_len + 1:
    raise ValueError(f'A window of seq_len + 1 = {seq_len + 1} tokens is longer than the '
                     f'{len(tokens)} training tokens; lower data.seq_len or add data.')
  return random_stream(_RandomWindow(tokens, seq_len), batch_size=batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)


def eval_batches(tokens: np.ndarray, *, seq_len: int, batch_size: int,
                 num_batches: int) -> list[dict[str, np.ndarray]]:
  """Deterministic held-out batches of windows spread evenly over the whole split.

  Window ``w`` is ``tokens[w * seq_len : w * seq_len + seq_len + 1]`` (stride seq_len: windows
  share one boundary token, so the next-token targets ``window[1:]`` of all windows tile the
  split with no gap and no repeat). Of the ``n_windows`` windows, ``num_batches * batch_size``
  evenly spaced ones are used (``w_k = k * n_windows // total``), so every part of the held-out
  files is sampled; ``num_batches=0`` uses every whole batch of windows (an exact full pass up
  to the last partial batch). If the split holds fewer windows than asked, fewer batches are
  returned (``n_windows // batch_size``), but at least one: when even one full batch does not
  fit, windows wrap around (``w % n_windows``), so some repeat.

  Args:
    tokens: [N] held-out token ids.

  Returns:
    list (length <= num_batches, >= 1) of ``{'tokens': np.int32 [batch_size, seq_len + 1]}``.
  """
  if seq_len < 1 or batch_size < 1 or num_batches < 0:
    raise ValueError(f'seq_len={seq_len}, batch_size={batch_size} must be >= 1 and '
                     f'num_batches={num_batches} >= 0 (0 = the whole split).')
  num_windows = (len(tokens) - 1) // seq_len
  if num_windows < 1:
    raise ValueError(f'The eval split has {len(tokens)} tokens, fewer than one window of '
                     f'seq_len + 1 = {seq_len + 1}; lower data.seq_len or hold out more data.')
  fit = max(1, num_windows // batch_size)
  num_batches = fit if num_batches == 0 else min(num_batches, fit)
  total = num_batches * batch_size
  w = (np.arange(total) * num_windows) // total if total <= num_windows else np.arange(total)
  starts = (w % num_windows) * seq_len  # [num_batches * B]
  windows = np.stack([np.asarray(tokens[s:s + seq_len + 1], np.int32) for s in starts])
  windows = windows.reshape(num_batches, batch_size, seq_len + 1)  # [num_batches, B, L + 1]
  return [{'tokens': w} for w in windows]
