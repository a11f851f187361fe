"""Tests for the prompt-conditioned glyph set (issue 25): the hash split of strings, uniform
lengths, 32x64 rendering, the square set unchanged, the text-line judge's decoding, metrics by
length and seen/held-out, the judge cache keys and the errors."""
import hashlib
import itertools

import jax
import ml_collections
import numpy as np
import pytest

from evaluators import glyph_judge, glyph_scores
from pipelines import glyphs, images as image_data

PROMPTS = dict(image_size=32, image_width=64, max_chars=8, prompts=True)


def strings(labels, alphabet=glyphs.DEFAULT_ALPHABET):
  return [glyphs.decode_label(row, alphabet) for row in labels]


def test_square_glyphs_are_unchanged():
  # blake2b-64 of (image bytes + label bytes), computed with the code before issue 25.
  pinned = [(0, {}, '3b1fdebe86501d52'), (7, dict(split='eval'), '06df16e9ba03e7e6'),
            (123, dict(image_size=16, max_chars=2, alphabet='0AB'), 'b9357600827b8ccf'),
            (5, dict(image_size=24, max_chars=4, stroke=0.06, jitter=0.5), '2137a8fc93a069c4'),
            (10**30, {}, '2e991c2bfe48617d'), (0, dict(image_width=32), '3b1fdebe86501d52')]
  for index, kwargs, digest in pinned:
    ex = glyphs.glyph_example(index, **kwargs)
    got = hashlib.blake2b(ex['image'].tobytes() + ex['label'].tobytes(), digest_size=8)
    assert got.hexdigest() == digest, (index, kwargs)


def test_string_split_is_a_stable_hash_of_the_string():
  assert glyphs.string_hash('HELLO') == pytest.approx(0.45246649054594534, abs=0)
  assert glyphs.is_held_out_string('S') and not glyphs.is_held_out_string('A')
  assert glyphs.is_held_out_string('42') and glyphs.is_held_out_string('B9CG9K7W')
  pairs = [''.join(t) for t in itertools.product(glyphs.DEFAULT_ALPHABET, repeat=2)]  # 961
  held = {s for s in pairs if glyphs.is_held_out_string(s, 0.2)}
  seen = {s for s in pairs if not glyphs.is_held_out_string(s, 0.2)}
  assert held.isdisjoint(seen) and len(held | seen) == len(pairs)
  assert abs(len(held) / len(pairs) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / len(pairs))  # binomial
  # Nested: a larger fraction holds out a superset (a string's side depends on h(x) only).
  assert held <= {s for s in pairs if glyphs.is_held_out_string(s, 0.3)}


def test_train_shows_only_seen_strings_and_eval_only_held_out():
  label = lambda i, split: glyphs.render_glyph(i, 16, glyphs.DEFAULT_ALPHABET, 8, split,
                                               image_width=32, prompts=True)[1]
  for split, held in (('train', False), ('eval', True), ('eval_seen', False)):
    texts = strings([label(i, split) for i in range(300)])
    assert all(glyphs.is_held_out_string(t) == held for t in texts), split
    assert len(set(texts)) > 200  # many distinct strings, not a few repeated


def test_lengths_are_uniform_chi_square():
  n, max_chars = 800, 8
  labels = [glyphs.render_glyph(i, 16, glyphs.DEFAULT_ALPHABET, max_chars, 'train',
                                image_width=32, prompts=True)[1] for i in range(n)]
  counts = np.bincount([(row > 0).sum() for row in labels], minlength=max_chars + 1)[1:]
  expected = n / max_chars
  chi2 = ((counts - expected)**2 / expected).sum()
  assert chi2 < 24.32, counts  # chi-square, 7 dof, p = 0.001
  # Tiny alphabet: lengths whose side is empty are left out (all 3 one-symbol strings of
  # '0AB' are seen), the others stay uniform.
  assert glyphs.prompt_lengths('0AB', 2, 0.2, True) == (2,)
  assert glyphs.prompt_lengths('0AB', 2, 0.2, False) == (1, 2)


def test_prompt_rendering_is_deterministic_and_wide():
  a = glyphs.glyph_example(11, **PROMPTS)
  b = glyphs.glyph_example(11, **PROMPTS)
  assert a['image'].shape == (32, 64, 3) and a['label'].shape == (8,)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  other = glyphs.glyph_example(11, **PROMPTS, split='eval_seen')
  assert not np.array_equal(a['image'], other['image'])
  # Every 8-character string fits inside the 1-pixel margin of a 32x64 image.
  alpha = glyphs._text_alpha('WMWMWMWM', 32, glyphs._EM_RANGE[1], 1.0, 1.0, 0.0, 64)
  assert alpha.shape == (32, 64, 1) and alpha.sum() > 50
  assert alpha[0].max() == 0 and alpha[-1].max() == 0
  assert alpha[:, 0].max() == 0 and alpha[:, -1].max() == 0


