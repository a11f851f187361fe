"""Tests for pipelines/text.py: corpora, hold-out, caching, seeded/resumable/sharded pipelines."""
import hashlib
import itertools
import os

import ml_collections
import numpy as np
import pytest

from pipelines import text as data


def make_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(source='text', files='', path='', eval_path='', token_dtype='uint16',
             holdout_fraction=0.05, vocab_size=258, seq_len=16, batch_size=8, seed=0,
             cache_dir='')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def sha1_held_out(relpath, fraction):
  return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 10_000 < fraction * 10_000


def marker(i):
  return f'<<M{i:03d}>>'


@pytest.fixture
def marker_corpus(tmp_path):
  """40 files in nested dirs, each with a unique marker; ~30% held out at fraction 0.3."""
  root = tmp_path / 'docs'
  for i in range(40):
    path = root / f'sub{i % 3}' / f'doc{i:03d}.txt'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{marker(i)} ' + 'lorem ipsum é ' * (3 + i % 5) + f'{marker(i)}\n')
  cfg = make_cfg(files=str(root / '**' / '*.txt'), holdout_fraction=0.3,
                 cache_dir=str(tmp_path / 'cache'))
  return cfg, root


@pytest.fixture(scope='session')
def cpython_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cpython_cache'))


def take(ds, n, state=None):
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return [next(it)['tokens'] for _ in range(n)], it


# --- Tokenizer -------------------------------------------------------------------------------

def test_tokenizer_round_trip_non_ascii():
  tok = data.ByteTokenizer()
  text = 'def f(x):\n    return "héllo → 世界 🙂"  # ünïcödé\n'
  ids = tok.encode(text)
  assert ids.dtype == np.uint16 and ids.ndim == 1
  assert len(ids) == len(text.encode('utf-8')) and ids.max() < 256
  assert tok.decode(ids) == text
  with_special = np.concatenate([ids[:5], [tok.EOS, tok.MASK], ids[5:]])
  assert tok.decode(with_special) == text  # special ids are dropped
  assert (tok.EOS, tok.MASK, tok.vocab_size) == (256, 257, 258)


# --- Text corpora and hold-out ---------------------------------------------------------------

def test_text_holdout_follows_sha1_rule_and_markers_never_reach_training(marker_corpus):
  cfg, root = marker_corpus
  corpus = data.load_corpus(cfg)
  relpaths = sorted(p.relative_to(root).as_posix() for p in root.rglob('*.txt'))
  expected_eval = [p for p in relpaths if sha1_held_out(p, 0.3)]
  assert list(corpus.eval_files) == expected_eval
  assert list(corpus.train_files) == [p for p in relpaths if p not in expected_eval]
  assert 0 < len(expected_eval) < len(relpaths)
  held = {marker(int(p[-7:-4])) for p in corpus.eval_files}
  kept = {marker(int(p[-7:-4])) for p in corpus.train_files}
  tok = data.ByteTokenizer()
  train_text, eval_text = tok.decode(corpus.train), tok.decode(corpus.eval)
  assert all(m in train_text for m in kept) and not any(m in train_text for m in held)
  assert all(m in eval_text for m in held) and not any(m in eval_text for m in kept)
  # One EOS per document, byte-level.
  assert int((corpus.train == tok.EOS).sum()) == len(corpus.train_files)
  assert int((corpus.eval == tok.EOS).sum()) == len(corpus.eval_files)
  assert corpus.bytes_per_token == 1.0 and corpus.vocab_size == 258
  # Sampled training windows contain no held-out marker.
  ds = data.train_dataset(corpus.train, seq_len=cfg.seq_len, batch_size=8, seed=1)
  batches, _ = take(ds, 40)
  windows = [tok.decode(row) for batch in batches for row in batch]
  assert not any(m in w for w in windows for m in held)
  assert any(m in w for w in windows for m in kept)  # the check above can see markers


