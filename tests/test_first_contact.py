"""First contact: each failure a new user hit, rebuilt as they hit it (own images, one text file,
a torn metrics line, damaged checkpoints, bad sampling arguments, a failing save, a NaN), plus
the one-line errors of the CLIs and the misspelt-key message of every config."""
import glob
import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from conftest import ROOT, run_python
from train.checkpoint import load_run
from train.config import from_file
from train.trainer import NonFiniteLoss, train

CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _tiny(name='ar_code.py', **train_kw):
  c = from_file(os.path.join(ROOT, 'configs', f'{name}:tiny'))
  c.train.update(**train_kw)
  return c


def _damage(step_dir) -> None:
  """A copy of a checkpoint that lost its array data."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      if 'ocdbt' in root or f.startswith('manifest'):
        os.remove(os.path.join(root, f))


def _one_line_error(proc, *words):
  """A user error: exit status 2, at most 3 lines on stderr, each of `words` in them."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert len(lines) <= 3, proc.stderr
  assert 'Traceback' not in proc.stderr
  for w in words:
    assert w in proc.stderr, (w, proc.stderr)


@pytest.fixture(scope='module')
def ar_run(tmp_path_factory):
  """A tiny AR run with checkpoints at steps 4 and 8."""
  wd = str(tmp_path_factory.mktemp('ar') / 'run')
  train(_tiny(steps=8, ckpt_every=4, eval_every=8), wd)
  return wd


# --- 1. own images: no glyph judge, and a failing evaluation costs no checkpoint -----------------

def test_dit_on_a_folder_of_pngs_trains_without_the_glyph_judge(tmp_path, capsys):
  from PIL import Image
  folder = tmp_path / 'pics'
  folder.mkdir()
  rs = np.random.default_rng(0)
  for i in range(24):
    Image.fromarray(rs.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
  c = _tiny('dit_glyphs.py', steps=12, ckpt_every=12, eval_every=12)
  c.data.update(source='images', files=str(folder), cache_dir=str(tmp_path / 'cache'))
  assert c.judge.name == 'glyphs' and c.judge.every == 10  # the preset's judge, as a user runs it
  wd = str(tmp_path / 'run')
  train(c, wd)
  assert "judge.name='glyphs' reads rendered glyphs only" in capsys.readouterr().out
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert rows[-1]['step'] == 12 and not any('judge_fd' in r for r in rows)
  assert load_run(wd)[0].data.source == 'images'


def test_a_failing_judge_is_reported_after_the_checkpoint_of_its_step(tmp_path, monkeypatch,
                                                                      capsys):
  import train.trainer as trainer

  def broken(*args, **kwargs):
    raise ValueError('label shapes do not match')
  monkeypatch.setattr(trainer, 'judge_metrics', broken)
  c = _tiny('dit_glyphs.py', steps=20, ckpt_every=10, eval_every=20)
  c.data.cache_dir = str(tmp_path)
  wd = str(tmp_path / 'run')
  train(c, wd)  # the judge fails at step 10: reported, and the run goes on to the end
  assert 'judge' in capsys.readouterr().out
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, 'checkpoints'))) == [10, 20]


# --- 2. one text file, and a folder as data.files ---------------------------------------------

def test_a_single_text_file_trains_holding_out_its_tail(tmp_path, capsys):
  from pipelines.text import describe, load_corpus
  text = ''.join(f'line {i}: the quick brown fox\n' for i in range(400))
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'input.txt').write_text(text)
  c = _tiny(steps=4, ckpt_every=4, eval_every=4)
  c.data.update(source='text', files=str(tmp_path / 'mine' / 'input.txt'),
                cache_dir=str(tmp_path / 'c'))
  corpus = load_corpus(c.data)
  n_eval = int((len(text) + 1) * c.data.holdout_fraction)  # the file, then its EOS
  assert len(corpus.eval) == n_eval and len(corpus.train) == len(text) + 1 - n_eval
  assert bytes(np.asarray(corpus.train[:20], np.uint8)) == text[:20].encode()
  assert 'the last' in describe(corpus) and 'held out' in describe(corpus)
  train(c, str(tmp_path / 'run'))
  assert 'too few to hold out whole ones' in capsys.readouterr().out
  c.data.files = str(tmp_path / 'mine')  # the folder: every file under it
  assert load_corpus(c.data).train_files == ('input.txt',)


