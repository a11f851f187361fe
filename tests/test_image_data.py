"""Tests for pipelines/images.py: glyphs, folders, .npz arrays, resumable/sharded pipelines."""
import hashlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from pipelines import glyphs, images as image_data


def make_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(source='glyphs', files='', path='', image_size=16, channels=3,
             alphabet=glyphs.DEFAULT_ALPHABET, max_chars=3, holdout_fraction=0.05, seed=0,
             cache_dir='')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def take(ds, n, state=None):
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)], it


def write_images(root, n, size=(20, 12), mode='RGB', ext='png', start=0):
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(start)
  for i in range(start, start + n):
    shape = (size[1], size[0], 3) if mode == 'RGB' else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
        root / f'img{i:03d}.{ext}')


# --- Glyphs ----------------------------------------------------------------------------------

def test_glyph_is_a_function_of_split_and_index():
  a, b = glyphs.glyph_example(7), glyphs.glyph_example(7)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  others = [glyphs.glyph_example(8), glyphs.glyph_example(7, split='eval')]
  assert all(not np.array_equal(a['image'], o['image']) for o in others)
  train = {glyphs.glyph_example(i)['image'].tobytes() for i in range(50)}
  held = {glyphs.glyph_example(i, split='eval')['image'].tobytes() for i in range(50)}
  assert len(train) == 50 and not train & held
  big = glyphs.glyph_example(10**30)  # unbounded random access
  assert big['image'].shape == (32, 32, 3)


def test_glyph_shapes_range_labels_and_contrast():
  lengths = set()
  for i in range(40):
    ex = glyphs.glyph_example(i, image_size=24, max_chars=4)
    image, label = ex['image'], ex['label']
    assert image.shape == (24, 24, 3) and image.dtype == np.float32
    assert label.shape == (4,) and label.dtype == np.int32
    assert -1.0 <= image.min() and image.max() <= 1.0
    n = int((label > 0).sum())
    lengths.add(n)
    assert 1 <= n <= 4 and (label[:n] > 0).all() and (label[n:] == 0).all()  # blanks trail
    assert label.max() <= len(glyphs.DEFAULT_ALPHABET)
    luma = image @ np.array([0.2126, 0.7152, 0.0722], np.float32)  # [H, W] in [-1, 1]
    assert luma.max() - luma.min() > 0.6, f'glyph {i} looks blank'  # >= 0.4 * 2 minus AA
  assert lengths == {1, 2, 3, 4}


def test_text_fits_inside_the_image():
  # Worst cases: the widest and tallest strings at the largest size, pushed into each corner.
  for text in ('WMW', 'M', '8', 'Q', 'WW'):
    for u, v in ((0, 0), (1, 1), (0, 1), (1, 0)):
      for size, stroke in ((16, 0.0), (32, 0.0), (32, glyphs.MAX_STROKE)):
        alpha = glyphs._text_alpha(text, size, glyphs._EM_RANGE[1], u, v, stroke)
        assert alpha.sum() > 5, (text, u, v, size)  # something was drawn
        border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        assert border.max() == 0, f'{text!r} at {(u, v)} touches the edge of a {size}px image'


def test_stroke_thickens_the_letters_and_changes_nothing_else():
  """stroke=0 is the regular weight bit for bit; a wider stroke covers strictly more pixels
  at the same size and place (ink coverage grows 0 < 0.05 < 0.1), and the label, the colours
  and the layout draws stay those of the same index."""
  for i in range(4):
    np.testing.assert_array_equal(glyphs.glyph_example(i, stroke=0.0)['image'],
                                  glyphs.glyph_example(i)['image'])
  for text, em in (('8', 0.6), ('B2', 0.5), ('WAN', 0.3)):  # sizes that need no shrink-to-fit
    ink = [glyphs._text_alpha(text, 32, em, 0.5, 0.5, s).sum() for s in (0.0, 0.05, 0.1)]
    assert ink[0] < ink[1] < ink[2], (text, ink)
  for i in range(6):
    regular, bold = glyphs.glyph_example(i), glyphs.glyph_example(i, stroke=0.06)
    np.testing.assert_array_equal(regular['label'], bold['label'])
    corners = lambda x: x[[0, 0, -1, -1], [0, -1, 0, -1]]  # background: never under the text
    np.testing.assert_array_equal(corners(regular['image']), corners(bold['image']))