def test_text_cache_hit_skips_encoding(marker_corpus, monkeypatch):
  cfg, _ = marker_corpus
  first = data.load_corpus(cfg)
  assert isinstance(first.train, np.memmap)
  assert str(first.train.filename).startswith(os.path.realpath(cfg.cache_dir))

  def fail(*args, **kwargs):
    raise AssertionError('cache miss: documents were re-encoded')

  monkeypatch.setattr(data, '_encode_documents', fail)
  second = data.load_corpus(cfg)
  np.testing.assert_array_equal(first.train, second.train)
  np.testing.assert_array_equal(first.eval, second.eval)
  assert first.eval_files == second.eval_files


def test_cache_dir_defaults_to_env_var(marker_corpus, tmp_path, monkeypatch):
  cfg, _ = marker_corpus
  monkeypatch.setenv('JAX_PARADIGMS_CACHE', str(tmp_path / 'env_cache'))
  cfg.cache_dir = ''
  corpus = data.load_corpus(cfg)
  assert str(corpus.train.filename).startswith(os.path.realpath(tmp_path / 'env_cache'))


def test_cpython_corpus(cpython_cache, monkeypatch):
  cfg = make_cfg(source='cpython', cache_dir=cpython_cache, seq_len=256)
  corpus = data.load_corpus(cfg)
  files = corpus.train_files + corpus.eval_files
  assert len(files) > 500
  assert 0.03 <= len(corpus.eval_files) / len(files) <= 0.08
  assert not set(corpus.train_files) & set(corpus.eval_files)
  assert list(corpus.train_files) == sorted(corpus.train_files)
  assert all(p.endswith('.py') for p in files)
  assert not any('site-packages' in p or 'dist-packages' in p for p in files)
  assert all(sha1_held_out(p, 0.05) for p in corpus.eval_files)
  assert not any(sha1_held_out(p, 0.05) for p in corpus.train_files)
  assert 'os.py' in files
  assert int((corpus.train == data.ByteTokenizer.EOS).sum()) == len(corpus.train_files)
  assert int(corpus.train.max()) == data.ByteTokenizer.EOS
  monkeypatch.setattr(data, '_encode_documents', lambda *a: pytest.fail('cache miss'))
  again = data.load_corpus(cfg)
  assert isinstance(again.train, np.memmap) and again.train.filename == corpus.train.filename
  assert again.train_files == corpus.train_files and len(again.eval) == len(corpus.eval)
  assert 'train' in data.describe(again) and f'{len(corpus.eval_files)} eval files' in (
      data.describe(again))


# --- Token arrays ----------------------------------------------------------------------------

def test_tokens_bin_and_npy_load_with_tail_holdout(tmp_path):
  tokens = (np.arange(1000) % 500).astype(np.uint16)
  tokens.tofile(tmp_path / 'a.bin')
  np.save(tmp_path / 'a.npy', tokens.astype(np.int64))
  for name in ('a.bin', 'a.npy'):
    corpus = data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / name),
                                       vocab_size=500, holdout_fraction=0.1))
    np.testing.assert_array_equal(corpus.train, tokens[:900])
    np.testing.assert_array_equal(corpus.eval, tokens[900:])
    assert corpus.bytes_per_token is None and corpus.train_files == ()
    assert corpus.vocab_size == 500


def test_tokens_uint32_bin_and_eval_path(tmp_path):
  train = np.arange(70_000, 70_500, dtype=np.uint32)
  held = np.arange(100, 200, dtype=np.uint32)
  train.tofile(tmp_path / 'train.bin')
  held.tofile(tmp_path / 'val.bin')
  corpus = data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / 'train.bin'),
                                     eval_path=str(tmp_path / 'val.bin'),
                                     token_dtype='uint32', vocab_size=100_000))
  np.testing.assert_array_equal(corpus.train, train)
  np.testing.assert_array_equal(corpus.eval, held)


# --- Errors ----------------------------------------------------------------------------------

def test_no_files_match(tmp_path):
  with pytest.raises(ValueError, match=r'No files match data.files=.*nothing_here'):
    data.load_corpus(make_cfg(files=str(tmp_path / 'nothing_here' / '*.txt')))


