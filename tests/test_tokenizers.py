"""Subword tokenizers: tokenizer.json folders (BOS rules, chat templates), BPE trained on the
corpus (deterministic, cached, saved in the run), and bits per byte that stay bits per byte."""
import json
import os

import numpy as np
import pytest

from pipelines import subword, text as data

TEXT = ['def add(a, b):\n    return a + b\n', 'class Point:\n    x: int = 0\n',
        'for i in range(10):\n    print(i * i)\n', 'import os\nprint(os.getcwd())\n'] * 30
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _llama3_style(folder):
  """A byte-level BPE whose post-processor prepends BOS (as Llama 3's does), with specials and a
  chat template in tokenizer_config.json."""
  from tokenizers import processors
  tok = subword.train_bpe(TEXT, 320).tokenizer
  tok.add_special_tokens(['<|begin|>', '<|end|>', '<|user|>', '<|assistant|>'])
  bos = tok.token_to_id('<|begin|>')
  tok.post_processor = processors.TemplateProcessing(single='<|begin|> $A',
                                                     special_tokens=[('<|begin|>', bos)])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, 'tokenizer.json'))
  with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
    json.dump({'bos_token': '<|begin|>', 'eos_token': '<|end|>', 'chat_template': TEMPLATE,
               'tokenizer_class': 'PreTrainedTokenizerFast'}, f)
  return folder


def test_a_tokenizer_folder_keeps_its_bos_rule_specials_and_chat_template(tmp_path):
  tok = subword.load_tokenizer_folder(_llama3_style(str(tmp_path / 't')))
  assert tok.bos_id == tok.tokenizer.token_to_id('<|begin|>')
  assert tok.eos_id == tok.tokenizer.token_to_id('<|end|>')
  ids = tok.encode_prompt('def add(a, b):')
  assert ids[0] == tok.bos_id and tok.encode('def add(a, b):').tolist() == ids[1:]
  assert tok.decode(ids) == 'def add(a, b):'  # specials skipped, bytes exact
  chat = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}])
  assert chat == '<|begin|><|user|>hi<|end|><|assistant|>'
  transformers = pytest.importorskip('transformers')
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 't' / 'tokenizer.json'),
                                             bos_token='<|begin|>', eos_token='<|end|>')
  ref.chat_template = TEMPLATE
  assert ref.encode('def add(a, b):') == ids
  assert ref.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False,
                                 add_generation_prompt=True) == chat


def test_a_sentencepiece_converted_tokenizer_round_trips(tmp_path):
  from tokenizers import SentencePieceBPETokenizer
  sp = SentencePieceBPETokenizer()
  sp.train_from_iterator(TEXT, vocab_size=200, special_tokens=['<unk>', '<s>', '</s>'],
                         show_progress=False)
  folder = tmp_path / 'sp'
  folder.mkdir()
  sp.save(str(folder / 'tokenizer.json'))
  with open(folder / 'tokenizer_config.json', 'w') as f:
    json.dump({'bos_token': '<s>', 'eos_token': '</s>'}, f)
  tok = subword.load_tokenizer_folder(str(folder))
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  line = 'print(i * i)'
  assert tok.decode(tok.encode(line)) == line


def test_bpe_training_is_deterministic_and_compresses(tmp_path):
  a = subword.train_bpe(TEXT, 400)
  b = subword.train_bpe(TEXT, 400)
  assert a.tokenizer.to_str() == b.tokenizer.to_str()
  assert (a.eos_id, a.mask_id) == (0, 1) and a.vocab_size <= 400
  sample = TEXT[0] + TEXT[1]
  ids = a.encode(sample)
  assert a.decode(ids) == sample and len(ids) < len(sample.encode()) / 2
  weird = 'naïve ☃ \x00 tabs\t'  # any bytes encode: byte-level, nothing unknown
  assert a.decode(a.encode(weird)) == weird


def _corpus(tmp_path, n=12):
  root = tmp_path / 'corpus'
  root.mkdir()
  for i in range(n):
    (root / f'f{i}.py').write_text(''.join(TEXT[i % 4::4][:8]) + f'# file {i}\n')
  return root


class Cfg:
  def __init__(self, **kw):
    self.__dict__.update(dict(source='text', holdout_fraction=0.25, seq_len=16, vocab_size=None,
                              text_tokenizer='', cache_dir='', train_tokens=0), **kw)


def test_bpe_corpus_is_cached_and_counts_held_out_bytes_per_token(tmp_path):
  root = _corpus(tmp_path)
  cfg = Cfg(files=str(root), cache_dir=str(tmp_path / 'cache'), text_tokenizer='bpe:300')
  tok = subword.resolve_tokenizer(cfg)
  cached = [p for p in os.listdir(tmp_path / 'cache') if p.startswith('bpe300-')]
  assert len(cached) == 1
  stamp = os.path.getmtime(tmp_path / 'cache' / cached[0] / 'tokenizer.json')
  again = subword.resolve_tokenizer(cfg)  # read back, not retrained
  assert again.tokenizer.to_str() == tok.tokenizer.to_str()
  assert os.path.getmtime(tmp_path / 'cache' / cached[0] / 'tokenizer.json') == stamp
  corpus = data.load_corpus(cfg, tok)
  byte = data.load_corpus(Cfg(files=str(root), cache_dir=str(tmp_path / 'cache')))
  assert byte.bytes_per_token == 1.0 and corpus.eval_files == byte.eval_files
  # bytes per token is the held-out split's bytes (one per document break) over its tokens
  assert corpus.bytes_per_token == pytest.approx(len(byte.eval) / len(corpus.eval))
  assert corpus.bytes_per_token > 1.5
  eos = np.flatnonzero(np.asarray(corpus.eval) == tok.eos_id)
  first = tok.decode(np.asarray(corpus.eval[:eos[0]]))
  assert first == (root / corpus.eval_files[0]).read_text()


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path):
  root = _corpus(tmp_path)
  cfg = Cfg(files=str(root), cache_dir=str(tmp_path / 'cache'), text_tokenizer='bpe:300',
            vocab_size=258)
  with pytest.raises(ValueError, match=r"tokenizer 'bpe:300' has 300 ids but model.vocab_size="
                                       r'258; raise model.vocab_size'):
    data.load_corpus(cfg)
  with pytest.raises(ValueError, match="use '' \\(bytes\\), 'bpe:N' or 'hf:DIR'"):
    subword.resolve_tokenizer(Cfg(files=str(root), text_tokenizer='sentencepiece'))
