"""Batch sampling from a JSONL file, shaped like a server's offline queue:

    python -m sample --workdir RUN --batch prompts.jsonl --out results.jsonl [--num 8 --bucket 32]

Input: one JSON object per line, {"id": "a", "prompt": "def "} (or "prompt_ids": [1, 2, 3] for
token-array runs), with optional per-line "max_new_tokens", "temperature", "top_k", "top_p" and
"sampler" ('ar' for an autoregressive run; a masked-diffusion strategy: 'ancestral', 'remdm',
'topk', 'threshold', 'semi_ar', 'block'); a line without them takes the command line's flags.
Blank lines are skipped. An id is a JSON string or integer, unique in the file.

Output: one JSON object per prompt, {"id", "line", "prompt", "text", "tokens" (the generated ids,
prompt excluded, as `--json` prints them), "prompt_tokens", "sampler", "nfe", "tokens_per_s"
(its batch's)}, written and flushed as soon as its batch finishes, so the order may differ from
the input's. A line that cannot run (malformed JSON, a missing or repeated id, an empty prompt,
prompt + max_new_tokens past the context, an unknown field or sampler, a bad option value) gets
{"id", "line", "error": "line N: ..."} instead (id null when the line has none of its own, or
repeats an earlier line's), the same message goes to stderr, and the rest of the file runs. The
exit status stays 0; the last stderr line counts the results and errors.

Resume: rerunning the command skips every line whose id the output already holds, results and
errors alike (id-less error records by their line number); delete an error record to retry it.
A torn last line (the process killed mid-write) is cut off first, so its prompt runs again and
appears once.

Shapes: pending prompts are grouped by their options, then by length: a prompt of P tokens
runs in a [--num, P_b] batch, P_b = min(ceil(P / bucket) * bucket, context - max_new_tokens),
left-padded; a batch short of --num rows is filled with copies of its first row, dropped after.
Each jitted sampler so compiles once per (options, bucket), however many prompts there are.
Autoregressive rows pass their pad counts to `sample.autoregressive.generate(pad=...)`, which
masks the pad slots and starts each row's positions at 0: a padded row decodes exactly as it
would alone (greedy: the single-prompt CLI's tokens). Masked-diffusion rows are left-padded with
the tokenizer's EOS (document break) id, which the bidirectional network does see: an
approximation, like the whole-block padding of block diffusion in the single-prompt CLI.

Context: prompt tokens + max_new_tokens must fit config.model.max_len (the model's context: the
KV cache length of our runs, a Hugging Face folder's position limit); a longer request is an
error record, never truncated. A line's max_new_tokens is its own, else --max-new-tokens when
given, else up to 256 as the context allows after the prompt's bucket (so a short-context model
runs with the default flags). Randomness: a batch draws with fold_in(key(--seed), crc32 of its
ids), so it is reproducible given its members (a row's draws at temperature > 0 depend on which
prompts share its batch; greedy rows do not).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from typing import Any, Callable

import numpy as np

OPTIONS = ('max_new_tokens', 'temperature', 'top_k', 'top_p', 'sampler')
FIELDS = ('id', 'prompt', 'prompt_ids') + OPTIONS
EXAMPLE = '{"id": "a", "prompt": "def "}'


@dataclasses.dataclass(frozen=True)
class Request:
  """One runnable input line."""
  line: int  # 1-based line number in the input file
  id: Any  # its "id": a JSON string or integer
  prompt: Any  # its "prompt" (str) or "prompt_ids" (list), echoed in the result
  ids: tuple  # [P] prompt token ids
  opts: tuple  # ((name, value), ...) over OPTIONS, sorted: the batch-grouping key


class LineError(ValueError):
  """An input line that cannot run; `id` is the line's own id (None when it has none)."""

  def __init__(self, message: str, id_=None):
    super().__init__(message)
    self.id = id_


def _done_key(id_, line: int):
  """What resume matches: the id (as JSON, so 1 and "1" differ), else the line number."""
  return ('id', json.dumps(id_)) if id_ is not None else ('line', line)