def test_empty_corpus(tmp_path):
  for i in range(5):
    (tmp_path / f'{i}.txt').write_text('')
  with pytest.raises(ValueError, match='corpus is empty'):
    data.load_corpus(make_cfg(files=str(tmp_path / '*.txt'), cache_dir=str(tmp_path / 'c')))


def test_too_few_files_hold_out_the_tail_of_the_stream(tmp_path):
  """Whole-file hold-out leaves a split empty (here 'only.txt' alone, on either side of its sha1
  bucket): the last holdout_fraction of the tokens is held out instead."""
  (tmp_path / 'only.txt').write_text('some text ' * 40)  # sha1 bucket of 'only.txt' decides
  bucket = int(hashlib.sha1(b'only.txt').hexdigest(), 16) % 10_000
  cfg = make_cfg(files=str(tmp_path / '*.txt'), cache_dir=str(tmp_path / 'c'), seq_len=2)
  for fraction in ((bucket - 1) / 10_000 if bucket > 1 else 0.5, (bucket + 1) / 10_000):
    cfg.holdout_fraction = fraction
    corpus = data.load_corpus(cfg)
    n_eval = max(1, int(401 * fraction))  # 400 bytes and the EOS
    assert corpus.holdout == 'tail' and (len(corpus.train), len(corpus.eval)) == (401 - n_eval, n_eval)


def test_window_longer_than_split(marker_corpus):
  cfg, _ = marker_corpus
  cfg.seq_len = 10_000
  with pytest.raises(ValueError, match=r'10001 tokens.*train: \d+ tokens, eval: \d+.*seq_len'):
    data.load_corpus(cfg)
  corpus = data.load_corpus(make_cfg(**{**cfg.to_dict(), 'seq_len': 16}))
  with pytest.raises(ValueError, match='lower data.seq_len'):
    data.train_dataset(corpus.eval, seq_len=len(corpus.eval), batch_size=2, seed=0)
  with pytest.raises(ValueError, match='fewer than one window'):
    data.eval_batches(corpus.eval, seq_len=len(corpus.eval), batch_size=2, num_batches=1)


def test_token_id_out_of_vocab(tmp_path):
  tokens = np.arange(100, dtype=np.int32)
  tokens[37] = 300
  np.save(tmp_path / 't.npy', tokens)
  with pytest.raises(ValueError, match=r'Token id 300 at position 37 .*t\.npy.*vocab_size'):
    data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / 't.npy'), vocab_size=258))


def test_text_needs_byte_vocab(marker_corpus):
  cfg, _ = marker_corpus
  cfg.vocab_size = 256
  with pytest.raises(ValueError, match=r'raise model.vocab_size \(and data.vocab_size\) to at least 258'):
    data.load_corpus(cfg)


def test_bad_source_missing_file_bad_dtype(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown data.source='imagenet'"):
    data.load_corpus(make_cfg(source='imagenet'))
  with pytest.raises(ValueError, match=r'data.path=.*missing.bin.*is not a file'):
    data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / 'missing.bin')))
  np.arange(100, dtype=np.uint16).tofile(tmp_path / 'a.bin')
  with pytest.raises(ValueError, match=r"token_dtype='int8'"):
    data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / 'a.bin'), token_dtype='int8'))
  with pytest.raises(ValueError, match='holdout_fraction'):
    data.load_corpus(make_cfg(source='tokens', path=str(tmp_path / 'a.bin'),
                              holdout_fraction=0.0))


# --- Training pipeline -----------------------------------------------------------------------

TOKENS = np.arange(5000, dtype=np.uint32)  # unique ids: a window's first id is its offset


