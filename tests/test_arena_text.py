"""The arena's text experiments (`speed`, `infill`) and their shared sampler machinery
(`arena/text_samplers.py`): window selection, scoring against closed forms and oracles, the
settings list, the findings logic, and the fillers on random-init tiny models."""
import math
import types

import numpy as np
import pytest

EOS, NL, SP = 256, ord('\n'), ord(' ')


def _corpus(n_docs=40, seed=0):
  """Synthetic byte-level code: documents of indented lines, each followed by EOS. [T] uint16."""
  rng = np.random.default_rng(seed)
  words = [b'def', b'return', b'x', b'self', b'(a, b)', b'=', b'1', b'if', b':']
  docs = []
  for _ in range(n_docs):
    lines = [b' ' * int(rng.choice([0, 4, 8])) + b' '.join(rng.choice(words, rng.integers(1, 6)))
             for _ in range(rng.integers(3, 12))]
    docs.append(np.frombuffer(b'\n'.join(lines) + b'\n', np.uint8).astype(np.uint16))
    docs.append(np.asarray([EOS], np.uint16))
  return np.concatenate(docs)


def _position_judge(seq):
  """A fake judge: the nats of token i + 1 are (i + 1) ln 2, so its bits are its position."""
  B, L = np.asarray(seq).shape
  return np.broadcast_to(np.arange(1, L) * math.log(2.0), (B, L - 1))


def test_infill_windows_start_at_lines_have_no_eos_and_are_deterministic():
  from arena.infill import windows
  tokens = _corpus()
  S, P, K = 6, 5, 30
  w = windows(tokens, span=S, context=P, count=K, seed=0)
  assert w.shape == (K, 2 * P + S) and w.dtype == np.int32
  assert (w[:, P - 1] == NL).all()  # the span starts right after a newline
  assert not (w == EOS).any()
  assert all(set(row[P:P + S].tolist()) - {9, NL, 13, SP} for row in w)  # some text in each span
  # each window is a slice of the corpus
  text = tokens.astype(np.int64).tobytes()
  assert all(row.astype(np.int64).tobytes() in text for row in w)
  np.testing.assert_array_equal(w, windows(tokens, span=S, context=P, count=K, seed=0))
  assert not np.array_equal(w, windows(tokens, span=S, context=P, count=K, seed=1))
  with pytest.raises(ValueError, match='lower count'):
    windows(tokens, span=S, context=P, count=10 ** 6, seed=0)


def test_infill_score_oracle_and_indexing():
  from arena.infill import score, windows
  tokens = _corpus()
  S, P = 6, 5
  w = windows(tokens, span=S, context=P, count=12, seed=3)
  truth = w[:, P:P + S]
  oracle = score(w, truth, _position_judge, span=S, context=P)
  assert oracle['exact_match'] == 1.0 and oracle['byte_accuracy'] == 1.0
  assert oracle['text_accuracy'] == 1.0 and oracle['exact_match_se'] == 0.0
  # the fill is tokens P..P+S-1 of the window, the suffix P+S..2P+S-1 (judge bits = position)
  assert oracle['span_bpb'] == pytest.approx(P + (S - 1) / 2)
  assert oracle['suffix_bpb'] == pytest.approx(P + S + (P - 1) / 2)
  wrong = truth.copy()
  wrong[:, -1] = 300  # one wrong byte per span
  s = score(w, wrong, _position_judge, span=S, context=P)
  assert s['exact_match'] == 0.0 and s['byte_accuracy'] == pytest.approx((S - 1) / S)
  spaces = np.full_like(truth, SP)  # all blanks: right on indentation, wrong on every text byte
  s = score(w, spaces, _position_judge, span=S, context=P)
  assert s['text_accuracy'] == 0.0 and s['byte_accuracy'] == pytest.approx((truth == SP).mean())
  with pytest.raises(ValueError, match='shape'):
    score(w, truth[:, :-1], _position_judge, span=S, context=P)