def make_cfg(**overrides):
  cfg = dict(source='glyphs', image_size=16, image_width=32, channels=3,
             alphabet=glyphs.DEFAULT_ALPHABET, max_chars=8, prompts=True, heldout_strings=0.2,
             holdout_fraction=0.05)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def test_pipeline_batches_describe_and_seen_eval():
  cfg = make_cfg()
  assert image_data.describe(cfg) == ('glyphs: 16x32 RGB, prompts of 1-8 chars (0.2 of strings '
                                      'held out) from 31 symbols, unbounded')
  batch = next(iter(image_data.train_dataset(cfg, batch_size=4, seed=0)))
  assert batch['image'].shape == (4, 16, 32, 3) and batch['label'].shape == (4, 8)
  assert not any(glyphs.is_held_out_string(t) for t in strings(batch['label']))
  (held,) = image_data.eval_batches(cfg, batch_size=8, num_batches=1)
  (seen,) = image_data.eval_batches(cfg, batch_size=8, num_batches=1, split='eval_seen')
  assert all(glyphs.is_held_out_string(t) for t in strings(held['label']))
  assert not any(glyphs.is_held_out_string(t) for t in strings(seen['label']))
  square = image_data.describe(make_cfg(image_width=0, prompts=False, max_chars=3))
  assert square == 'glyphs: 16x16 RGB, 1-3 chars from 31 symbols, unbounded'


def test_clear_errors():
  with pytest.raises(ValueError, match='at most 8 characters'):
    image_data.describe(make_cfg(max_chars=9))
  with pytest.raises(ValueError, match=r'heldout_strings=1.5 must be in \[0.01, 0.99\]'):
    image_data.describe(make_cfg(heldout_strings=1.5))
  with pytest.raises(ValueError, match='repeated'):
    glyphs.glyph_example(0, alphabet='AAB', prompts=True)
  with pytest.raises(ValueError, match='No string of 1..1 symbols'):
    image_data.describe(make_cfg(alphabet='0AB', max_chars=1))
  with pytest.raises(ValueError, match='image_width=4'):
    image_data.describe(make_cfg(image_width=4))
  with pytest.raises(ValueError, match="needs data.source='glyphs'"):
    image_data.describe(make_cfg(source='npz'))
  with pytest.raises(ValueError, match="'eval_seen'"):
    image_data.eval_batches(make_cfg(prompts=False, max_chars=3), batch_size=2, num_batches=1,
                            split='eval_seen')
  with pytest.raises(ValueError, match="'eval_seen' needs data.prompts=True"):
    glyphs.glyph_example(0, split='eval_seen')


def naive_best_path(ids, max_chars):
  out = []
  for t, i in enumerate(ids):
    if i != 0 and (t == 0 or i != ids[t - 1]):
      out.append(int(i))
  return (out + [0] * max_chars)[:max_chars]


def test_textline_decode_matches_a_naive_best_path():
  net = glyph_judge.TextLineNet(num_classes=4, max_chars=3)
  ids = np.array([[0, 1, 1, 0, 1, 2, 2, 0], [3, 3, 3, 3, 0, 0, 0, 0],
                  [1, 2, 3, 1, 2, 3, 0, 0], [0] * 8])  # [4, T=8]
  logits = np.eye(4)[ids] * 5.0  # [4, 8, K=4]
  np.testing.assert_array_equal(net.decode(logits), [[1, 1, 2], [3, 0, 0], [1, 2, 3], [0, 0, 0]])
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 16, 4)) + np.array([2.0, 0, 0, 0])  # blanks common
  expected = [naive_best_path(row, 3) for row in logits.argmax(-1)]
  np.testing.assert_array_equal(net.decode(logits), expected)


def test_textline_judge_shapes_loss_and_errors():
  module = glyph_judge.judge_module(glyphs.DEFAULT_ALPHABET, 8, square=False, prompts=True)
  assert isinstance(module, glyph_judge.TextLineNet)
  assert isinstance(glyph_judge.judge_module('0AB', 3), glyph_judge.GlyphNet)
  params = module.init(jax.random.key(0), np.zeros([1, 32, 64, 3], np.float32))
  judge = glyph_judge.Judge(module, params, 32, glyphs.DEFAULT_ALPHABET, 8, image_width=64)
  x, y = glyph_judge._glyph_batch(range(3), split='eval', image_size=32,
                                  alphabet=glyphs.DEFAULT_ALPHABET, max_chars=8, image_width=64,
                                  prompts=True)
  feats, pred = judge._forward(x)  # what features() / predict() return, one pass
  assert feats.shape == (3, 128) and pred.shape == (3, 8) and pred.dtype == np.int32
  _, logits = module.apply(params, x)
  assert logits.shape == (3, 32, 32) and np.isfinite(float(module.loss(logits, y)))
  with pytest.raises(ValueError, match=r'\[N, 32, 64, 3\].*data.image_width=64'):
    judge.predict(np.zeros([2, 32, 32, 3], np.float32))


