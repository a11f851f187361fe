"""Text embeddings (paradigms/embedding.py, evaluators/retrieval.py): InfoNCE against a naive
loop, pooling against a direct computation, padding invariance through the real attention path,
and the retrieval metrics on a hand-made case with known ranks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluators import retrieval
from paradigms import embedding as emb
from paradigms.nn.transformer import Transformer, TransformerConfig


def test_info_nce_equals_a_naive_loop():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(5, 8))
  d = rng.normal(size=(5, 8))
  q, d = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, d))
  tau = 0.1
  naive = 0.0
  for i in range(5):
    den = sum(math.exp(q[i] @ d[j] / tau) for j in range(5))
    naive -= math.log(math.exp(q[i] @ d[i] / tau) / den)
  naive /= 5
  sym = 0.0
  for i in range(5):
    den = sum(math.exp(d[i] @ q[j] / tau) for j in range(5))
    sym -= math.log(math.exp(d[i] @ q[i] / tau) / den)
  sym /= 5
  loss, acc = emb.info_nce(jnp.asarray(q), jnp.asarray(d), tau)
  np.testing.assert_allclose(loss, naive, rtol=1e-5)
  top1 = np.mean([np.argmax([q[i] @ d[j] for j in range(5)]) == i for i in range(5)])
  np.testing.assert_allclose(acc, top1)
  both, _ = emb.info_nce(jnp.asarray(q), jnp.asarray(d), tau, symmetric=True)
  np.testing.assert_allclose(both, 0.5 * (naive + sym), rtol=1e-5)


def test_pooling_mean_and_last_skip_padding():
  h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  valid = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(emb.pool(h, valid, 'mean'), [h[0, :2].mean(0), h[1].mean(0)])
  np.testing.assert_allclose(emb.pool(h, valid, 'last'), [h[0, 1], h[1, 3]])


@pytest.mark.parametrize('mask,pooling', [('causal', 'last'), ('causal', 'mean'),
                                          ('bidirectional', 'mean')])
def test_embedding_does_not_depend_on_padding(mask, pooling):
  """A text padded to 12 or to 20 tokens embeds the same, through the real attention path."""
  cfg = TransformerConfig(vocab_size=258, d_model=32, n_layers=2, n_heads=4, max_len=32,
                          mask=mask)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  opt = emb.Options(pooling=pooling)
  text = jnp.array([[100, 101, 102, 32, 40, 41, 58]])
  pad = lambda n: jnp.concatenate([text, jnp.full((1, n - 7), opt.pad_id)], axis=1)
  a = emb.encode(model, params, pad(12), opt)
  b = emb.encode(model, params, pad(20), opt)
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(a), 1.0, rtol=1e-5)
  other = emb.encode(model, params, pad(12).at[0, 3].set(33), opt)
  assert float(jnp.abs(other - a).max()) > 1e-4  # and it does depend on the text


def test_retrieval_metrics_on_a_hand_made_case():
  scores = np.array([[0.9, 0.1, 0.5],   # relevant 0: rank 0
                     [0.9, 0.1, 0.5],   # relevant 1: rank 2
                     [0.5, 0.5, 0.5]])  # relevant 2: ties count against it: rank 2
  r = retrieval.ranks(scores, [0, 1, 2])
  np.testing.assert_array_equal(r, [0, 2, 2])
  assert retrieval.recall_at(r, 1) == pytest.approx(1 / 3)
  assert retrieval.recall_at(r, 3) == 1.0
  assert retrieval.ndcg_at(r, 10) == pytest.approx((1 + 2 / math.log2(4)) / 3)
  assert retrieval.ndcg_at(r, 2) == pytest.approx(1 / 3)
  b = retrieval.by_bucket(r, [100, 5000, 20_000])
  assert list(b) == ['<256', '256-1k', '1k-4k', '4k-8k', '8k+']
  assert b['<256']['recall@1'] == 1.0 and b['4k-8k']['count'] == 1 and b['8k+']['recall@1'] == 0
  assert b['256-1k']['count'] == 0 and math.isnan(b['256-1k']['recall@10'])
  with pytest.raises(ValueError, match='relevant'):
    retrieval.ranks(scores, [0, 1, 3])


def test_code_and_passkey_retrieval_sets():
  from pipelines import retrieval as pr
  files = [('a.py', 'def add(a, b):\n    """Add two numbers and return the sum."""\n    return a + b\n' * 4),
           ('b.py', 'def mul(x, y):\n    return x * y\n' * 12),
           ('c.txt', '   \n')]
  s = pr.code_retrieval(files, passage_len=32, seed=1)
  assert s.names == ['a.py', 'b.py'] and len(s.docs) == 2  # the blank file is dropped
  assert s.kinds == ['docstring', 'passage', 'signature', 'passage']
  assert s.queries[0] == 'Add two numbers and return the sum.' and s.queries[2] == 'def mul(x, y):'
  for q, i in zip(s.queries, s.relevant):
    assert q in s.docs[i]  # every query is cut from its relevant document
  assert pr.code_retrieval(files, passage_len=32, seed=1).queries == s.queries  # deterministic
  filler = 'import os\nx = 1\n' * 400
  p = pr.passkey_retrieval(filler, n_docs=4, doc_len=512, seed=0)
  assert len(p.docs) == 4 and all(len(d.encode()) == 512 for d in p.docs)
  for q, i, name in zip(p.queries, p.relevant, p.names):
    assert name in q and f'The pass key of {name} is ' in p.docs[i]
    assert sum(name in d for d in p.docs) == 1
  with pytest.raises(ValueError, match='filler'):
    pr.passkey_retrieval('short', n_docs=4, doc_len=512)
  with pytest.raises(ValueError, match='non-empty'):
    pr.code_retrieval([('x.py', '')])


def test_contrastive_fine_tune_from_a_trained_ar_run(tmp_path):
  """configs/embed_code.py:tiny,ar from a tiny AR run through the one trainer: the params load
  (init_from), InfoNCE falls on the training pairs, and held-out evaluation reports it."""
  import os
  from train.config import from_file
  from train.trainer import train
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  ar = from_file(os.path.join(root, 'configs', 'ar_code.py:tiny'))
  ar.data.cache_dir = str(tmp_path)
  ar.train.update(steps=4, eval_every=4, ckpt_every=4, log_every=2)
  train(ar, str(tmp_path / 'ar'))
  c = from_file(os.path.join(root, 'configs', 'embed_code.py:tiny,ar'))
  c.train.update(init_from=str(tmp_path / 'ar'), steps=30, eval_every=30, ckpt_every=30,
                 log_every=10, lr=3e-3)
  c.data.update(batch_size=8, seq_len=64, query_len=32, cache_dir=str(tmp_path))
  train(c, str(tmp_path / 'emb'))
  import json
  rows = [json.loads(x) for x in open(tmp_path / 'emb' / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert losses[-1] < losses[0] - 0.1, losses
  assert any('eval_top1' in r for r in rows)
  # python -m sample --embed: one unit row per text; a text over data.seq_len is the weighted mean
  # of its chunks' embeddings; an empty text is one clear error
  from sample.__main__ import main as sample_main
  from train.checkpoint import load_run
  from train.cli import UserError
  from paradigms import embedding as pe
  short, long_ = 'def add(a, b):', 'x = 1\n' * 20  # 120 bytes: chunks of 64 and 56
  jl = tmp_path / 'texts.jsonl'
  jl.write_text('\n'.join(json.dumps({'id': k, 'text': t}) for k, t in enumerate([short, long_])))
  out = tmp_path / 'e.npy'
  sample_main(['--workdir', str(tmp_path / 'emb'), '--embed', str(jl), '--out', str(out),
               '--num', '3'])
  e = np.load(out)
  assert e.shape == (2, c.model.d_model) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
  config, model, params = load_run(str(tmp_path / 'emb'))
  opt = pe.Options(**config.loss)
  def one(ids):
    x = np.full((1, 64), opt.pad_id, np.int32)
    x[0, :len(ids)] = ids
    return np.asarray(pe.encode(model, params, jnp.asarray(x), opt))[0]
  b = list(long_.encode())
  want = 64 * one(b[:64]) + 56 * one(b[64:])
  np.testing.assert_allclose(e[0], one(list(short.encode())), atol=1e-5)
  np.testing.assert_allclose(e[1], want / np.linalg.norm(want), atol=1e-5)
  jl.write_text(json.dumps({'text': short}) + '\n' + json.dumps({'text': ''}))
  with pytest.raises(UserError, match='line 2 has an empty'):
    sample_main(['--workdir', str(tmp_path / 'emb'), '--embed', str(jl), '--out', str(out)])
  c.data.batch_size = 10_000
  with pytest.raises(ValueError, match='lower'):
    train(c, str(tmp_path / 'emb_big'))


def test_pairs_cut_the_chunk_that_holds_the_query():
  from pipelines import retrieval as pr
  text = 'x = 0\n' * 200 + 'def target(a):\n    return a\n' + 'y = 1\n' * 200
  s = pr.code_retrieval([('t.py', text)], passage_len=16, seed=0)
  p = pr.pairs(s, query_len=16, doc_len=64)
  for q, doc in zip(p['query'], p['doc']):
    qb, db = bytes(q[q != pr.PAD].astype(np.uint8)), bytes(doc[doc != pr.PAD].astype(np.uint8))
    assert len(db) == 64 and qb in db  # the query's chunk, not the file's head
