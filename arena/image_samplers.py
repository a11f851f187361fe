"""Image generators measured side by side: images/s, NFE, classifier FD and recognition accuracy.

One code path for the arena's `images` experiment and `benchmarks/image_samplers.py` (a thin
CLI over these functions):

    contestants = [Contestant(name, config, model, params, settings(config, model, ...)), ...]
    result = measure(contestants, num=256, cfg=3.0, seed=0, repeats=2)
    result.rows        # one dict per (contestant, setting), in order
    result.samples     # [num, H, W, C] per row (keep_samples=True)

Settings per paradigm (`settings`):
  image_diffusion  every sampler x every step count N (NFE = N; heun 2N - 1). Shortcut runs
                   (step-conditioned) take Euler at the power-of-two N only (1, 2, 4, ...).
  next_scale       one setting: K scales, NFE = K (VAR's ramped guidance, top-k).
  hybrid           HART: the K transformer passes plus the residual head's solver over each
                   head step count (NFE counts the K transformer passes; the head is an MLP,
                   its passes are reported as head_steps).
  Token paradigms also sweep top-k (0 = the full distribution, 1 = greedy), and every setting
  may carry its own guidance weight `cfg` (a sweep); a setting without one takes measure's.
Quality pass (`quality_pass`): for every setting, `num` class-conditional images for the labels
of `num` held-out glyphs (the first contestant's data fixes labels and reference images), the
same rng for all, the setting's guidance weight (1 = off; a guided call runs a 2 x num batch),
scored by the glyph judge (evaluators/glyph_judge.py):
  fd             Frechet distance of the judge's features, samples vs the held-out images (with a
                 few hundred images FD is biased upwards: compare rows of one run only);
  accuracy       exact-string recognition rate; char_accuracy the per-character rate;
  by_length      both rates split by string length n = 1 .. max_chars (`match_rates_by_length`).
Timing pass (`timing_pass`): `repeats` rounds over all settings (or those `timed` picks) after
the untimed (compiling) quality call, in alternating order so machine noise falls on all of
them; images_per_s is num / the median seconds of a call.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from typing import Any, Callable, Sequence

DATA_KEYS = ('source', 'image_size', 'channels', 'alphabet', 'max_chars', 'jitter', 'stroke',
             'path')


def data_key(d) -> dict:
  """The data fields that change the images (not the batch or the tokenizer)."""
  return {k: d[k] for k in DATA_KEYS if k in d}


def settings(config, model, *, samplers: Sequence[str] = ('euler',), steps: Sequence[int] = (4,),
             head_steps: Sequence[int] = (8,), top_k: int | Sequence[int] = 0,
             cfg: Sequence[float] = ()) -> list[dict]:
  """The generator options to measure for one run (see the module doc). ``top_k`` may be a
  sweep for the token paradigms (0 = the full distribution, 1 = greedy); ``cfg`` a sweep of
  guidance weights carried by each setting (empty: every row takes `measure`'s one ``cfg``)."""
  ks = (top_k,) if isinstance(top_k, int) else tuple(top_k)
  if config.paradigm == 'image_diffusion':
    if model.cfg.step_conditioning:  # shortcut: Euler at the trained power-of-two step sizes
      top = 2 ** model.cfg.max_step_index
      rows = [dict(sampler='euler', steps=n) for n in steps if n & (n - 1) == 0 and n <= top]
    else:
      rows = [dict(sampler=s, steps=n) for s in samplers for n in steps]
  elif config.paradigm in ('next_scale', 'raster_ar'):
    rows = [dict(top_k=k) for k in ks]
  elif config.paradigm == 'hybrid':
    rows = [dict(top_k=k, head_steps=n) for k in ks for n in head_steps]
  elif config.paradigm == 'maskgit':
    rows = [dict(top_k=k, steps=n) for k in ks for n in steps]
  elif config.paradigm == 'transfusion':
    rows = [dict(sampler='euler', steps=n) for n in steps]
  else:
    raise ValueError(f'{config.paradigm!r} runs are not image generators; give runs of '
                     "'image_diffusion', 'next_scale', 'hybrid', 'raster_ar', 'maskgit' or "
                     "'transfusion'")
  return [dict(row, cfg=float(w)) for w in cfg for row in rows] if cfg else rows


def describe(row: dict) -> str:
  """A setting in words: 'euler x 4', 'K scales', 'head 8 steps' (+ top-k, + the guidance
  weight when the setting carries its own)."""
  w = f', w={row["cfg"]:g}' if 'cfg' in row else ''
  if 'sampler' in row:
    return f'{row["sampler"]} x {row["steps"]}{w}'
  k = (', greedy' if row['top_k'] == 1 else f', top-k {row["top_k"]}') if row.get('top_k') else ''
  if row.get('paradigm') == 'maskgit':
    return f'{row["steps"]} steps{k}{w}'
  if row.get('paradigm') == 'raster_ar':
    return f'{row["nfe"]} codes{k}{w}'
  if 'head_steps' in row:
    return f'{row["nfe"]} scales + head {row["head_steps"]} steps{k}{w}'
  return f'{row["nfe"]} scales{k}{w}'


@dataclasses.dataclass
class Contestant:
  """A trained image run and the generator options to measure it with."""
  name: str
  config: Any  # ml_collections.ConfigDict of the run
  model: Any
  params: Any  # EMA params when the run kept them (train.checkpoint.load_run)
  settings: list[dict]
  tokenizer: Any = None  # (vq_model, vq_params) of a VAR / HART run (train.checkpoint.load_tokenizer)


@dataclasses.dataclass
class Measured:
  rows: list[dict]  # one per (contestant, setting): name, paradigm, options, nfe, metrics, speed
  reference: dict  # {'image': [num, H, W, C], 'label': int32 [num, max_chars]} held out
  judge: Any  # the glyph judge (evaluators.glyph_judge.Judge)
  samples: list  # float32 [num, H, W, C] in [-1, 1] per row (empty unless keep_samples)


def log_stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def load_judge(config, steps: int = 0):
  """The glyph judge for `config.data` (trained once and cached; `steps` 0 = its default)."""
  from evaluators import images
  return images.load_judge(config, steps)


def score(judge, x, labels, reference_images) -> dict:
  """evaluators.images.score_samples: {'fd', 'accuracy', 'char_accuracy', 'by_length'}."""
  from evaluators import images
  return images.score_samples(judge, x, labels, reference_images)


def quality_pass(contestants: Sequence[Contestant], *, ref: dict, judge, num: int, cfg: float,
                 rng, keep_samples: bool = False,
                 log: Callable[[str], None] = log_stderr) -> tuple[list, list, list]:
  """Generate and score every setting once (this call also compiles it). Returns (rows,
  calls: a zero-argument function per row that reruns its generation, samples per row)."""
  import jax
  from evaluators import images
  rows, calls, samples = [], [], []
  data0 = data_key(contestants[0].config.data)
  for c in contestants:
    if data_key(c.config.data) != data0:
      log(f'warning: {c.name} trained on other data than {contestants[0].name} '
          f'({data_key(c.config.data)} vs {data0}); it is scored against the first run\'s')
    n_params = int(sum(v.size for v in jax.tree.leaves(c.params)))
    for opts in c.settings:
      call = lambda c=c, o=opts: images.generate(c.config, c.model, c.params, rng, num=num,
                                                 labels=ref['label'], tokenizer=c.tokenizer,
                                                 **{'cfg': cfg, **o})
      t0 = time.perf_counter()
      x, nfe = call()
      row = {'name': c.name, 'paradigm': c.config.paradigm, 'cfg': cfg, **opts, 'nfe': nfe,
             'params': n_params, 'compile_s': time.perf_counter() - t0,
             **score(judge, x, ref['label'], ref['image'])}
      rows.append(row)
      calls.append(call)
      samples.append(x if keep_samples else None)
      log(f'{c.name} {opts} NFE={nfe:3d}  fd={row["fd"]:8.3f}  acc={row["accuracy"]:.3f}  '
          f'char={row["char_accuracy"]:.3f}')
  return rows, calls, (samples if keep_samples else [])


def timing_pass(calls: Sequence[Callable], repeats: int) -> list[float]:
  """Median wall seconds of each call over `repeats` interleaved rounds (even rounds in order,
  odd rounds reversed), each result blocked on. Calls must have run once (compiled)."""
  import jax
  if repeats < 1:
    raise ValueError(f'repeats={repeats} must be >= 1 (or skip timing)')
  times = [[] for _ in calls]
  order = list(range(len(calls)))
  for r in range(repeats):
    for k in (order if r % 2 == 0 else order[::-1]):
      t0 = time.perf_counter()
      jax.block_until_ready(calls[k]()[0])
      times[k].append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def batch_calls(pairs: Sequence[tuple], *, ref: dict, cfg: float, rng,
                batch: int) -> list[Callable]:
  """One call per (contestant, setting) pair, drawing `batch` images for the first `batch`
  reference labels (compiled by a first untimed call each)."""
  import jax
  from evaluators import images
  calls = []
  for c, opts in pairs:
    call = lambda c=c, o=opts: images.generate(c.config, c.model, c.params, rng, num=batch,
                                               labels=ref['label'][:batch],
                                               tokenizer=c.tokenizer, **{'cfg': cfg, **o})
    jax.block_until_ready(call()[0])
    calls.append(call)
  return calls


def measure(contestants: Sequence[Contestant], *, num: int, cfg: float = 1.0, seed: int = 0,
            repeats: int = 2, judge_steps: int = 0, quality_only: bool = False,
            keep_samples: bool = False, timing_batches: Sequence[int] = (),
            timed: Callable[[list[dict]], Sequence[int]] | None = None,
            log: Callable[[str], None] = log_stderr) -> Measured:
  """The quality pass, then (unless quality_only) the timing pass, over all contestants with
  one rng, one judge and one reference set (the first contestant's held-out glyphs). The timing
  pass times the quality calls (`num` images: 'images_per_s'), or with `timing_batches` calls
  of each of those batch sizes ('images_per_s_b<B>', and 'images_per_s' = the largest B's).
  `timed(rows)` picks the rows to time at `timing_batches` (default: all): every timed setting
  compiles once per batch size, which dominates a CPU run of a wide sweep."""
  import jax
  from evaluators import images
  if not contestants:
    raise ValueError('measure needs at least one contestant')
  first = contestants[0].config
  ref = images.reference(first, num)
  judge = load_judge(first, judge_steps)
  rows, calls, samples = quality_pass(contestants, ref=ref, judge=judge, num=num, cfg=cfg,
                                      rng=jax.random.key(seed), keep_samples=keep_samples, log=log)
  if not quality_only and not timing_batches:
    for row, med in zip(rows, timing_pass(calls, repeats)):
      row.update(median_seconds=med, images_per_s=num / med)
  pairs = [(c, opts) for c in contestants for opts in c.settings]  # in row order
  keep = list(range(len(rows))) if timed is None else sorted(set(timed(rows)))
  for b in ([] if quality_only else sorted(timing_batches)):
    log(f'timing {len(keep)} of {len(rows)} settings at batch {b}')
    bcalls = batch_calls([pairs[i] for i in keep], ref=ref, cfg=cfg, rng=jax.random.key(seed),
                         batch=b)
    for i, med in zip(keep, timing_pass(bcalls, repeats)):
      rows[i].update({f'images_per_s_b{b}': b / med, 'images_per_s': b / med})
  return Measured(rows=rows, reference=ref, judge=judge, samples=samples)
