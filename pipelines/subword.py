"""Subword tokenizers from the `tokenizers` library: a folder's `tokenizer.json` (BPE, byte-level
BPE, SentencePiece-converted), and byte-level BPE trained on the user's corpus.

`TextTokenizer` is the one interface the data pipeline, the samplers' CLI and the evaluators
use for every text tokenizer; `ByteTokenizer` (pipelines/text.py, the default) has the same
attributes. A tokenizer's own BOS rule (its post-processor, e.g. Llama 3 prepends
<|begin_of_text|>, Qwen prepends nothing) applies to `encode_prompt`; `encode` (corpus text)
never adds specials, documents are joined by `eos_id`.

A trained BPE is deterministic (same files, same size, same tokenizer.json), cached under the
data cache keyed by both, and saved in the run's workdir so sampling reloads the same one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

EOS_TOKEN, MASK_TOKEN = '<|endoftext|>', '<|mask|>'


class TextTokenizer:
  """A `tokenizers.Tokenizer` with the ids a paradigm needs.

  vocab_size: ids are < this; eos_id: document separator / stop id; bos_id (or None);
  mask_id: the absorbing state of masked diffusion (or None); chat_template: a Jinja template
  (Hugging Face tokenizer_config.json) or None.
  """

  def __init__(self, tokenizer, *, eos_id=None, bos_id=None, mask_id=None, pad_id=None,
               chat_template: str | None = None, name: str = ''):
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.eos_id, self.bos_id, self.mask_id, self.pad_id = eos_id, bos_id, mask_id, pad_id
    self.chat_template = chat_template
    self.name = name

  # the ByteTokenizer-compatible names the pipeline uses
  @property
  def EOS(self):  # noqa: N802
    return self.eos_id

  @property
  def MASK(self):  # noqa: N802
    return self.mask_id

  def encode(self, text: str | bytes) -> np.ndarray:
    """Token ids of corpus text, no special tokens added: uint32 [N]."""
    if isinstance(text, bytes):
      text = text.decode('utf-8', errors='replace')
    return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.uint32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, np.uint32)
            for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

  def encode_prompt(self, text: str) -> list[int]:
    """Ids of a prompt under the tokenizer's own special-token rule (BOS where it adds one)."""
    return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

  def decode(self, ids, skip_special: bool = True) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.vocab_size]
    return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The folder's chat template rendered with Jinja (as transformers does), e.g.
    [{'role': 'user', 'content': 'hi'}] -> the prompt text (BOS included when the template
    writes it; pass the result to `encode` then, not `encode_prompt`)."""
    if not self.chat_template:
      raise ValueError(f'tokenizer {self.name!r} has no chat template (tokenizer_config.json '
                       'chat_template); pass the prompt text as it is')
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals['raise_exception'] = _raise
    special = {}
    for key, tid in (('bos_token', self.bos_id), ('eos_token', self.eos_id)):
      if tid is not None:
        special[key] = self.tokenizer.id_to_token(tid)
    return env.from_string(self.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special)

  def save(self, folder: str) -> None:
    """tokenizer.json plus our special ids (tokenizer_ids.json) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    self.tokenizer.save(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, 'tokenizer_ids.json'), 'w') as f:
      json.dump({'eos_id': self.eos_id, 'bos_id': self.bos_id, 'mask_id': self.mask_id,
                 'pad_id': self.pad_id, 'name': self.name}, f, indent=2)


def _raise(message):
  raise ValueError(f'chat template: {message}')


def _token_id(tokenizer, value):
  """An id from a token string, an id, or an AddedToken-style dict ({'content': ...})."""
  if isinstance(value, dict):
    value = value.get('content')
  if isinstance(value, int):
    return value
  if isinstance(value, str):
    return tokenizer.token_to_id(value)
  return None


