"""Tests for evaluators/glyph_judge.py and glyph_scores.py: Fréchet distance oracles, accuracy
counting, the cache."""
import jax
import ml_collections
import numpy as np
import pytest

from evaluators import glyph_judge, glyph_scores
from pipelines import glyphs, images as image_data

ALPHABET = '0AB'


def exact_gaussian_samples(rng, mu, var, n):
  """n samples whose sample mean is exactly mu [F] and sample covariance exactly diag(var)."""
  z = rng.standard_normal((n, len(mu)))
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # cov(z) == I
  return mu + z * np.sqrt(var)


def test_frechet_distance_matches_the_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  a = exact_gaussian_samples(rng, mu1, var1, 500)
  b = exact_gaussian_samples(rng, mu2, var2, 300)
  closed = ((mu1 - mu2)**2).sum() + ((np.sqrt(var1) - np.sqrt(var2))**2).sum()
  assert glyph_scores.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9, abs=1e-9)


def test_frechet_distance_general_covariance_symmetry_and_zero():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + 1.0
  b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
  # Another route: tr((S_a S_b)^{1/2}) = sum sqrt(eig(S_a S_b)) (real, >= 0, non-symmetric).
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  eig = np.linalg.eigvals(s_a @ s_b)
  expected = (((a.mean(0) - b.mean(0))**2).sum() + np.trace(s_a) + np.trace(s_b)
              - 2 * np.sqrt(eig.real.clip(0)).sum())
  fd = glyph_scores.frechet_distance(a, b)
  assert fd == pytest.approx(expected, rel=1e-8)
  assert fd == pytest.approx(glyph_scores.frechet_distance(b, a), rel=1e-9)
  assert abs(glyph_scores.frechet_distance(a, a)) < 1e-6
  with pytest.raises(ValueError, match='same F'):
    glyph_scores.frechet_distance(a, b[:, :4])


def random_judge(image_size=16, max_chars=2):
  module = glyph_judge.GlyphNet(num_classes=len(ALPHABET) + 1, max_chars=max_chars)
  params = module.init(jax.random.key(0), np.zeros([1, image_size, image_size, 3], np.float32))
  return glyph_judge.Judge(module, params, image_size, ALPHABET, max_chars)


def test_features_and_predict_shapes_and_batching():
  judge = random_judge()
  images = np.stack([glyphs.glyph_example(i, image_size=16, alphabet=ALPHABET,
                                              max_chars=2)['image'] for i in range(300)])
  feats, pred = judge.features(images), judge.predict(images)
  assert feats.shape == (300, 128) and feats.dtype == np.float64
  assert pred.shape == (300, 2) and pred.dtype == np.int32 and pred.max() <= len(ALPHABET)
  np.testing.assert_allclose(judge.features(images[:7]), feats[:7], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'RGB images \[N, 16, 16, 3\]'):
    judge.features(images[..., :1])


def test_accuracy_counts_exact_strings_and_characters(monkeypatch):
  judge = random_judge()
  labels = np.array([[1, 2], [3, 0], [2, 2], [1, 0], [0, 0]], np.int32)
  pred = np.array([[1, 2], [3, 1], [2, 1], [1, 0], [3, 3]], np.int32)
  monkeypatch.setattr(glyph_judge.Judge, 'predict', lambda self, images: pred)
  images = np.zeros([5, 16, 16, 3], np.float32)
  # Row 4 is unconditional (all null): skipped. Exact: rows 0, 3 of 4. Chars: 5 of 6 slots.
  assert judge.accuracy(images, labels) == pytest.approx(2 / 4)
  assert judge.char_accuracy(images, labels) == pytest.approx(5 / 6)
  assert glyph_scores.match_rates(labels, labels) == (1.0, 1.0)