def test_binary_files_in_a_text_corpus_are_counted_in_a_warning(tmp_path):
  from pipelines.text import load_corpus
  (tmp_path / 'mine').mkdir()
  for i in range(6):
    (tmp_path / 'mine' / f'{i}.txt').write_text('print(1)\n' * 50)
  (tmp_path / 'mine' / 'x.bin').write_bytes(bytes(range(256)) * 4)
  c = _tiny()
  c.data.update(source='text', files=str(tmp_path / 'mine'), cache_dir=str(tmp_path / 'c'),
                seq_len=8)
  with pytest.warns(UserWarning, match=r"1 of the 7 files .* do not look like text.*x\.bin"):
    load_corpus(c.data)


# --- 3. a torn last line of metrics.jsonl ---------------------------------------------------------

def test_a_torn_metrics_line_does_not_block_the_resume(tmp_path):
  c = _tiny(steps=8, ckpt_every=4, eval_every=8, stop_at=4)
  wd = str(tmp_path / 'run')
  train(c, wd)
  with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 5, "loss": 3.1')  # killed mid-write
  c.train.stop_at = 0
  with pytest.warns(UserWarning, match='skipped 1 unreadable line'):
    train(c, wd)
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert rows[-1]['step'] == 8


# --- 4 and 5. damaged checkpoints: training and sampling --------------------------------------------

def test_when_every_checkpoint_is_unreadable_the_message_says_so(ar_run, tmp_path):
  wd = str(tmp_path / 'run')
  shutil.copytree(ar_run, wd)
  for step in ('4', '8'):
    _damage(os.path.join(wd, 'checkpoints', step))
  with pytest.raises(ValueError, match=r'all 2 checkpoints in .*checkpoints are unreadable'):
    train(_tiny(steps=12, ckpt_every=4, eval_every=8), wd)
  proc = run_python(['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--workdir', wd],
                    check=False)
  _one_line_error(proc, 'all 2 checkpoints', 'config.json')


def test_sample_falls_back_from_an_unreadable_checkpoint(ar_run, tmp_path):
  wd = str(tmp_path / 'run')
  shutil.copytree(ar_run, wd)
  _damage(os.path.join(wd, 'checkpoints', '8'))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    _, _, params = load_run(wd)
  assert any('step 8' in str(w.message) and 'using step 4' in str(w.message) for w in caught)
  jax.tree.map(np.testing.assert_array_equal, params, load_run(ar_run, step=4)[2])
  proc = run_python(['-m', 'sample', '--workdir', wd, '--prompt', 'a', '--num', '1',
                     '--max-new-tokens', '4'])
  assert 'using step 4' in proc.stderr and proc.stderr.count('Traceback') == 0


@pytest.mark.parametrize('args,words', [
    (['--step', '7'], ['--step 7', '[4, 8]']),
    (['--workdir-missing'], ['not a training run']),
])
def test_sample_names_the_steps_and_what_a_run_is(ar_run, tmp_path, args, words):
  base = ['-m', 'sample', '--workdir', ar_run, '--num', '1', '--max-new-tokens', '4']
  if args == ['--workdir-missing']:
    base[3], args = str(tmp_path / 'nothing'), []
  _one_line_error(run_python(base + args, check=False), *words)


# --- 6. sampling arguments fail at the parser, naming the flag ------------------------------------

@pytest.mark.parametrize('args,flag', [
    (['--num', '0'], '--num'),
    (['--max-new-tokens', '-5'], '--max-new-tokens'),
    (['--prompt-ids', '1,x,3'], '--prompt-ids'),
    (['--top-p', '0'], '--top-p'),
])
def test_bad_sampling_arguments_are_one_line(ar_run, args, flag):
  proc = run_python(['-m', 'sample', '--workdir', ar_run, *args], check=False)
  _one_line_error(proc, flag)


def test_a_byte_model_takes_raw_non_utf8_prompt_bytes(ar_run):
  prompt = b'caf\xe9 \xff'  # latin-1 and a lone 0xff: not UTF-8
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'sample', '--workdir',
                         ar_run, '--num', '1', '--max-new-tokens', '4', '--temperature', '0',
                         '--prompt', prompt], cwd=ROOT, env=env, capture_output=True)
  assert proc.returncode == 0, proc.stderr.decode(errors='replace')[-2000:]
  assert b'4 new tokens' in proc.stdout


def test_flags_that_do_not_apply_and_long_requests_are_warned(ar_run):
  proc = run_python(['-m', 'sample', '--workdir', ar_run, '--num', '1', '--max-new-tokens', '40',
                     '--sampler', 'heun', '--label', '7A'])
  assert "--label, --sampler do not apply to a 'autoregressive' run" in proc.stderr
  assert 'past the 32-token windows' in proc.stderr  # tiny: data.seq_len = 32