def test_quality_closed_form_entropy_parse_and_judge_indexing():
  from arena.text_samplers import quality
  prompt = np.frombuffer(b'x = ', np.uint8).astype(np.int32)
  a, b = ord('1'), ord('2')
  new = np.asarray([[a, a, a, a], [a, b, a, b]])  # 6 x '1', 2 x '2'
  q = quality(new, prompt, _position_judge)
  assert q['entropy_bits'] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
  assert q['parse_score'] == 1.0  # 'x = 1111' and 'x = 1212' parse
  P, N = len(prompt), new.shape[1]
  assert q['bits_per_byte'] == pytest.approx(P + (N - 1) / 2)  # new tokens sit at P..P+N-1
  uniform = np.arange(64).reshape(4, 16) % 8 + a  # 8 symbols, equally often
  assert quality(uniform, prompt, _position_judge)['entropy_bits'] == pytest.approx(3.0)
  broken = np.asarray([[ord(')'), ord('(')] * 2])
  assert quality(broken, prompt, _position_judge)['parse_score'] == 0.0


def test_held_out_continuations_follow_the_prompt():
  from arena.text_samplers import held_out_continuations
  tokens = _corpus(80)
  prompt = np.frombuffer(b'def', np.uint8).astype(np.int32)
  real = held_out_continuations(tokens, prompt, length=5, count=20, seed=0)
  assert real.shape == (20, 5) and not (real == EOS).any()
  text = tokens.astype(np.int64).tobytes()
  for row in real:
    assert np.concatenate([prompt, row]).astype(np.int64).tobytes() in text
  np.testing.assert_array_equal(real, held_out_continuations(tokens, prompt, length=5, count=20,
                                                             seed=0))
  with pytest.raises(ValueError, match='lower count'):
    held_out_continuations(tokens, prompt, length=5, count=10 ** 5, seed=0)


def test_settings_clip_dedupe_and_record_exact_sampling():
  from arena.text_samplers import label, settings
  logs = []
  rows = settings(128, [16, 32, 128], 4, log=logs.append)
  bd3 = [r['settings']['steps_per_block'] for r in rows if r['sampler'] == 'block_diffusion']
  assert bd3 == [1, 4]  # 32 blocks: S = 16 and 32 both clip to 1 step per block
  assert any('skipped' in m for m in logs)
  assert [r['steps'] for r in rows if r['sampler'] == 'ancestral'] == [16, 32, 128]
  assert sum(r['sampler'] == 'confidence_threshold' for r in rows) == 1
  exact = settings(16, [4], 4, samplers=('ar', 'ancestral', 'block_diffusion'),
                   final_argmax=False)
  assert [r['sampler'] for r in exact] == ['ar', 'ancestral', 'block_diffusion']
  assert all(r['settings'].get('final_argmax') is False for r in exact[1:])
  assert label(exact[2]) == 'block_diffusion B=4 1/block'
  extra = settings(16, [4], 4, samplers=('ar_int8', 'confidence_factor', 'entropy_bounded',
                                          'semi_ar_dual_cache', 'speculative'))
  assert [label(r) for r in extra] == [
      'ar int8 (weights + KV cache)', 'speculative ar_draft gamma=2', 'speculative ar_draft gamma=4',
      'speculative bd3_draft gamma=2', 'speculative bd3_draft gamma=4', 'confidence_factor f=1.0',
      'entropy_bounded gamma=0.1', 'semi_ar_dual_cache S=4']
  assert extra[-1]['settings'] == {'block_len': 16, 'steps_per_block': 4}
  with pytest.raises(ValueError, match='multiple of the BD3 block'):
    settings(18, [4], 4)
  with pytest.raises(ValueError, match='unknown samplers'):
    settings(16, [4], 4, samplers=('ar', 'gibbs'))


def _row(sampler, t1, t64, bpb, entropy=4.5, degenerate=False):
  return {'sampler': sampler, 'label': sampler, 'tokens_per_s_b1': t1, 'tokens_per_s_b64': t64,
          'bits_per_byte': bpb, 'entropy_bits': entropy, 'degenerate': degenerate}