def test_batches_are_windows_of_the_stream():
  batches, _ = take(data.train_dataset(TOKENS, seq_len=16, batch_size=4, seed=0), 10)
  for batch in batches:
    assert batch.shape == (4, 17) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, batch[:, :1] + np.arange(17))  # contiguous slices
  offsets = np.concatenate([b[:, 0] for b in batches])
  assert offsets.min() >= 0 and offsets.max() <= len(TOKENS) - 17
  assert len(set(offsets.tolist())) > 30  # random offsets, not a fixed window


def test_same_seed_same_batches_different_seed_different():
  make = lambda seed: take(data.train_dataset(TOKENS, seq_len=8, batch_size=4, seed=seed), 6)[0]
  a, b, c = make(7), make(7), make(8)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not any(np.array_equal(x, y) for x, y in zip(a, c))


def test_resume_from_state_matches_unbroken_iterator():
  ds = data.train_dataset(TOKENS, seq_len=8, batch_size=4, seed=3)
  _, it = take(ds, 5)
  state = it.get_state()
  unbroken = [next(it)['tokens'] for _ in range(5)]
  resumed, _ = take(data.train_dataset(TOKENS, seq_len=8, batch_size=4, seed=3), 5, state)
  assert all(np.array_equal(x, y) for x, y in zip(unbroken, resumed))
  fresh, _ = take(ds, 5)  # guard: resuming is not just restarting
  assert not all(np.array_equal(x, y) for x, y in zip(fresh, resumed))


def test_process_sharding_partitions_the_global_batch():
  kwargs = dict(seq_len=8, batch_size=8, seed=5)
  global_batches, _ = take(data.train_dataset(TOKENS, **kwargs), 4)
  shards = [take(data.train_dataset(TOKENS, process_index=p, process_count=2, **kwargs), 4)[0]
            for p in range(2)]
  for step, global_batch in enumerate(global_batches):
    p0, p1 = shards[0][step], shards[1][step]
    assert p0.shape == p1.shape == (4, 9)
    # Process p holds global element indices k*B + p, k*B + p + 2, ...: disjoint halves.
    np.testing.assert_array_equal(p0, global_batch[0::2])
    np.testing.assert_array_equal(p1, global_batch[1::2])
  with pytest.raises(ValueError, match='not divisible by process_count=3'):
    data.train_dataset(TOKENS, process_index=0, process_count=3, **kwargs)


# --- Eval batches ----------------------------------------------------------------------------

def test_eval_batches_tile_the_split_deterministically():
  tokens = np.arange(121, dtype=np.uint16)  # exactly 12 windows of seq_len 10
  batches = data.eval_batches(tokens, seq_len=10, batch_size=4, num_batches=0)  # 0 = all
  assert len(batches) == 3
  rows = np.concatenate([b['tokens'] for b in batches])
  assert rows.dtype == np.int32 and rows.shape == (12, 11)
  np.testing.assert_array_equal(rows[:, 0], np.arange(12) * 10)  # stride seq_len
  targets = rows[:, 1:].reshape(-1)
  np.testing.assert_array_equal(targets, np.arange(1, 121))  # every target exactly once
  again = data.eval_batches(tokens, seq_len=10, batch_size=4, num_batches=0)
  assert all(np.array_equal(x['tokens'], y['tokens']) for x, y in zip(batches, again))


def test_eval_batches_are_spread_over_the_whole_split():
  tokens = np.arange(1001, dtype=np.uint16)  # 100 windows of seq_len 10
  (b,) = data.eval_batches(tokens, seq_len=10, batch_size=4, num_batches=1)
  np.testing.assert_array_equal(b['tokens'][:, 0], [0, 250, 500, 750])


def test_eval_batches_short_split_uses_fewer_batches_or_wraps():
  tokens = np.arange(101, dtype=np.uint16)  # exactly 10 windows of seq_len 10
  assert len(data.eval_batches(tokens, seq_len=10, batch_size=4, num_batches=5)) == 2
  (only,) = data.eval_batches(tokens, seq_len=10, batch_size=16, num_batches=5)
  assert only['tokens'].shape == (16, 11)
  np.testing.assert_array_equal(only['tokens'][:, 0], (np.arange(16) % 10) * 10)