def test_dit_num_zero_names_the_flag(tmp_path):
  proc = run_python(['-m', 'sample', '--workdir', str(tmp_path), '--num', '0', '--out', 'x.png'],
                    check=False)
  _one_line_error(proc, '--num')


def test_the_judge_cli_reports_a_bad_flag_in_one_line(tmp_path):
  proc = run_python(['-m', 'evaluators.glyph_judge', '--max_chars', '0', '--cache_dir',
                     str(tmp_path)], check=False, timeout=120)
  _one_line_error(proc, 'max_chars=0')
  assert not any(tmp_path.iterdir())  # nothing trained or cached


# --- 7. unwritable places fail at once, and a failing save keeps the previous checkpoint ---------

def test_an_unwritable_workdir_fails_before_training(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  for wd in (tmp_path / 'a_file', tmp_path / 'a_file' / 'sub'):
    proc = run_python(['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--workdir',
                       str(wd)], check=False, timeout=60)
    _one_line_error(proc, '--workdir', str(wd))
    assert 'params' not in proc.stdout  # nothing was built


def test_a_save_that_cannot_be_written_stops_at_once(tmp_path):
  wd = tmp_path / 'run'
  train(_tiny(steps=8, ckpt_every=4, eval_every=8, stop_at=4), str(wd))
  ckpts = wd / 'checkpoints'
  if subprocess.run(['chattr', '+i', str(ckpts)], capture_output=True).returncode:
    pytest.skip('chattr +i (an immutable directory, unwritable even for root) is unsupported')
  try:
    proc = run_python(['-m', 'train', '--config', 'configs/ar_code.py:tiny', '--workdir', str(wd),
                       '--config.train.steps=8', '--config.train.ckpt_every=4',
                       '--config.train.eval_every=8'], check=False, timeout=120)
  finally:
    subprocess.run(['chattr', '-i', str(ckpts)], check=True)
  _one_line_error(proc, str(ckpts), 'step 4 is the newest complete one')
  assert load_run(str(wd))[0] is not None and sorted(os.listdir(ckpts)) == ['4']


# --- 8. no non-finite state is saved; divergence is warned ----------------------------------------

def test_a_nan_run_never_saves_nonfinite_params(tmp_path):
  c = _tiny(lr=1e4, warmup_steps=1, clip_norm=1e30, steps=30, log_every=10, ckpt_every=1)
  with pytest.raises(NonFiniteLoss, match=r'Last good checkpoint: step (\d+)') as err:
    train(c, str(tmp_path / 'nan'))
  good = int(err.value.args[0].split('Last good checkpoint: step ')[1].split()[0])
  _, _, params = load_run(str(tmp_path / 'nan'), step=good, ema=False)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_diverging_loss_is_warned_once(capsys):
  from train.trainer import DivergenceWatch
  watch = DivergenceWatch()
  watch(20, 5.5, 30.0)
  watch(40, 9.0, 30.0)
  assert 'diverging' not in capsys.readouterr().out  # < 2x the first logged loss
  watch(60, 400.0, 30.0)
  watch(80, 900.0, 30.0)
  out = capsys.readouterr().out
  assert out.count('diverging') == 1 and '72.7x its first' in out and 'train.lr' in out


# --- Principles: a misspelt key of every config ----------------------------------------------------

@pytest.mark.parametrize('config', CONFIGS)
def test_a_misspelt_key_names_its_full_path_and_the_fix(config, tmp_path, capsys):
  from train.__main__ import cli
  with pytest.raises(SystemExit) as exit_:
    cli(['train', '--config', os.path.join(ROOT, 'configs', f'{config}:tiny'), '--workdir',
         str(tmp_path), '--config.train.stpes=3'])
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert exit_.value.code == 2 and len(err) == 1, err
  assert '--config.train.stpes' in err[0] and 'did you mean --config.train.steps' in err[0]


@pytest.mark.parametrize('stop, line', [
    (KeyboardInterrupt('var stopped before step 3000; rerun to resume'),
     'stopped: var stopped before step 3000; rerun to resume'),
    (KeyboardInterrupt(), 'stopped')])
def test_an_interrupted_command_ends_in_one_line_with_status_130(stop, line, capsys):
  """A stopped arena race (a model's checkpoint saved, the rest to come) or a bare Ctrl-C: one
  line on stderr, no traceback, and the shell's status for an interrupt."""
  from train.cli import run_main

  def main(argv):
    raise stop

  with pytest.raises((SystemExit, KeyboardInterrupt)) as exit_:  # an escaped one would end pytest
    run_main(main, [])
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert isinstance(exit_.value, SystemExit) and exit_.value.code == 130 and err == [line]