def test_speed_findings_state_the_verdict_from_the_numbers():
  from arena.speed import findings
  ref = {'bits_per_byte': 1.5, 'entropy_bits': 4.6}
  ar = _row('ar', 100, 1000, 2.0)
  slow = [ar, _row('ancestral', 300, 500, 4.0), _row('confidence_topk', 50, 800, 0.4, 0.1, True)]
  text = findings(slow, ref, (1, 64))
  assert 'contradicts' in text and 'at batch 1 (against ar), none; at batch 64 (against ar), none' in text
  assert 'Degenerate rows (confidence_topk)' in text  # better bpb, but only by repeating itself
  fast = [ar, _row('block_diffusion', 400, 3000, 1.9)]
  text = findings(fast, ref, (1, 64))
  assert 'contradicts' not in text and '3.00x' in text and 'short of 10x' in text
  # the race is against AR at its fastest: speculative at batch 1 beats the BD3 row there
  spec = _row('speculative', 500, 900, 2.0)
  text = findings([ar, spec, _row('block_diffusion', 400, 3000, 1.9)], ref, (1, 64))
  assert 'AR side' in text and 'at batch 1, speculative (5.00x)' in text
  assert 'at batch 1 (against speculative), none' in text
  assert 'at batch 64 (against ar), block_diffusion (3.00x)' in text
  assert 'contradicts' in text and 'at batch 1 the result' in text
  cached = [ar, dict(_row('semi_autoregressive', 10, 100, 3.0), steps=16),
            dict(_row('semi_ar_dual_cache', 20, 250, 3.1), steps=16)]
  assert 'dual KV cache runs semi-AR decoding at 2.50x (S=16, 3.00 -> 3.10' in findings(
      cached, ref, (1, 64))


def test_the_duo_findings_follow_the_numbers():
  """The distilled-vs-base sentence of `speed` and the curriculum sentence of `blocks` are
  computed from the rows: which S distillation helps at (a degenerate row never counts), and
  whether the curriculum's move is beyond 2 s.e."""
  from arena.blocks import curriculum_finding
  from arena.speed import distilled_finding

  def row(sampler, S, bpb, degenerate=False):
    return dict(sampler=sampler, steps=S, bits_per_byte=bpb, entropy_bits=4.0,
                degenerate=degenerate)
  base = [row('duo_ancestral', 2, 5.0), row('duo_ancestral', 4, 4.0), row('duo_ancestral', 16, 3.0)]
  text = distilled_finding(base + [row('duo_distilled', 2, 4.5), row('duo_distilled', 4, 3.5)],
                           (2, 4))
  assert 'S=2 5.00 -> 4.50' in text and 'the base at S=16: 3.00' in text
  assert 'helps at every S raced' in text
  text = distilled_finding(base + [row('duo_distilled', 2, 4.5, True), row('duo_distilled', 4, 3.5)],
                           (2, 4))
  assert 'helps at S=4 only' in text
  assert 'does not help' in distilled_finding(base + [row('duo_distilled', 2, 6.0)], (2,))
  assert 'does not help' in distilled_finding(base + [row('duo_distilled', 2, 4.95)], (2,))
  assert 'not distilled' in distilled_finding(base, (2,))
  plain, rs = {'bpb': 3.0, 'se': 0.01}, {'bpb': 3.2, 'se': 0.01}
  text = curriculum_finding(plain, {'bpb': 2.9, 'se': 0.01}, plain)
  assert 'by -0.100 bits/byte (s.e. 0.014, a gain, the paper' in text
  assert 'against the control -0.100 (s.e. 0.014, a gain)' in text
  text = curriculum_finding(plain, {'bpb': 3.1, 'se': 0.01}, rs)  # the restart costs, not it
  assert 'by +0.100 bits/byte (s.e. 0.014, a loss)' in text
  assert 'moves it +0.200 (s.e. 0.014, a loss)' in text
  assert 'against the control -0.100 (s.e. 0.014, a gain)' in text
  assert 'within the noise' in curriculum_finding(plain, {'bpb': 3.02, 'se': 0.01}, plain)


def test_infill_findings_need_an_edge_beyond_the_noise():
  from arena.infill import FILLERS, findings

  def row(acc, suffix, se=0.01):
    return dict(exact_match=0.1, byte_accuracy=acc, text_accuracy=acc, suffix_bpb=suffix,
                exact_match_se=se, byte_accuracy_se=se, text_accuracy_se=se, suffix_bpb_se=se)

  runs = {k: types.SimpleNamespace(eval={'eval_bpb': v}) for k, v in (('mdlm', 3.1), ('ar', 1.8))}
  rows = {label: row(0.3, 2.0) for label, *_ in FILLERS}
  rows['ground truth'] = row(1.0, 1.5)
  assert 'does not show' in findings(rows, runs, 100)
  assert 'and its model is weaker' in findings(rows, runs, 100)
  rows['MDLM, prefix + suffix, top-k greedy'] = row(0.6, 1.7)  # more right, better connection
  text = findings(rows, runs, 100)
  assert 'edge shows at this scale' in text and '+30 points' in text
  rows['MDLM, prefix + suffix, top-k greedy'] = row(0.6, 2.01)  # suffix cost within the noise
  assert 'only in part' in findings(rows, runs, 100)


