"""Batch CLI (`python -m sample --workdir RUN --batch prompts.jsonl --out results.jsonl`,
sample/batch.py): every id comes back exactly once; an interrupted output (a torn last line)
resumes without duplicating or losing a prompt; bad lines become error records naming their
line while the rest runs; left-padded AR batches give exactly the single-prompt CLI's greedy
tokens; masked-diffusion runs batch too. Two tiny runs, trained once per module (2 steps: near
their random init, so greedy continuations differ from prompt to prompt)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from sample import batch as batch_lib
from sample.__main__ import main as sample_main

PROMPTS = ['def ', 'import os\n', 'class A(object):\n  ', 'x', 'for i in range(3):', 'return ',
           '# a comment about things\n']


def _train(tmp_path_factory, config: str) -> str:
  from train.config import from_file
  from train.trainer import train
  wd = str(tmp_path_factory.mktemp('run') / 'wd')
  c = from_file(os.path.join(ROOT, 'configs', config))
  c.train.update(steps=2, warmup_steps=1, eval_every=2, ckpt_every=2, log_every=1, eval_batches=1)
  train(c, wd)
  return wd


@pytest.fixture(scope='module')
def ar_run(tmp_path_factory):
  return _train(tmp_path_factory, 'ar_code.py:tiny')


@pytest.fixture(scope='module')
def md_run(tmp_path_factory):
  return _train(tmp_path_factory, 'mdlm_code.py:tiny')


def _write(path, rows):
  with open(path, 'w') as f:
    for r in rows:
      f.write(r if isinstance(r, str) else json.dumps(r))
      f.write('\n')
  return str(path)


def _records(path):
  with open(path) as f:
    return [json.loads(l) for l in f]


def _run(wd, inp, out, *flags):
  sample_main(['--workdir', wd, '--batch', inp, '--out', out, *flags])


def test_every_id_comes_back_exactly_once_through_the_named_command(ar_run, tmp_path):
  """The command as outside checks run it (default flags: max_new_tokens fits the context)."""
  rows = [{'id': i if i % 2 else f'p{i}', 'prompt': p} for i, p in enumerate(PROMPTS)]
  _write(tmp_path / 'prompts.jsonl', rows)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-m', 'sample', '--workdir', ar_run, '--batch',
                         'prompts.jsonl', '--out', 'results.jsonl'], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = _records(tmp_path / 'results.jsonl')
  assert sorted(map(json.dumps, (r['id'] for r in recs))) == sorted(
      map(json.dumps, (r['id'] for r in rows)))
  assert all('error' not in r and r['tokens'] and r['text'] is not None for r in recs)
  for r in recs:  # context 64 (model.max_len), prompts in the 32-token bucket: 32 new at most
    assert len(r['tokens']) <= 32 and (len(r['tokens']) == 32 or r['tokens'][-1] == 256)
  assert 'tokens/s' in proc.stderr and '7/7' in proc.stderr  # per-batch lines, progress bar


def test_an_interrupted_output_resumes_without_duplicating_or_losing_a_prompt(ar_run, tmp_path,
                                                                              capsys):
  rows = [{'id': f'q{i}', 'prompt': p} for i, p in enumerate(PROMPTS)]
  inp = _write(tmp_path / 'in.jsonl', rows)
  out = str(tmp_path / 'out.jsonl')
  flags = ['--num', '2', '--max-new-tokens', '6', '--temperature', '0', '--bucket', '16']
  _run(ar_run, inp, out, *flags)
  with open(out, 'rb') as f:
    full = f.read()
  lines = full.splitlines(keepends=True)
  assert len(lines) == len(rows)
  k = 3
  with open(out, 'wb') as f:  # killed while writing line k + 1
    f.write(b''.join(lines[:k]) + lines[k][:len(lines[k]) // 2])
  capsys.readouterr()
  _run(ar_run, inp, out, *flags)
  err = capsys.readouterr().err
  assert 'torn last line' in err and f'{k} lines already there' in err
  with open(out, 'rb') as f:
    again = f.read()
  assert again.startswith(b''.join(lines[:k]))  # the first k records untouched
  recs = _records(out)
  assert sorted(r['id'] for r in recs) == sorted(r['id'] for r in rows)  # once each
  first = {r['id']: r['tokens'] for r in map(json.loads, lines)}
  assert all(r['tokens'] == first[r['id']] for r in recs)  # greedy: the same in other batches
  _run(ar_run, inp, out, *flags)  # complete: a rerun adds nothing
  assert len(_records(out)) == len(rows)


def test_bad_lines_are_error_records_naming_the_line_and_the_rest_runs(ar_run, tmp_path, capsys):
  lines = [{'id': 'ok1', 'prompt': 'def '},                                # 1
           {'id': 'empty', 'prompt': ''},                                  # 2
           {'id': 'long', 'prompt': 'x' * 60},                             # 3: 60 + 8 > 64
           '{"id": "broken", "prompt": "def ',                             # 4: malformed
           {'id': 'beam', 'prompt': 'def ', 'sampler': 'beam'},            # 5
           {'id': 'ok1', 'prompt': 'class '},                              # 6: duplicate id
           {'id': 'ok2', 'prompt': 'import ', 'temperature': 0},           # 7
           '',                                                             # 8: blank, skipped
           {'prompt': 'no id'},                                            # 9
           {'id': 'typo', 'prompt': 'a', 'temprature': 0.5},               # 10
           {'id': 'hot', 'prompt': 'a', 'temperature': -1},                # 11
           {'id': 'ok3', 'prompt': 'while ', 'max_new_tokens': 3}]         # 12
  inp = _write(tmp_path / 'in.jsonl', lines)
  out = str(tmp_path / 'out.jsonl')
  _run(ar_run, inp, out, '--max-new-tokens', '8', '--num', '2')  # returns: exit status 0
  err = capsys.readouterr().err
  recs = _records(out)
  errors = {r['line']: r for r in recs if 'error' in r}
  expected = {2: 'empty prompt', 3: "exceed the model's context of 64", 4: 'not valid JSON',
              5: "unknown sampler 'beam'", 6: "repeats line 1's", 9: 'no "id"',
              10: "unknown field 'temprature'", 11: '"temperature" -1'}
  assert sorted(errors) == sorted(expected)
  for n, words in expected.items():
    assert errors[n]['error'].startswith(f'line {n}: ') and words in errors[n]['error']
    assert f'error: line {n}: ' in err  # and one line on stderr
  assert errors[6]['id'] is None and errors[9]['id'] is None and errors[2]['id'] == 'empty'
  results = {r['id']: r for r in recs if 'error' not in r}
  assert sorted(results) == ['ok1', 'ok2', 'ok3']
  assert results['ok1']['line'] == 1 and results['ok1']['prompt'] == 'def '
  assert len(results['ok3']['tokens']) <= 3 and len(results['ok2']['tokens']) <= 8
  _run(ar_run, inp, out, '--max-new-tokens', '8', '--num', '2')  # resume: errors are done too
  assert len(_records(out)) == len(recs)


def test_left_padded_ar_batch_equals_the_single_prompt_cli(ar_run, tmp_path, capsys):
  """Prompts of 1 to 25 tokens share one [4, 32] bucket (and one batch holds two of them beside
  two dummy rows); greedy, each row's tokens are the unpadded single-prompt CLI's."""
  inp = _write(tmp_path / 'in.jsonl', [{'id': i, 'prompt': p} for i, p in enumerate(PROMPTS)])
  out = str(tmp_path / 'out.jsonl')
  _run(ar_run, inp, out, '--temperature', '0', '--max-new-tokens', '10')
  got = {r['id']: r['tokens'] for r in _records(out)}
  capsys.readouterr()
  for i, p in [(i, PROMPTS[i]) for i in (0, 3, 4, 6)]:  # 4, 1, 18 and 25 bytes: both ends
    sample_main(['--workdir', ar_run, '--prompt', p, '--json', '--num', '1', '--temperature', '0',
                 '--max-new-tokens', '10'])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got[i] == single['tokens'], (i, p)
  assert len({tuple(t) for t in got.values()}) > 1  # not one continuation for every prompt


def test_masked_diffusion_runs_batch_with_strategy_names(md_run, tmp_path):
  rows = [{'id': f'm{i}', 'prompt': p} for i, p in enumerate(PROMPTS[:5])]
  rows[1]['sampler'] = 'topk'
  rows[2]['sampler'] = 'ar'  # an AR name on a diffusion run
  inp = _write(tmp_path / 'in.jsonl', rows)
  out = str(tmp_path / 'out.jsonl')
  _run(md_run, inp, out, '--strategy', 'threshold', '--max-new-tokens', '8', '--num', '2')
  recs = {r['id']: r for r in _records(out)}
  assert sorted(recs) == sorted(r['id'] for r in rows)
  assert "unknown sampler 'ar'" in recs['m2']['error'] and 'line 3' in recs['m2']['error']
  for i in (0, 1, 3, 4):
    r = recs[f'm{i}']
    assert r['sampler'] == ('topk' if i == 1 else 'threshold')
    assert len(r['tokens']) == 8 and 257 not in r['tokens']  # every mask filled


def test_dllm_flags_reach_the_samplers_and_refresh_1_is_the_uncached_sampler(md_run, capsys):
  """--strategy factor / eb fill every mask; --strategy semi_ar --rule eb with --dllm-cache dual
  --refresh 1 (a full forward at every call) prints exactly the uncached semi-AR tokens, and
  with --refresh 0 it spends the same calls per block."""
  base = ['--workdir', md_run, '--prompt', 'def ', '--json', '--num', '2', '--max-new-tokens',
          '16']

  def tokens(*flags):
    sample_main(base + list(flags))
    rows = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    return [r['tokens'] for r in rows], rows[0]['nfe']

  for strategy in ('factor', 'eb'):
    toks, nfe = tokens('--strategy', strategy, '--factor', '2', '--eb-gamma', '0.5')
    assert all(len(t) == 16 and 257 not in t for t in toks) and 1 <= nfe <= 20
  semi = ['--strategy', 'semi_ar', '--rule', 'eb', '--block-size', '8']
  plain, nfe = tokens(*semi)
  cached, nfe_cached = tokens(*semi, '--dllm-cache', 'dual', '--refresh', '1')
  assert cached == plain and nfe_cached == nfe
  toks, _ = tokens('--strategy', 'semi_ar', '--rule', 'topk', '--steps', '4', '--block-size', '8',
                   '--dllm-cache', 'prefix')
  assert all(len(t) == 16 and 257 not in t for t in toks)
  for strategy in (['semi_ar', '--dllm-cache', 'dual'], ['block']):  # int8 caches read back
    toks, _ = tokens('--strategy', *strategy, '--block-size', '8', '--kv-int8', '--quantize',
                     'int8')
    assert all(len(t) == 16 and 257 not in t for t in toks)


def test_batch_flags_fail_at_the_parser(ar_run, tmp_path):
  inp = _write(tmp_path / 'in.jsonl', [{'id': 1, 'prompt': 'a'}])
  for extra, words in ((['--prompt', 'x'], 'drop --prompt'), ([], '--batch needs --out')):
    with pytest.raises(SystemExit) as err:
      sample_main(['--workdir', ar_run, '--batch', inp, *extra] + (
          ['--out', str(tmp_path / 'o.jsonl')] if extra else []))
    assert err.value.code == 2


# --- the planner and the writer alone (a fake sampler: no model) --------------------------------

class _Out:
  def __init__(self, tokens):
    self.tokens, self.nfe = tokens, np.int32(1)


def _echo(opts, prompt, pad, rng):
  """Generation = the row's real prompt reversed, max_new_tokens ids long (pad slots dropped)."""
  n = opts['max_new_tokens']
  gen = np.stack([np.resize(row[p:][::-1], n) for row, p in zip(prompt, pad)])
  return _Out(np.concatenate([prompt, gen], 1)), prompt.shape[1]