def test_jitter_shrinks_the_spread_of_text_size_and_position():
  """jitter=1 is the full set bit for bit; jitter=0 centres every string: the ink's bounding
  box is centred in the image whatever the index (gradient backgrounds excluded by a
  threshold on the deviation from the median luminance)."""
  for i in range(5):
    np.testing.assert_array_equal(glyphs.glyph_example(i, jitter=1.0)['image'],
                                  glyphs.glyph_example(i)['image'])

  def ink_box_centre(i, jitter):
    luma = glyphs.glyph_example(i, jitter=jitter)['image'] @ glyphs._LUMA.astype(np.float32)
    dev = np.abs(luma - np.median(luma))  # [S, S]; text is the minority of pixels
    ys, xs = np.nonzero(dev > 0.5 * dev.max())
    return (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2

  centred = np.array([ink_box_centre(i, 0.0) for i in range(12)])
  full = np.array([ink_box_centre(i, 1.0) for i in range(12)])
  assert np.abs(centred - 15.5).max() <= 3.0, centred
  assert np.abs(full - 15.5).max() > 5.0, full  # the full set really moves text around


def test_mono_palette_is_black_ink_on_white_with_the_same_layout():
  """palette='mono' paints the same strings at the same sizes and places as 'colour': its
  ink (pixels under the text) is exactly where the colour image's text-vs-median-background
  deviation is largest, every pixel is a grey between black and white, the corners are white,
  and a bad palette names the choices."""
  for i in range(6):
    colour, mono = glyphs.glyph_example(i), glyphs.glyph_example(i, palette='mono')
    np.testing.assert_array_equal(colour['label'], mono['label'])
    img = mono['image']  # [S, S, 3] in [-1, 1]
    np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey
    assert img[[0, 0, -1, -1], [0, -1, 0, -1]].min() == 1.0  # white ground
    ink = img[..., 0] < 0.0  # [S, S]: more ink than ground
    assert ink.any() and img.min() < -0.9  # black strokes (antialiased edges are grey)
    luma = colour['image'] @ glyphs._LUMA.astype(np.float32)
    dev = np.abs(luma - np.median(luma))
    assert dev[ink].mean() > 2 * dev[~ink].mean(), i  # the same text in the same place
  with pytest.raises(ValueError, match=r"palette='grey'; use one of \('colour', 'mono'\)"):
    glyphs.glyph_example(0, palette='grey')
  with pytest.raises(ValueError, match=r"data.palette='bw'"):
    image_data.describe(make_cfg(palette='bw'))
  assert image_data.describe(make_cfg(palette='mono')).endswith(', black on white, unbounded')


def test_labels_round_trip():
  for i in range(20):
    label = glyphs.glyph_example(i)['label']
    text = glyphs.decode_label(label)
    np.testing.assert_array_equal(glyphs.encode_text(text, glyphs.DEFAULT_ALPHABET, 3),
                                  label)
  np.testing.assert_array_equal(glyphs.encode_text('B0', '0AB', 3), [3, 1, 0])
  assert glyphs.decode_label([3, 1, 0], '0AB') == 'B0'
  with pytest.raises(ValueError, match=r"uses 'O'.*not in the alphabet"):
    glyphs.encode_text('OK', glyphs.DEFAULT_ALPHABET, 3)
  with pytest.raises(ValueError, match='more than max_chars=3'):
    glyphs.encode_text('ABCD', glyphs.DEFAULT_ALPHABET, 3)


def test_glyph_config_errors_and_describe():
  assert image_data.describe(make_cfg(image_size=32)) == (
      'glyphs: 32x32 RGB, 1-3 chars from 31 symbols, unbounded')
  assert image_data.label_len(make_cfg()) == 3 and image_data.label_vocab(make_cfg()) == 32
  with pytest.raises(ValueError, match='repeated'):
    image_data.label_len(make_cfg(alphabet='AAB'))
  with pytest.raises(ValueError, match="Unknown data.source='cifar'"):
    image_data.describe(make_cfg(source='cifar'))
  with pytest.raises(ValueError, match='data.channels=2'):
    image_data.describe(make_cfg(channels=2))
  with pytest.raises(ValueError, match=r'data.stroke=0.5 must be in \[0, 0.15\]'):
    image_data.describe(make_cfg(stroke=0.5))
  assert image_data.describe(make_cfg(stroke=0.06)).endswith(', stroke 0.06, unbounded')


def test_glyph_eval_batches_are_the_eval_split_in_order():
  batches = image_data.eval_batches(make_cfg(channels=1), batch_size=4, num_batches=0)
  assert len(batches) == image_data.DEFAULT_GLYPH_EVAL_BATCHES
  assert batches[0]['image'].shape == (4, 16, 16, 1) and batches[0]['label'].shape == (4, 3)
  np.testing.assert_array_equal(batches[1]['label'][2],
                                glyphs.glyph_example(6, image_size=16, split='eval')['label'])


# --- Pipelines -------------------------------------------------------------------------------

def test_train_dataset_resume_matches_unbroken_iterator():
  ds = image_data.train_dataset(make_cfg(), batch_size=4, seed=3)
  first, it = take(ds, 3)
  assert first[0]['image'].shape == (4, 16, 16, 3) and first[0]['label'].dtype == np.int32
  state = it.get_state()
  unbroken = [next(it) for _ in range(3)]
  resumed, _ = take(image_data.train_dataset(make_cfg(), batch_size=4, seed=3), 3, state)
  for x, y in zip(unbroken, resumed):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(first[0]['image'], resumed[0]['image'])  # not a restart
  other, _ = take(image_data.train_dataset(make_cfg(), batch_size=4, seed=4), 1)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_process_sharding_partitions_the_global_batch(tmp_path):
  write_images(tmp_path / 'imgs', 30)
  for cfg in (make_cfg(), make_cfg(source='images', files=str(tmp_path / 'imgs'),
                                   holdout_fraction=0.2)):
    whole, _ = take(image_data.train_dataset(cfg, batch_size=6, seed=5), 2)
    shards = [take(image_data.train_dataset(cfg, batch_size=6, seed=5, process_index=p,
                                            process_count=2), 2)[0] for p in range(2)]
    for step in range(2):
      rows = lambda b: {x.tobytes() for x in b['image']}
      assert shards[0][step]['image'].shape[0] == 3
      assert rows(shards[0][step]) | rows(shards[1][step]) == rows(whole[step])
      np.testing.assert_array_equal(shards[1][step]['image'], whole[step]['image'][1::2])
  with pytest.raises(ValueError, match='not divisible by process_count=4'):
    image_data.train_dataset(make_cfg(), batch_size=6, seed=0, process_count=4)


# --- Folders ---------------------------------------------------------------------------------

def test_folder_png_and_jpeg_resized_cropped_and_held_out(tmp_path):
  root = tmp_path / 'photos'
  write_images(root / 'a', 20, size=(20, 12), ext='png')
  write_images(root / 'b', 20, size=(9, 30), ext='JPG', start=20)
  (root / 'notes.txt').write_text('not an image')
  cfg = make_cfg(source='images', files=str(root), holdout_fraction=0.25)
  relpaths = sorted(p.relative_to(root).as_posix() for p in root.rglob('img*'))
  held = [p for p in relpaths if int(hashlib.sha1(p.encode()).hexdigest(), 16) % 10_000 < 2500]
  assert 0 < len(held) < 40
  assert image_data.label_len(cfg) == 1 and image_data.label_vocab(cfg) == 1
  assert f'{40 - len(held)} train / {len(held)} eval images' in image_data.describe(cfg)
  batches = image_data.eval_batches(cfg, batch_size=len(held), num_batches=0)
  (batch,) = batches
  assert batch['image'].shape == (len(held), 16, 16, 3) and batch['image'].dtype == np.float32
  assert -1 <= batch['image'].min() and batch['image'].max() <= 1
  assert (batch['label'] == 0).all()
  # Held-out images equal the resized + centre-cropped files, and none is a training image.
  expected = []
  for p in held:
    im = Image.open(root / p).convert('RGB')
    scale = 16 / min(im.size)
    w, h = max(16, round(im.size[0] * scale)), max(16, round(im.size[1] * scale))
    im = im.resize((w, h), Image.LANCZOS)
    left, top = (w - 16) // 2, (h - 16) // 2
    expected.append(np.asarray(im.crop((left, top, left + 16, top + 16))))
  np.testing.assert_allclose((batch['image'] + 1) * 127.5, np.stack(expected), atol=1e-3)
  train_rows = {b.tobytes() for s in take(image_data.train_dataset(cfg, batch_size=8, seed=0),
                                         20)[0] for b in s['image']}
  assert len(train_rows) > 10 and not train_rows & {x.tobytes() for x in batch['image']}
  glob_cfg = make_cfg(source='images', files=str(root / 'b' / '*.JPG'), channels=1)
  assert image_data.eval_batches(glob_cfg, batch_size=1, num_batches=1)[0]['image'].shape == (
      1, 16, 16, 1)


def test_folder_errors_name_the_file_or_folder(tmp_path):
  with pytest.raises(ValueError, match=r'No images found .*empty.*\.png/\.jpg/\.jpeg'):
    (tmp_path / 'empty').mkdir()
    image_data.describe(make_cfg(source='images', files=str(tmp_path / 'empty')))
  write_images(tmp_path / 'bad', 5)
  (tmp_path / 'bad' / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
  with pytest.raises(ValueError, match=r'Cannot decode image file .*broken\.jpg.*remove it'):
    image_data.describe(make_cfg(source='images', files=str(tmp_path / 'bad')))
  write_images(tmp_path / 'mixed', 3)
  write_images(tmp_path / 'mixed', 1, mode='L', start=3)
  with pytest.raises(ValueError, match=r'mixes 1-channel and colour.*img003\.png.*img000\.png'):
    image_data.describe(make_cfg(source='images', files=str(tmp_path / 'mixed')))


# --- .npz ------------------------------------------------------------------------------------

def test_npz_with_and_without_labels(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
  np.savez(tmp_path / 'plain.npz', images=images)
  cfg = make_cfg(source='npz', path=str(tmp_path / 'plain.npz'), holdout_fraction=0.1)
  assert image_data.label_len(cfg) == 1 and image_data.label_vocab(cfg) == 1
  (batch,) = image_data.eval_batches(cfg, batch_size=2, num_batches=0)  # last 2 rows held out
  np.testing.assert_allclose((batch['image'] + 1) * 127.5, images[18:], atol=1e-3)
  assert (batch['label'] == 0).all()
  # Class ids -> [id + 1]; float [-1, 1] grayscale [N, H, W] resized to image_size.
  gray = rng.uniform(-1, 1, (10, 32, 32)).astype(np.float32)
  np.savez(tmp_path / 'cls.npz', images=gray, labels=np.arange(10) % 4)
  cfg = make_cfg(source='npz', path=str(tmp_path / 'cls.npz'), channels=1, holdout_fraction=0.2)
  assert image_data.label_len(cfg) == 1 and image_data.label_vocab(cfg) == 5
  (batch,) = image_data.eval_batches(cfg, batch_size=2, num_batches=1)
  assert batch['image'].shape == (2, 16, 16, 1)
  np.testing.assert_array_equal(batch['label'], [[1], [2]])  # rows 8, 9: ids 0, 1
  # Per-slot labels [N, L] are taken as they are.
  slots = rng.integers(0, 7, (20, 5))
  np.savez(tmp_path / 'slots.npz', images=images, labels=slots)
  cfg = make_cfg(source='npz', path=str(tmp_path / 'slots.npz'))
  assert image_data.label_len(cfg) == 5 and image_data.label_vocab(cfg) == slots.max() + 1
  (batch,) = take(image_data.train_dataset(cfg, batch_size=4, seed=0), 1)[0]
  assert batch['label'].shape == (4, 5)


def test_npz_errors(tmp_path):
  with pytest.raises(ValueError, match=r'data.path=.*missing\.npz.*is not a file'):
    image_data.describe(make_cfg(source='npz', path=str(tmp_path / 'missing.npz')))
  np.savez(tmp_path / 'x.npz', pixels=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"no 'images' array \(keys: \['pixels'\]\)"):
    image_data.describe(make_cfg(source='npz', path=str(tmp_path / 'x.npz')))
  cases = {
      'ndim.npz': (dict(images=np.zeros((4, 8), np.uint8)), r'shape \(4, 8\)'),
      'rows.npz': (dict(images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3, int)),
                   '3 rows but .images. has 4'),
      'neg.npz': (dict(images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, -2, 0])),
                  r'negative id \(-2, row 2\)'),
      'range.npz': (dict(images=np.full((4, 8, 8), 3.0)), r'range \[3, 3\].*rescale'),
  }
  np.save(tmp_path / 'single.npy', np.zeros((4, 8, 8), np.uint8))
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  cases['single.npy'] = (None, 'single array, not an .npz')
  cases['junk.npz'] = (None, r'Cannot read .*junk\.npz')
  for name, (arrays, pattern) in cases.items():
    if arrays is not None:
      np.savez(tmp_path / name, **arrays)
    with pytest.raises(ValueError, match=pattern):
      image_data.describe(make_cfg(source='npz', path=str(tmp_path / name)))