def test_match_rates_by_length_splits_by_non_blank_slots():
  labels = np.array([[1, 0, 0], [2, 0, 0], [3, 0, 0], [1, 0, 0],  # length 1
                     [1, 2, 0], [3, 1, 0],  # length 2
                     [1, 2, 3], [3, 3, 3], [2, 1, 1],  # length 3
                     [0, 0, 0]], np.int32)  # unconditional: skipped
  pred = np.array([[1, 0, 0], [2, 0, 0], [1, 0, 0], [1, 2, 0],
                   [1, 2, 0], [3, 2, 0],
                   [1, 2, 3], [3, 1, 3], [1, 2, 3],
                   [1, 1, 1]], np.int32)
  by = glyph_scores.match_rates_by_length(pred, labels)
  assert sorted(by) == [1, 2, 3]
  rates = lambda n: (by[n]['count'], by[n]['accuracy'], by[n]['char_accuracy'])
  # Length 1: rows 0, 1 exact (row 3 has an extra character); slots 3 of 4.
  assert rates(1) == (4, pytest.approx(2 / 4), pytest.approx(3 / 4))
  # Length 2: row 4 exact; slots 3 of 4.
  assert rates(2) == (2, pytest.approx(1 / 2), pytest.approx(3 / 4))
  # Length 3: row 6 exact; slots 3 + 2 + 0 of 9.
  assert rates(3) == (3, pytest.approx(1 / 3), pytest.approx(5 / 9))
  # The split agrees with the pooled rates: weighted by rows (exact) and by slots (chars).
  exact, per_char = glyph_scores.match_rates(pred, labels)
  assert exact == pytest.approx(sum(by[n]['count'] * by[n]['accuracy'] for n in by) / 9)
  chars = sum(n * by[n]['count'] * by[n]['char_accuracy'] for n in by)
  assert per_char == pytest.approx(chars / 17)
  empty = glyph_scores.match_rates_by_length(pred[:4, :2], labels[:4, :2])
  assert empty[2]['count'] == 0 and np.isnan(empty[2]['accuracy'])
  with pytest.raises(ValueError, match='per-slot label row'):
    glyph_scores.match_rates_by_length(pred[:, :2], labels)


def test_glyph_metrics_keys_and_identical_sets():
  judge = random_judge()
  cfg = ml_collections.ConfigDict(dict(source='glyphs', image_size=16, channels=3,
                                       alphabet=ALPHABET, max_chars=2, holdout_fraction=0.05))
  (batch,) = image_data.eval_batches(cfg, batch_size=32, num_batches=1)
  metrics = glyph_judge.glyph_metrics(judge, batch['image'], batch['label'], batch['image'])
  assert set(metrics) == {'fd', 'accuracy', 'char_accuracy', 'by_length'}
  assert abs(metrics['fd']) < 1e-6 and 0 <= metrics['accuracy'] <= 1
  pred = judge.predict(batch['image'])  # the one pass's readings split by length
  assert metrics['by_length'] == glyph_scores.match_rates_by_length(pred, batch['label'])
  assert np.isnan(glyph_judge.glyph_metrics(judge, batch['image'], None,
                                            batch['image'])['accuracy'])