def _option(name: str, value, default):
  """A per-line option checked like its command-line flag; raises ValueError saying what to give."""
  if value is None:
    return default
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if name in ('max_new_tokens', 'top_k'):
    low = 1 if name == 'max_new_tokens' else 0
    if not (number and float(value).is_integer() and value >= low):
      raise ValueError(f'"{name}" {value!r}: give an integer >= {low}')
    return int(value)
  if name == 'temperature' and not (number and value >= 0):
    raise ValueError(f'"temperature" {value!r}: give a number >= 0 (0 = greedy)')
  if name == 'top_p' and not (number and 0 < value <= 1):
    raise ValueError(f'"top_p" {value!r}: give a number in (0, 1] (1 = off)')
  if name == 'sampler' and not isinstance(value, str):
    raise ValueError(f'"sampler" {value!r}: give a sampler name as a string')
  return float(value) if name in ('temperature', 'top_p') else value


def bucket_length(P: int, bucket: int, context: int, max_new_tokens: int) -> int:
  """P_b: prompt length P rounded up to a multiple of `bucket`, capped at context - N."""
  return min(-(-P // bucket) * bucket, context - max_new_tokens)


def parse_line(n: int, text: str, *, encode: Callable, defaults: dict, samplers: tuple,
               context: int, seen: dict, bucket: int = 1, fit_default: bool = False) -> Request:
  """Input line `n` as a Request, or LineError naming the line. `encode(text, ids) -> list[int]`
  makes the prompt's ids (raising ValueError for ids it cannot take); `defaults` holds every
  OPTIONS value from the flags; `samplers` the names this run takes; `seen` maps the ids of
  earlier lines to their line numbers (this line's id is added). fit_default: a line without
  "max_new_tokens" takes min(the default, what the context leaves after its bucket)."""
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as err:
    raise LineError(f'line {n}: not valid JSON ({err.msg} at column {err.colno}); write one '
                    f'object per line, e.g. {EXAMPLE}') from None
  if not isinstance(obj, dict):
    raise LineError(f'line {n}: a JSON {type(obj).__name__}, not an object; write {EXAMPLE}')
  id_ = obj.get('id')
  if id_ is None or isinstance(id_, bool) or not isinstance(id_, (str, int)):
    what = 'no "id"' if id_ is None else f'"id" {id_!r} is not a string or an integer'
    raise LineError(f'line {n}: {what}; give each prompt its own id, e.g. {EXAMPLE}')
  if id_ in seen:
    raise LineError(f'line {n}: id {id_!r} repeats line {seen[id_]}\'s; give each prompt its own '
                    'id (this line did not run)')
  seen[id_] = n

  def fail(msg):
    return LineError(f'line {n}: {msg}', id_)

  unknown = sorted(set(obj) - set(FIELDS))
  if unknown:
    raise fail(f'unknown field{"s" * (len(unknown) > 1)} {", ".join(map(repr, unknown))}; a line '
               f'takes {", ".join(FIELDS)}')
  if ('prompt' in obj) == ('prompt_ids' in obj):
    raise fail('give exactly one of "prompt" (text) and "prompt_ids" (a list of token ids)')
  prompt = obj.get('prompt', obj.get('prompt_ids'))
  if 'prompt' in obj and not isinstance(prompt, str):
    raise fail(f'"prompt" {prompt!r} is not a string; token ids go in "prompt_ids"')
  if 'prompt_ids' in obj and not (isinstance(prompt, list) and all(
      isinstance(i, int) and not isinstance(i, bool) for i in prompt)):
    raise fail(f'"prompt_ids" {prompt!r}: give a list of integer token ids')
  if not prompt:
    raise fail('empty prompt; give at least one character (or token id) to continue')
  try:
    opts = {k: _option(k, obj.get(k), defaults[k]) for k in OPTIONS}
    if opts['sampler'] not in samplers:
      raise ValueError(f'unknown sampler {opts["sampler"]!r}; this run takes '
                       f'{", ".join(map(repr, samplers))}')
    ids = encode(prompt, None) if isinstance(prompt, str) else encode(None, prompt)
  except ValueError as err:
    raise fail(' '.join(str(err).split())) from None
  if fit_default and 'max_new_tokens' not in obj:
    if len(ids) >= context:
      raise fail(f'{len(ids)} prompt tokens leave no room in the model\'s context of {context} '
                 'tokens (model.max_len); shorten the prompt')
    P_b = bucket_length(len(ids), bucket, context, 1)
    opts['max_new_tokens'] = min(opts['max_new_tokens'], context - P_b)
  total = len(ids) + opts['max_new_tokens']
  if total > context:
    raise fail(f'{len(ids)} prompt tokens + max_new_tokens {opts["max_new_tokens"]} = {total} '
               f'exceed the model\'s context of {context} tokens (model.max_len); shorten the '
               'prompt or lower "max_new_tokens"')
  return Request(n, id_, prompt, tuple(int(i) for i in ids), tuple(sorted(opts.items())))


def resume(path: str, log=None) -> set:
  """The done keys of the records `path` already holds (empty if it does not exist). A torn
  last line (no newline: the writer was killed mid-line) is cut off the file first."""
  if not os.path.exists(path):
    return set()
  with open(path, 'rb') as f:
    data = f.read()
  end = data.rfind(b'\n') + 1
  if end < len(data):
    with open(path, 'r+b') as f:
      f.truncate(end)
    print(f'warning: {path}: dropped a torn last line ({len(data) - end} bytes, an interrupted '
          'write); its prompt runs again', file=log or sys.stderr)
  done = set()
  for k, raw in enumerate(data[:end].splitlines(), 1):
    if not raw.strip():
      continue
    try:
      rec = json.loads(raw)
      done.add(_done_key(rec['id'], rec.get('line')))
    except (ValueError, KeyError, TypeError):
      raise ValueError(f'--out {path}: line {k} is not a record of this command ({raw[:60]!r}); '
                       'fix or delete that line, or choose another --out') from None
  return done


def plan(requests: list, rows: int, bucket: int, context: int) -> list:
  """Batches (opts, P_b, requests <= rows) grouped by options, then by length bucket P_b =
  min(ceil(P / bucket) * bucket, context - max_new_tokens); groups in order of first
  appearance."""
  groups = {}
  for r in requests:
    P_b = bucket_length(len(r.ids), bucket, context, dict(r.opts)['max_new_tokens'])
    groups.setdefault((r.opts, P_b), []).append(r)
  return [(opts, P_b, rs[i:i + rows]) for (opts, P_b), rs in groups.items()
          for i in range(0, len(rs), rows)]


def pack(requests: list, rows: int, P_b: int, fill: int):
  """Left-padded prompt [rows, P_b] int32 and pad [rows] int32 (pad slots per row); rows past
  len(requests) copy the first request (dropped after sampling)."""
  prompt = np.full((rows, P_b), fill, np.int32)
  pad = np.zeros((rows,), np.int32)
  for i in range(rows):
    ids = requests[i if i < len(requests) else 0].ids
    pad[i] = P_b - len(ids)
    prompt[i, pad[i]:] = ids
  return prompt, pad


def new_tokens(out, P: int) -> list:
  """Each row's generated ids, out.tokens[b, P:lengths[b]] (to the end without `lengths`)."""
  import jax
  tokens = np.asarray(jax.device_get(out.tokens))
  lengths = getattr(out, 'lengths', None)
  lengths = np.full(len(tokens), tokens.shape[1]) if lengths is None else jax.device_get(lengths)
  return [[int(x) for x in tokens[b, P:lengths[b]]] for b in range(len(tokens))]


def _batch_rng(seed: int, requests: list):
  import jax
  tag = zlib.crc32(' '.join(json.dumps(r.id) for r in requests).encode()) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.key(seed), tag)


def run(batch_path: str, out_path: str, *, sample_fn: Callable, encode: Callable,
        decode: Callable, defaults: dict, samplers: tuple, context: int, rows: int, bucket: int,
        fill: int, seed: int = 0, seq_len: int | None = None, fit_default: bool = False,
        progress: bool = True, log=None) -> dict:
  """Sample every pending line of `batch_path` into `out_path` (module doc). `sample_fn(opts,
  prompt [rows, P_b], pad [rows], rng) -> (out, P)` runs one batch (out.tokens [rows, T],
  generation from slot P on); `decode(ids) -> str`; fit_default: parse_line's. Returns counts:
  results, errors, skipped (already in the output), batches, new_tokens, seconds."""
  from tqdm.auto import tqdm
  log = log or sys.stderr
  if not os.path.isfile(batch_path):
    raise FileNotFoundError(f'--batch {batch_path}: no such file; give a JSONL file of '
                            f'{EXAMPLE} lines')
  done = resume(out_path, log)
  requests, errors, seen, skipped = [], [], {}, 0
  with open(batch_path, encoding='utf-8', errors='replace') as f:
    for n, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        r = parse_line(n, text, encode=encode, defaults=defaults, samplers=samplers,
                       context=context, seen=seen, bucket=bucket, fit_default=fit_default)
      except LineError as err:
        if _done_key(err.id, n) in done:
          skipped += 1
        else:
          errors.append({'id': err.id, 'line': n, 'error': str(err)})
        continue
      if _done_key(r.id, n) in done:
        skipped += 1
      else:
        requests.append(r)
  with open(out_path, 'a', encoding='utf-8') as out_file:
    for rec in errors:
      print(f'error: {rec["error"]}', file=log)
      out_file.write(json.dumps(rec, ensure_ascii=False) + '\n')
    out_file.flush()
    long = [r for r in requests
            if seq_len and len(r.ids) + dict(r.opts)['max_new_tokens'] > seq_len]
    if long:
      print(f'warning: {len(long)} prompts (first: line {long[0].line}) run past the {seq_len}-'
            'token windows this model was trained on (data.seq_len); expect worse samples '
            'beyond them', file=log)
    batches = plan(requests, rows, bucket, context)
    stats = dict(results=0, errors=len(errors), skipped=skipped, batches=len(batches),
                 new_tokens=0, seconds=0.0)
    shapes = set()
    bar = tqdm(total=len(requests), unit='prompt', file=log, disable=not progress,
               dynamic_ncols=True)
    for k, (opts, P_b, reqs) in enumerate(batches, 1):
      prompt, pad = pack(reqs, rows, P_b, fill)
      t0 = time.perf_counter()
      out, P = sample_fn(dict(opts), prompt, pad, _batch_rng(seed, reqs))
      gen = new_tokens(out, P)[:len(reqs)]
      dt = time.perf_counter() - t0
      n_tok = sum(map(len, gen))
      tps = n_tok / max(dt, 1e-9)
      o = dict(opts)
      for r, ids in zip(reqs, gen):
        out_file.write(json.dumps({
            'id': r.id, 'line': r.line, 'prompt': r.prompt, 'text': decode(ids), 'tokens': ids,
            'prompt_tokens': len(r.ids), 'sampler': o['sampler'], 'nfe': int(out.nfe),
            'tokens_per_s': round(tps, 1)}, ensure_ascii=False) + '\n')
      out_file.flush()
      first = (opts, P_b) not in shapes
      shapes.add((opts, P_b))
      stats['results'] += len(reqs)
      stats['new_tokens'] += n_tok
      stats['seconds'] += dt
      bar.write(f'batch {k}/{len(batches)}: {len(reqs)} prompts in a [{rows}, {P_b}] bucket, '
                f'{o["sampler"]} max_new_tokens={o["max_new_tokens"]}: {n_tok} tokens in '
                f'{dt:.2f}s = {tps:.1f} tokens/s, {int(out.nfe)} NFE'
                + (' (compiling included)' if first else ''), file=log)
      bar.update(len(reqs))
    bar.close()
  print(f'{out_path}: {stats["results"]} results and {stats["errors"]} errors written, '
        f'{skipped} lines already there; {stats["new_tokens"]} tokens in {stats["batches"]} '
        f'batches, {stats["seconds"]:.2f}s ({len(shapes)} batch shapes)', file=log)
  return stats