def load_tokenizer_folder(folder: str, model_config: dict | None = None) -> TextTokenizer:
  """The `tokenizer.json` of a Hugging Face-format folder, with BOS/EOS/pad/mask ids from
  tokenizer_config.json, else config.json (`model_config`), and the chat template if any."""
  from tokenizers import Tokenizer
  path = os.path.join(folder, 'tokenizer.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{folder} has no tokenizer.json (the `tokenizers` format); only '
                            'token ids can be used with this model (--prompt-ids)')
  try:
    tok = Tokenizer.from_file(path)
  except Exception as err:  # noqa: BLE001 - the library's own error types vary
    raise ValueError(f'{path} is not a tokenizer.json the `tokenizers` library reads ({err})') from None
  tc, ids = {}, {}
  tc_path = os.path.join(folder, 'tokenizer_config.json')
  if os.path.exists(tc_path):
    with open(tc_path) as f:
      tc = json.load(f)
  ids_path = os.path.join(folder, 'tokenizer_ids.json')
  if os.path.exists(ids_path):  # written by TextTokenizer.save
    with open(ids_path) as f:
      ids = json.load(f)
  mc = model_config or {}

  def pick(key):
    if ids.get(f'{key}_id') is not None:
      return ids[f'{key}_id']
    v = _token_id(tok, tc.get(f'{key}_token'))
    if v is None:
      v = mc.get(f'{key}_token_id')
      v = v[0] if isinstance(v, list) and v else v
    return v

  template = tc.get('chat_template')
  if isinstance(template, list):  # named templates: take 'default'
    template = {t.get('name'): t.get('template') for t in template}.get('default')
  jinja_path = os.path.join(folder, 'chat_template.jinja')
  if template is None and os.path.exists(jinja_path):
    with open(jinja_path) as f:
      template = f.read()
  return TextTokenizer(tok, eos_id=pick('eos'), bos_id=pick('bos'), mask_id=pick('mask'),
                       pad_id=pick('pad'), chat_template=template,
                       name=ids.get('name') or os.path.basename(os.path.normpath(folder)))


def train_bpe(texts, vocab_size: int) -> TextTokenizer:
  """Byte-level BPE (GPT-2 style: any byte string encodes, nothing is unknown) of `vocab_size`
  ids trained on the iterable of strings `texts`. Id 0 is EOS, 1 is MASK, then the 256 byte
  symbols, then the merges. Deterministic for the same texts in the same order."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if vocab_size < 258 + 2:
    raise ValueError(f'data.text_tokenizer=bpe:{vocab_size}: a byte-level BPE needs more than '
                     '260 ids (2 specials + 256 bytes + merges)')
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, MASK_TOKEN],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  return TextTokenizer(tok, eos_id=tok.token_to_id(EOS_TOKEN), mask_id=tok.token_to_id(MASK_TOKEN),
                       name=f'bpe:{vocab_size}')


def resolve_tokenizer(cfg):
  """The text tokenizer `cfg.text_tokenizer` names: '' -> ByteTokenizer; 'bpe:N' -> a byte-level
  BPE of N ids trained on the training files of the source (cached by files and N);
  'hf:DIR' (or a folder) -> DIR/tokenizer.json."""
  from pipelines import text
  spec = getattr(cfg, 'text_tokenizer', '') or ''
  if not spec:
    return text.ByteTokenizer()
  if spec.startswith('bpe:'):
    try:
      size = int(spec[4:])
    except ValueError:
      raise ValueError(f'data.text_tokenizer={spec!r}: give bpe:N with N the vocabulary size, '
                       'e.g. bpe:4096') from None
    source = getattr(cfg, 'source', None) or 'cpython'
    if source == 'tokens':
      raise ValueError("data.text_tokenizer=bpe:N trains on text; data.source='tokens' is "
                       'already tokenized (set data.text_tokenizer=\'\')')
    root, relpaths, key, _ = text._LOADERS[source](cfg)
    holdout = float(getattr(cfg, 'holdout_fraction', None) or 0.05)
    train = [p for p in relpaths if not text.is_held_out(p, holdout)]
    train = train or list(relpaths)
    stats = [(p, *text._size_mtime(os.path.join(root, p))) for p in train]
    digest = hashlib.sha1(json.dumps(dict(key, files=stats, size=size), sort_keys=True).encode())
    cache = Path(text.cache_root(cfg)) / f'bpe{size}-{digest.hexdigest()[:20]}'
    if (cache / 'tokenizer.json').exists():
      return load_tokenizer_folder(str(cache))
    tok = train_bpe((text._read_text(os.path.join(root, p))[0] for p in train), size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f'.{cache.name}.'))
    tok.save(str(tmp))
    try:
      os.replace(tmp, cache)  # atomic: a reader sees all of it or none
    except OSError:  # another process won the race: use its copy
      import shutil
      shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer_folder(str(cache))
  folder = os.path.expanduser(spec[3:] if spec.startswith('hf:') else spec)
  if not os.path.isdir(folder):
    raise ValueError(f"data.text_tokenizer={spec!r}: use '' (bytes), 'bpe:N' or 'hf:DIR' with "
                     'DIR a folder holding tokenizer.json')
  return load_tokenizer_folder(folder)