def _random_run(kind):
  """A random-init tiny text model dressed as an arena Run (config, model, params)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import paradigms
  from arena.runs import text_config
  from arena.budgets import TEXT
  from train.config import model_config
  config = text_config(kind, TEXT['tiny'])
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(model_config(config))
  batch = {'tokens': jnp.zeros((1, 9), jnp.int32)}
  params = jax.jit(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'])(
      jax.random.key(0))
  return types.SimpleNamespace(config=config, model=model, params=params)


def test_fillers_write_whole_spans():
  import jax
  from arena.infill import ar_fill, mdlm_fill
  K, P, S = 3, 5, 4
  rng = np.random.default_rng(0)
  prefix, suffix = (rng.integers(0, 256, (K, P)).astype(np.int32) for _ in range(2))
  ar, mdlm = _random_run('ar'), _random_run('mdlm')
  fill, nfe = ar_fill(ar, prefix, jax.random.key(0), span=S, greedy=True)
  assert fill.shape == (K, S) and nfe == S
  for sampler, side in (('ancestral', suffix), ('topk_greedy', None)):
    fill, nfe = mdlm_fill(mdlm, prefix, side, jax.random.key(1), span=S, sampler=sampler)
    assert fill.shape == (K, S) and 1 <= nfe <= S
    assert not (fill == mdlm.config.loss.mask_id).any()
  with pytest.raises(ValueError, match='unknown MDLM infill sampler'):
    mdlm_fill(mdlm, prefix, suffix, jax.random.key(1), span=S, sampler='gibbs')


def test_the_tool_rows_decode_every_position_on_tiny_models():
  """make_run for the rows added with the inference tools (int8 AR, factor, EB, dual cache,
  speculative) on random-init tiny models: every new position written, NFE in its bounds."""
  import jax
  from arena.text_samplers import label, make_run, settings
  ar, mdlm = _random_run('ar'), _random_run('mdlm')
  models = {k: (r.config, r.model, r.params) for k, r in (('ar', ar), ('mdlm', mdlm),
                                                            ('ar_draft', ar))}
  prompt, B, N = np.asarray([100, 101, 102, 32], np.int32), 2, 8
  rows = settings(N, [4], 4, samplers=('ar_int8', 'confidence_factor', 'entropy_bounded',
                                       'semi_ar_dual_cache', 'speculative'))
  for row in rows:
    if row['settings'].get('drafter') == 'bd3_draft':
      continue
    out, start = make_run(row, models, prompt, B, N)(jax.random.key(0))
    new = np.asarray(out.tokens)[:, start:start + N]
    assert new.shape == (B, N), label(row)
    assert not (new == mdlm.config.loss.mask_id).any(), label(row)
    assert 1 <= int(out.nfe) <= N + len(prompt), (label(row), int(out.nfe))


def test_the_uniform_state_rows_race_mdlm_at_few_steps_and_decode_every_position():
  """few_steps adds S for MDLM's ancestral, SEDD and DUO rows only (the distilled DUO run only
  there); on random-init tiny models the SEDD and DUO rows write every new position, from
  uniform noise, in S + 1 calls."""
  import jax
  from arena.text_samplers import make_run, settings
  rows = settings(8, [4], 4, samplers=('ar', 'ancestral', 'confidence_topk', 'sedd_tweedie',
                                       'duo_ancestral', 'duo_distilled'), few_steps=(2,))
  few = [(r['sampler'], r['model'], r['steps']) for r in rows if r['steps'] == 2]
  assert few == [('ancestral', 'mdlm', 2), ('sedd_tweedie', 'sedd', 2),
                 ('duo_ancestral', 'duo', 2), ('duo_distilled', 'duo_dcd', 2)]
  assert [r for r in rows if r['sampler'] == 'duo_distilled' and r['steps'] != 2] == []
  duo = _random_run('duo')
  models = {k: (r.config, r.model, r.params) for k, r in
            (('sedd', _random_run('sedd')), ('duo', duo), ('duo_dcd', duo))}
  prompt, B, N = np.asarray([100, 101, 102, 32], np.int32), 2, 8
  for row in [r for r in rows if r['model'] in models]:
    out, start = make_run(row, models, prompt, B, N)(jax.random.key(0))
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens[:, :start], np.broadcast_to(prompt, (B, start)))
    assert tokens.shape == (B, start + N) and (tokens[:, start:] < 257).all()
    assert int(out.nfe) == row['steps'] + 1


def test_the_embeddings_finding_pairs_queries_and_names_the_control():
  """The long-bucket sentence of `embeddings` comes from per-query ranks: the relative gain of
  the best diffusion backbone over AR, the paired difference with its s.e., and whether the
  bidirectional control beats the diffusion backbones beyond 2 s.e."""
  import numpy as np
  from arena.embeddings import BACKBONES, findings, paired
  from evaluators.retrieval import query_ndcg
  assert np.allclose(query_ndcg([0, 1, 9, 10]), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
  lengths = np.array([100, 9000, 9000, 9000, 9000])  # one short query, four 8k+ ones
  ranks = {'ar': [0, 20, 20, 1, 20], 'ar_bi': [0, 0, 0, 0, 0], 'mdlm': [0, 0, 0, 0, 1],
           'sedd': [5, 20, 20, 20, 20], 'duo': [5, 20, 20, 20, 20]}
  from evaluators.retrieval import bucket_names, by_bucket
  results = {k: {'code': {'ranks': r, 'by_bucket': by_bucket(np.array(r), lengths)}}
             for k, r in ranks.items()}
  assert set(results) == set(BACKBONES)
  sel = np.array([False, True, True, True, True])
  m, se = paired(results, 'mdlm', 'ar', sel)
  h = 1 / np.log2(3)  # nDCG of rank 1 (the second place)
  d = np.array([1.0, 1.0, 1.0 - h, h])
  assert np.isclose(m, d.mean()) and np.isclose(se, d.std(ddof=1) / 2)
  text = findings(results, bucket_names(), lengths)
  ar, mdlm = h / 4, (3 + h) / 4
  assert f'(4 queries) the best diffusion backbone (MDLM) scores nDCG@10 {mdlm:.3f}' in text
  assert f"against the AR model's {ar:.3f} ({(mdlm / ar - 1) * 100:+.0f}%" in text
  assert 'at least the seed' in text
  assert 'the control beats every diffusion backbone' not in text  # +0.09 +- 0.09: noise
  ranks['mdlm'] = [0, 20, 20, 20, 20]  # now the control wins on every long query
  results['mdlm']['code'] = {'ranks': ranks['mdlm'], 'by_bucket': by_bucket(np.array(ranks['mdlm']), lengths)}
  text = findings(results, bucket_names(), lengths)
  assert 'short of the seed' in text and 'the control beats every diffusion backbone' in text


def test_the_data_finding_on_the_uniform_chains_follows_their_curves():
  """`data` asks whether the uniform-state chains resist repetition as MDLM does: a row within
  0.01 of its best at the last epoch has not overfit."""
  from arena.data import UNIFORM, contestants, uniform_finding
  labels = [label for label, _, _ in contestants('tiny')]
  assert sum(label.startswith(UNIFORM) for label in labels) == 2 and labels[:2] == ['AR', 'MDLM']
  mdlm = {'best_bpb': 4.0, 'rise': 0.08}
  row = lambda name, best, rise, epoch=256: dict(model=name, best_bpb=best, rise=rise,
                                                 best_epoch=epoch, final_bpb=best + rise)
  text = uniform_finding([row('SEDD (uniform)', 4.2, 0.0), row('UDLM / DUO', 4.4, 0.05, 200)],
                         mdlm, 256)
  assert 'SEDD (uniform) 4.200 (+0.200 vs MDLM' in text and 'not only the absorbing' in text
  assert 'best at epoch 200, then +0.050' in text and '(MDLM: +0.080 after its best)' in text
  text = uniform_finding([row('SEDD (uniform)', 4.2, 0.0), row('UDLM / DUO', 4.4, 0.3, 40)], mdlm, 256)
  assert 'Not every uniform chain' in text
  text = uniform_finding([row('SEDD (uniform)', 4.2, 0.2, 30), row('UDLM / DUO', 4.4, 0.3, 40)], mdlm, 256)
  assert 'belongs to the absorbing mask' in text