def test_load_judge_trains_once_then_loads_the_cache(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(glyph_judge, '_EVAL_SIZE', 32)
  kwargs = dict(image_size=16, alphabet=ALPHABET, max_chars=2, cache_dir=str(tmp_path),
                steps=2, batch_size=8)
  first = glyph_judge.load_judge(**kwargs)
  assert 'training the 16px glyph judge' in capsys.readouterr().err
  (path,) = (tmp_path / 'glyph_judge').glob('*.msgpack')
  assert first.info['steps'] == 2 and 0 <= first.info['eval_accuracy'] <= 1

  def fail(**_):
    raise AssertionError('cache miss: the judge was retrained')

  monkeypatch.setattr(glyph_judge, 'train_judge', fail)
  second = glyph_judge.load_judge(**kwargs)
  assert 'training' not in capsys.readouterr().err
  jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
  assert second.info == first.info
  images = np.zeros([3, 16, 16, 3], np.float32)
  np.testing.assert_array_equal(first.predict(images), second.predict(images))
  with pytest.raises(AssertionError, match='cache miss'):  # another key -> another file
    glyph_judge.load_judge(**dict(kwargs, max_chars=3))
  with pytest.raises(AssertionError, match='cache miss'):  # bold letters: a judge of their own
    glyph_judge.load_judge(**dict(kwargs, stroke=0.06))
  glyph_judge.load_judge(**dict(kwargs, stroke=0.0))  # regular weight: the same (cached) key


def test_the_renderer_reports_where_each_character_is_and_the_column_targets_read_back():
  """render_glyph(spans=True) draws the same pixels and says where each character's ink is:
  a string's ink lies inside the union of its spans, and each span holds ink (on the coverage
  map, for strings of 1 to 8 characters). The column
  targets built from the spans decode (merge repeats, drop blanks) to the label, equal
  neighbours included; a character narrower than a column still gets one column."""
  kw = dict(image_width=64, prompts=True)
  for i in range(24):
    image, label = glyphs.render_glyph(i, 32, glyphs.DEFAULT_ALPHABET, 8, 'train', **kw)
    same, label2, spans = glyphs.render_glyph(i, 32, glyphs.DEFAULT_ALPHABET, 8, 'train',
                                              spans=True, **kw)
    np.testing.assert_array_equal(image, same)
    np.testing.assert_array_equal(label, label2)
    n = int((label > 0).sum())
    assert (spans[n:] == 0).all() and (spans[:n, 1] > spans[:n, 0]).all()
  for text, em, u in (('A7', 1.0, 0.5), ('B2MW', 0.7, 0.1), ('0123XYZ8', 0.5, 0.9), ('1', 0.4, 1)):
    alpha, extent = glyphs._text_alpha(text, 32, em, u, 0.5, width=64, spans=True)
    ink = alpha[..., 0].max(0) > 0.5  # [W] columns with ink
    inside = np.zeros(64, bool)
    for left, right in extent:
      inside[int(np.floor(left)):int(np.ceil(right)) + 1] = True
      assert ink[int(np.floor(left)):int(np.ceil(right)) + 1].any(), text
    assert not (ink & ~inside).any(), text
    np.testing.assert_array_equal(alpha, glyphs._text_alpha(text, 32, em, u, 0.5, width=64))

  def read(frames):
    out, prev = [], 0
    for t in frames:
      if t and t != prev:
        out.append(int(t))
      prev = t
    return out
  labels = np.array([[5, 5, 7, 0], [3, 0, 0, 0]], np.int32)
  spans = np.array([[[0, 4], [4, 8], [8, 12], [0, 0]],  # two equal neighbours, 2-px characters
                    [[9.2, 9.6], [0, 0], [0, 0], [0, 0]]], np.float32)  # narrower than a column
  frames = glyph_judge.frame_targets(labels, spans, width=16, columns=8)  # columns 2 px wide
  assert read(frames[0]) == [5, 5, 7] and read(frames[1]) == [3]
  assert frames[1].tolist() == [0, 0, 0, 0, 3, 0, 0, 0]
  x, y, f = glyph_judge._glyph_batch(range(64), 32, glyphs.DEFAULT_ALPHABET, 8, 'train',
                                     image_width=64, prompts=True, columns=32)
  assert [read(r) for r in f] == [[int(v) for v in row if v] for row in y]


def test_the_column_loss_is_the_mean_cross_entropy():
  module = glyph_judge.TextLineNet(num_classes=4, max_chars=2)
  logits = jax.random.normal(jax.random.key(0), (2, 3, 4))
  frames = np.array([[0, 1, 2], [3, 3, 0]], np.int32)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  want = -np.mean([logp[b, t, frames[b, t]] for b in range(2) for t in range(3)])
  np.testing.assert_allclose(float(module.frame_loss(logits, frames)), want, rtol=1e-6)