def test_compiled_shapes_are_bounded_by_buckets_not_prompts():
  rng = np.random.default_rng(0)
  reqs = [batch_lib.Request(i, i, '', tuple(range(1, int(n) + 1)),
                            (('max_new_tokens', 8), ('sampler', 'ar')))
          for i, n in enumerate(rng.integers(1, 100, 200))]
  batches = batch_lib.plan(reqs, rows=8, bucket=32, context=128)
  assert {P_b for _, P_b, _ in batches} == {32, 64, 96, 120}  # the last capped at 128 - 8
  assert sorted(r.line for _, _, rs in batches for r in rs) == list(range(200))
  for _, P_b, rs in batches:
    prompt, pad = batch_lib.pack(rs, 8, P_b, fill=0)
    assert prompt.shape == (8, P_b)
    for i, r in enumerate(rs):
      assert tuple(prompt[i, pad[i]:]) == r.ids and not prompt[i, :pad[i]].any()


def test_writer_resumes_a_torn_file_with_a_fake_sampler(tmp_path):
  rows = [{'id': i, 'prompt_ids': list(range(1, i + 2))} for i in range(9)]
  inp, out = _write(tmp_path / 'in.jsonl', rows), str(tmp_path / 'out.jsonl')
  kw = dict(sample_fn=_echo, encode=lambda text, ids: list(ids), decode=str, samplers=('ar',),
            defaults=dict(max_new_tokens=3, temperature=1.0, top_k=0, top_p=1.0, sampler='ar'),
            context=16, rows=4, bucket=4, fill=0, progress=False, log=open(os.devnull, 'w'))
  assert batch_lib.run(inp, out, **kw)['results'] == 9
  recs = _records(out)
  assert all(r['tokens'] == np.resize(r['prompt'][::-1], 3).tolist() for r in recs)
  with open(out, 'rb') as f:
    data = f.read()
  with open(out, 'wb') as f:
    f.write(data[:-7])  # torn inside the last record
  stats = batch_lib.run(inp, out, **kw)
  assert (stats['results'], stats['skipped']) == (1, 8)
  assert sorted(r['id'] for r in _records(out)) == list(range(9))
