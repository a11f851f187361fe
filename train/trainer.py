"""The paradigm-agnostic training loop.

    state = init or restore(workdir)          # params created sharded; resume is automatic
    for step in range(start, steps):
        state, metrics = train_step(state, next(batches), rng)   # one jitted, donated step
        log / evaluate / checkpoint on their intervals

A resumed run restores the train state and the grain iterator position, so on CPU it is
bit-identical to an unbroken one. SIGTERM or Ctrl-C saves a checkpoint at the current step and
exits cleanly. A non-finite loss stops the run, naming the step and the last good checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np

import paradigms
from evaluators.images import judge_metrics
from evaluators.likelihood import summarize
from pipelines.sources import open_data
from train import config as config_lib
from train.checkpoint import (Checkpointer, load_tokenizer, save_text_tokenizer, source_params,
                              warm_start)
from train.cli import writable_dir
from train.hf import HF_PREFIX, apply_init_from_hf
from train.metrics import MetricsWriter, progress_bar
from train.state import Setup, device_batch, make_mesh, setup


class NonFiniteLoss(FloatingPointError):
  pass


def train(config, workdir: str, *, devices=None) -> dict:
  """Train (or resume) the run in `workdir`. Returns the last logged train and eval metrics."""
  if config.train.init_from.startswith(HF_PREFIX):  # the architecture becomes the folder's
    apply_init_from_hf(config)
  config_lib.validate(config)
  paradigm = paradigms.get(config.paradigm)
  workdir = writable_dir(workdir)  # before any compilation: an unwritable workdir fails now
  t, d = config.train, config.data
  _check_saved_config(config, workdir)
  judge = _judge_name(config)
  watch = DivergenceWatch()

  mesh = make_mesh(config.mesh.shape, devices)
  s = setup(config, paradigm, mesh)
  tokenizer = load_tokenizer(config)  # (vq_model, vq_params) of data.tokenizer, or None
  data = open_data(d, tokenizer)
  _check_labels(config, data)
  pid, nproc = jax.process_index(), jax.process_count()
  iterator = iter(data.train_dataset(batch_size=d.batch_size, seed=d.seed, process_index=pid,
                                     process_count=nproc))
  evals = [{k: v[pid::nproc] for k, v in b.items()}
           for b in data.eval_batches(batch_size=d.batch_size, num_batches=t.eval_batches)]
  ckpt = Checkpointer(workdir, keep=t.keep, async_save=t.async_checkpoint)
  init_rng, rng = jax.random.split(jax.random.key(t.seed))
  if ckpt.latest_step() is not None:
    try:
      state, step = ckpt.restore(s.abstract_state.replace(base=None), iterator)
    except Exception:
      ckpt.close(wait=False)
      raise
    if config.lora.rank:  # the frozen base is never saved: rebuilt exactly as at the start
      state = state.replace(base=_initial_state(config, s, init_rng).base)
    _log(f'resumed from {ckpt.directory}/{step}')
  else:
    state, step = _initial_state(config, s, init_rng), 0
    if t.init_from:
      where = f' as {t.init_into!r}' if t.init_into else ''
      _log(f'started from the params of {t.init_from}{where}'
           + (f' (frozen; LoRA rank {config.lora.rank})' if config.lora.rank else ''))
  if pid == 0:
    config_lib.save(config, os.path.join(workdir, 'config.json'))
    save_text_tokenizer(data.text_tokenizer, workdir)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  trained = ''
  if config.lora.rank:
    n_base = sum(x.size for x in jax.tree.leaves(s.abstract_params))
    trained = f' trained (LoRA) on a frozen base of {n_base:,}'
  _log(f'{config.paradigm}: {n_params:,} params{trained} | mesh {dict(mesh.shape)} | '
       f'{data.description}')

  writer = MetricsWriter(workdir, resume_step=step)
  bar = progress_bar(t.steps, step, t.progress)
  stop = _StopSignal()
  items_per_step = d.batch_size * data.items_per_example  # tokens (or images) per step
  pending, last, saved = [], {}, step
  tic, tic_step = None, step
  try:
    while step < t.steps and not stop.requested:
      if t.stop_at and step >= t.stop_at:
        break
      batch = device_batch(next(iterator), s.batch_sharding)
      state, metrics = s.train_step(state, batch, rng)
      step += 1
      pending.append((step, metrics))
      if tic is None:  # start the clock after the first (compiling) step
        jax.block_until_ready(metrics)
        tic, tic_step = time.perf_counter(), step
      finished = step == t.steps or step == t.stop_at  # evaluated and judged
      at_end = finished or stop.requested  # logged and saved (a signal: no evaluation, exit fast)
      if step % t.log_every == 0 or step % t.ckpt_every == 0 or at_end:
        rows = jax.device_get([m for _, m in pending])  # waits for the interval's steps
        toc = time.perf_counter()
        rate = items_per_step * (step - tic_step) / max(toc - tic, 1e-9)
        last = _flush(pending, rows, writer, ckpt, rate if step > tic_step else None, data.unit,
                      watch)
        pending, tic, tic_step = [], toc, step
        bar.set_postfix({'loss': f"{last['loss']:.4f}", f'{data.unit[:3]}_s': f'{rate:,.0f}'},
                        refresh=False)
      if step % t.ckpt_every == 0 or at_end:  # first: a failing evaluation costs no checkpoint
        _save(ckpt, step, state, iterator)
        saved = step
      if step % t.eval_every == 0 or finished:
        last.update(_evaluate(s, state, evals, data.bytes_per_token, rng))
        writer.write(step, {k: v for k, v in last.items() if k.startswith('eval_')})
        _say(bar, f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in last.items()
                                               if k.startswith('eval_')))
      j = config.judge
      if judge and (finished or (j.every and step % j.every == 0)):
        try:
          judged = _judge(config, s, state, rng, tokenizer)
        except Exception as err:  # noqa: BLE001 - reported; training and its checkpoints go on
          _say(bar, f'warning: judge {judge!r} failed at step {step} ({type(err).__name__}: '
                    f'{str(err)[:300]}); training goes on without it (set judge.name=\'\' to '
                    'turn it off)')
          judge = ''
          judged = {}
        if judged:
          last.update(judged)
          writer.write(step, judged)
          _say(bar, f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in judged.items()))
      if step % t.eval_every == 0 or step % t.ckpt_every == 0 or (j.every and step % j.every == 0):
        tic = time.perf_counter()  # keep evaluation and checkpoint time out of the throughput
      bar.update(step - bar.n)
    if stop.requested and saved != step:  # the signal came after this step's checkpoint check
      _save(ckpt, step, state, iterator)
  finally:
    bar.close()
    ckpt.close(wait=not ckpt.failed)
    writer.close()
    stop.restore()
  if stop.requested:
    _log(f'stopped by signal at step {step}; checkpoint saved, rerun the same command to resume')
  return last


def _initial_state(config, s: Setup, init_rng):
  """The state a fresh run starts from: the seeded init, with train.init_from's params grafted
  in (or, with LoRA, as the frozen base)."""
  t = config.train
  state = s.init(init_rng)
  if not t.init_from:
    return state
  if config.lora.rank:
    return state.replace(base=s.make_base(source_params(t.init_from, s.abstract_params,
                                                        s.model.cfg)))
  state = warm_start(state, t.init_from, t.init_into, t.init_partial, s.model.cfg)
  return state if state.extra is None else state.replace(extra=s.make_extra(state.params))


def _flush(pending, rows, writer, ckpt, rate, unit: str, watch) -> dict:
  """Check the interval's fetched metrics `rows`: stop on a non-finite loss, write one mean row."""
  for (step, _), row in zip(pending, rows):
    if not np.isfinite(row['loss']):
      ckpt.wait()  # let an in-flight save land so the message names it
      good = ckpt.latest_step()
      where = f'step {good} in {ckpt.directory}' if good is not None else 'none (no checkpoint yet)'
      raise NonFiniteLoss(
          f'loss is {row["loss"]} at step {step}. Last good checkpoint: {where}. Lower train.lr, '
          f'check the data, or raise train.warmup_steps; rerunning resumes from that checkpoint.')
  mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[-1]}
  mean['lr'] = float(rows[-1]['lr'])
  watch(pending[-1][0], mean['loss'], mean['lr'])
  if rate is not None:
    mean[f'{unit}_per_s'] = rate
  writer.write(pending[-1][0], mean)
  return mean