def test_match_rates_by_split_on_a_hand_made_case():
  alphabet = glyphs.DEFAULT_ALPHABET
  texts = ['S', '42', 'A', 'HEDGE', 'B9CG9K7W']  # held, held, seen, seen, held
  labels = np.stack([glyphs.encode_text(t, alphabet, 8) for t in texts])
  pred = labels.copy()
  pred[1, 1] = 1  # '42' -> '40': held-out, length 2, 1 of 2 characters right
  pred[3, 4] = 0  # 'HEDGE' -> 'HEDG': seen, length 5, 4 of 5 characters right
  by = glyph_scores.match_rates_by_split(pred, labels, alphabet)
  held, seen = by['held-out'], by['seen']
  assert (held['count'], seen['count']) == (3, 2)
  assert held['accuracy'] == pytest.approx(2 / 3)
  assert held['char_accuracy'] == pytest.approx(10 / 11)  # 1 + 1 + 8 of 1 + 2 + 8
  assert seen['accuracy'] == pytest.approx(1 / 2)
  assert seen['char_accuracy'] == pytest.approx(5 / 6)
  assert held['by_length'][2] == {'count': 1, 'accuracy': 0.0, 'char_accuracy': 0.5}
  assert held['by_length'][8]['accuracy'] == 1.0 and held['by_length'][5]['count'] == 0
  assert seen['by_length'][5] == {'count': 1, 'accuracy': 0.0, 'char_accuracy': 0.8}


def test_judge_cache_keys(tmp_path, monkeypatch):
  def fake_train(**kw):
    module = glyph_judge.judge_module(kw['alphabet'], kw['max_chars'],
                                      square=kw['image_width'] in (0, kw['image_size']),
                                      prompts=kw['prompts'])
    x = np.zeros([1, kw['image_size'], kw['image_width'] or kw['image_size'], 3], np.float32)
    info = {'steps': kw['steps'], 'train_seconds': 0.0, 'eval_accuracy': 0.0}
    return jax.device_get(module.init(jax.random.key(0), x)), info

  monkeypatch.setattr(glyph_judge, 'train_judge', fake_train)
  kw = dict(image_size=16, alphabet='0AB', max_chars=2, cache_dir=str(tmp_path))
  glyph_judge.load_judge(**kw)
  glyph_judge.load_judge(**kw, image_width=16)  # square: the same key
  # The square label set's key is the one before issue 25 (its cached judges stay valid).
  legacy = {'glyph_version': 1, 'pillow': glyph_judge.PIL.__version__, 'image_size': 16,
            'alphabet': '0AB', 'max_chars': 2, 'judge_version': 1, 'steps': 3000,
            'batch_size': 64, 'seed': 0}
  assert [p.name for p in (tmp_path / 'glyph_judge').glob('*.msgpack')] == [
      glyph_judge._cache_path(str(tmp_path), legacy).name]
  wide = glyph_judge.load_judge(**kw, image_width=32)
  assert isinstance(wide.module, glyph_judge.TextLineNet) and wide.info['steps'] == 2000
  glyph_judge.load_judge(**kw, prompts=True)
  glyph_judge.load_judge(**kw, prompts=True, heldout_strings=0.3)
  names = sorted(p.name for p in (tmp_path / 'glyph_judge').glob('*.msgpack'))
  assert len(names) == 4 and sum(n.startswith('16x32px-') for n in names) == 1


@pytest.mark.parametrize('name', ['dit_glyphs', 'vqvae_glyphs', 'var_glyphs', 'hart_glyphs',
                                  'raster_ar_glyphs', 'maskgit_glyphs'])
def test_every_image_config_has_a_prompt_variant_on_the_wide_8_character_set(name):
  """`P,prompt` (issue 25's name, e.g. configs/dit_glyphs.py:tiny,prompt): 1..8-character
  strings on H x 2H images, the model's condition sized to 8 character tokens and its grid wide;
  the plain preset keeps the square label set; a misspelt variant names the choices."""
  import os
  from conftest import ROOT
  from train.config import from_file, model_config, validate
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  plain, prompt = from_file(path + ':tiny'), from_file(path + ':tiny,prompt')
  assert not plain.data.prompts and plain.data.image_width == 0
  assert prompt.data.prompts and prompt.data.max_chars == 8
  assert prompt.data.image_width == 2 * prompt.data.image_size
  validate(prompt)
  m = model_config(prompt)
  assert getattr(m, 'image_width', None) == prompt.data.image_width
  if hasattr(m, 'label_len'):
    assert m.label_len == 8
  with pytest.raises(ValueError, match="variant 'promt'"):
    from_file(path + ':tiny,promt')