def _save(ckpt, step: int, state, iterator) -> None:
  """Checkpoint `state` unless it holds a non-finite value (the last update wrecked the params
  even when the loss it logged was finite): then stop, naming the last finite checkpoint."""
  if not bool(_all_finite(state.replace(base=None))):  # a frozen LoRA base never changes
    ckpt.wait()
    good = ckpt.latest_step()
    where = f'step {good} in {ckpt.directory}' if good is not None else 'none (no checkpoint yet)'
    raise NonFiniteLoss(
        f'NaN/Inf in the parameters or optimiser state (not saved) at step {step}. Last good '
        f'checkpoint: {where}. Lower train.lr, check the data, or raise train.warmup_steps; '
        'rerunning resumes from that checkpoint.')
  ckpt.save(step, state.replace(base=None), iterator)  # a LoRA base is rebuilt, never saved


@jax.jit
def _all_finite(state):
  """Whether every float leaf of the train state is finite: [] bool."""
  leaves = [x for x in jax.tree.leaves(state) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
  return jax.numpy.all(jax.numpy.asarray([jax.numpy.isfinite(x).all() for x in leaves]))


class DivergenceWatch:
  """Warns once when the training loss climbs above `factor` x its first logged value: a run
  diverging without NaN (e.g. lr=30 reached 65,073 bits per byte and exited cleanly)."""

  def __init__(self, factor: float = 2.0):
    self.factor, self.first, self.warned = factor, None, False

  def __call__(self, step: int, loss: float, lr: float) -> None:
    if self.first is None:
      self.first = loss
    elif not self.warned and self.first > 0 and loss > self.factor * self.first:
      self.warned = True
      _log(f'warning: the training loss is {loss:.4g} at step {step}, {loss / self.first:.1f}x '
           f'its first logged value {self.first:.4g}: the run is diverging. Lower train.lr (now '
           f'{lr:.3g} at this step) or raise train.warmup_steps.')


def _judge_name(config) -> str:
  """config.judge.name, or '' with a note when the judge cannot read this run's data (the glyph
  judge reads only the procedural glyphs)."""
  name = config.judge.name
  if name == 'glyphs' and config.data.source != 'glyphs':
    _log(f"note: judge.name='glyphs' reads rendered glyphs only; data.source="
         f"{config.data.source!r} has none, so the sample-based judge is off (judge.name='' "
         'silences this)')
    return ''
  return name


def _evaluate(s: Setup, state, evals, bytes_per_token, rng) -> dict:
  """Held-out bits per token (and per byte for byte-level text), summed over fixed batches."""
  out = {}
  for name, ema in (('eval', False), ('eval_ema', True)):
    if (state.ema if ema else state.params) is None:
      continue
    params = s.model_params(state, ema)
    sums = {}
    for i, b in enumerate(evals):
      r = jax.device_get(s.eval_step(params, device_batch(b, s.batch_sharding),
                                     jax.random.fold_in(rng, 10_000 + i)))
      sums = {k: sums.get(k, 0.0) + float(v) for k, v in r.items()}
    out.update(summarize(sums, bytes_per_token, prefix=name + '_'))
  return out


def _judge(config, s: Setup, state, rng, tokenizer) -> dict:
  """config.judge's sample-based metrics of the EMA params (else the raw ones), 'judge_*'; a
  tokenizer's params are replicated on the run's mesh, beside the sharded params."""
  params = s.model_params(state, ema=state.ema is not None)
  if tokenizer is not None:
    replicated = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
    tokenizer = (tokenizer[0], jax.device_put(tokenizer[1], replicated))
  with jax.set_mesh(s.mesh):
    m = judge_metrics(config, s.model, params, jax.random.fold_in(rng, 20_000),
                      tokenizer=tokenizer)
  return {f'judge_{k}': float(v) for k, v in m.items()}


def _check_labels(config, data) -> None:
  """A label id past the model's embedding table would be clamped silently inside jit."""
  need, have = data.label_vocab, config.model.get('label_vocab')
  if need is not None and have is not None and config.model.get('label_len', 1) and need > have:
    raise ValueError(f'{data.description} has label ids up to {need - 1} but model.label_vocab='
                     f'{have}; set --config.model.label_vocab={need}.')


def _check_saved_config(config, workdir: str) -> None:
  """Refuse to resume a workdir whose saved model or paradigm differs from the config."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())
  for key in ('paradigm', 'model'):
    if saved.get(key) != now.get(key):
      raise ValueError(f'{workdir} holds a run with a different `{key}` ({saved.get(key)} vs '
                       f'{now.get(key)}); use a new --workdir or the saved config.')


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _say(bar, msg: str) -> None:
  """A line above the progress bar, from process 0 only (tqdm.write prints even when disabled)."""
  if jax.process_index() == 0:
    bar.write(msg)


class _StopSignal:
  """SIGTERM / SIGINT set a flag; the loop then checkpoints and exits at the next step."""

  def __init__(self):
    self.requested = False
    self._old = {}
    try:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
      self._old = {}

  def _handle(self, signum, frame):
    if self.requested:  # a second signal stops at once
      raise KeyboardInterrupt
    self.requested = True

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
