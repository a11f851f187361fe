"""Orbax checkpoints of the train state and the grain data-iterator position.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. `state` is the whole TrainState (params,
optimiser state, step, EMA); `data` is the grain iterator state, so a resumed run reads exactly
the batches an unbroken run would. Saves are asynchronous and the newest `keep` are kept.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with the two items this trainer saves."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    # directories made on the calling thread: a failure raises here, at once (made
    # asynchronously, a PermissionError left the saving thread waiting on a signal for minutes)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self.manager = ocp.CheckpointManager(self.directory, item_names=('state', 'data'),
                                         options=options)
    self.failed = False  # a save failed: close() must not wait on it

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    """Start saving `state` and the iterator position at `step` (returns before it is written).
    A save that cannot be written (no permission, a full disk) raises an OSError naming the
    directory and the newest complete checkpoint, which stays valid."""
    try:
      self.manager.wait_until_finished()  # the previous save's write errors surface here
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
    except OSError as err:
      self.failed = True
      good = [s for s in self.manager.all_steps() if s != step]
      kept = f'step {max(good)} is the newest complete one' if good else 'none is complete yet'
      raise OSError(err.errno, f'cannot write the checkpoint of step {step} in '
                    f'{self.directory} ({err.strerror or err}); {kept}. Free disk space or fix '
                    'the permissions, then rerun the same command to resume') from None

  def restore(self, abstract_state, data_iterator, step: int | None = None) -> tuple[Any, int]:
    """Restore into the shardings of `abstract_state` (which may come from another mesh than
    the one that saved: orbax reads each device's slice); sets `data_iterator`'s position in
    place. Without `step`, the newest checkpoint that reads back; the newer ones that did not
    (a truncated copy, a lost file) are moved aside to `broken-<step>` with a warning. When
    none reads back (e.g. the train state's structure changed), all stay and the newest's
    error is raised."""
    if step is not None:
      return self._restore(step, abstract_state, data_iterator), step
    failed = []  # (step, error) of newer checkpoints that did not read back
    for s in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = _attempt(self._restore, s, abstract_state, data_iterator)
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types here
        failed.append((s, e))
        continue
      for bad, e in failed:  # an older one reads: the newer ones are damaged, not the config
        aside = self._set_aside(bad)
        warnings.warn(f'checkpoint step {bad} in {self.directory} cannot be read '
                      f'({type(e).__name__}: {str(e)[:300]}); moved it to {aside} and resuming '
                      f'from step {s} instead', stacklevel=2)
      return state, s
    if failed:  # none reads (a changed config?): leave them all in place
      step, err = failed[0]
      raise ValueError(
          f'all {len(failed)} checkpoints in {self.directory} are unreadable (steps '
          f'{", ".join(str(s) for s, _ in failed)}; the newest, {step}: {type(err).__name__}: '
          f'{" ".join(str(err).split())[:200]}). If the config changed since they were written, '
          f'rerun with the saved one ({os.path.dirname(self.directory)}/config.json); otherwise '
          'move checkpoints/ aside or choose a new --workdir') from err
    raise FileNotFoundError(f'no checkpoint in {self.directory}')

  def _restore(self, step: int, abstract_state, data_iterator):
    return self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator))).state

  def _set_aside(self, step: int) -> str:
    """Rename a damaged step directory out of orbax's view (kept for inspection)."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f'broken-{step}')
    if jax.process_index() == 0 and os.path.exists(src):
      n = 1
      while os.path.exists(dst):
        dst, n = os.path.join(self.directory, f'broken-{step}.{n}'), n + 1
      os.rename(src, dst)
    if jax.process_count() > 1:  # every process sees the rename before orbax rescans
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'checkpoint-aside-{step}')
    self.manager.reload()
    return dst

  def restore_params(self, abstract_params, step: int | None = None, ema: bool = False):
    """Only the params (or EMA params) of a saved state, e.g. for sampling: those of `step`, or
    of the newest checkpoint that reads back (a newer unreadable one is skipped with a warning
    and left in place). Returns (params, step)."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}; train first (python -m train ...)')
    if step is not None and step not in steps:
      raise ValueError(f'--step {step}: no checkpoint of that step in {self.directory}; the saved '
                       f'steps are {sorted(steps)}')
    failed = []
    for s in ([step] if step is not None else steps):
      try:
        params = _attempt(self._restore_params, s, abstract_params, ema)
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types here
        failed.append((s, e))
        continue
      for bad, e in failed:
        warnings.warn(f'checkpoint step {bad} in {self.directory} cannot be read '
                      f'({type(e).__name__}: {" ".join(str(e).split())[:200]}); using step {s}',
                      stacklevel=2)
      return params, s
    bad, e = failed[0]
    raise ValueError(f'{"the checkpoint of step " + str(bad) if step is not None else "no checkpoint"}'
                     f' in {self.directory} reads back (steps {", ".join(str(s) for s, _ in failed)}'
                     f'; {type(e).__name__}: {" ".join(str(e).split())[:200]}); was it written by '
                     'another model (config.json changed)?') from e

  def _restore_params(self, step: int, abstract_params, ema: bool):
    key = 'ema' if ema else 'params'
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={key: abstract_params},
            restore_args={key: jax.tree.map(
                lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params)},
            partial_restore=True)))
    return restored.state[key]

  def wait(self) -> None:
    """Block until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self, wait: bool = True) -> None:
    """Wait for pending saves (unless a save already failed), then release the manager."""
    if wait:
      self.manager.wait_until_finished()
    self.manager.close()


def _attempt(fn, *args):
  """`fn(*args)` (an orbax restore). When it fails, tensorstore's callbacks of the abandoned read
  find orbax's event loop closed and report 'RuntimeError: Event loop is closed', a traceback
  each, through sys.unraisablehook (or sys.excepthook, via PyErr_Print), from tensorstore's
  threads and possibly before the failure reaches us, and asyncio logs its unretrieved
  deserialisation tasks ('Task exception was never retrieved'): noise, since the caller reports
  the failure. So both hooks and a filter on the 'asyncio' logger drop exactly those, installed
  before the restore starts (installed on failure they lose that race), and pass every other
  error on."""
  _drop_closed_loop_reports()
  return fn(*args)


def _closed_loop(exc) -> bool:
  return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)


class _AbandonedReadFilter(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' records of orbax's abandoned reads
  (async_deserialize tasks of a restore that already failed and was reported)."""

  def filter(self, record) -> bool:
    msg = record.getMessage()
    return not ('never retrieved' in msg and 'deserialize' in msg)


def _drop_closed_loop_reports() -> None:
  log = logging.getLogger('asyncio')
  if not any(isinstance(f, _AbandonedReadFilter) for f in log.filters):
    log.addFilter(_AbandonedReadFilter())
  if getattr(sys.unraisablehook, '__name__', '') != '_drop_unraisable':
    previous_unraisable = sys.unraisablehook

    def _drop_unraisable(unraisable):
      if not _closed_loop(unraisable.exc_value):
        previous_unraisable(unraisable)
    sys.unraisablehook = _drop_unraisable
  if getattr(sys.excepthook, '__name__', '') != '_drop_excepthook':
    previous_except = sys.excepthook

    def _drop_excepthook(kind, value, tb):
      if not _closed_loop(value):
        previous_except(kind, value, tb)
    sys.excepthook = _drop_excepthook


def load_run(workdir: str, step: int | None = None, ema: bool | None = None):
  """(config, model, params) of a trained run, on one device, for sampling or analysis.

  `ema=None` uses EMA params when the run kept them. Example (notebook):
      config, model, params = load_run('runs/ar_code')
  """
  import flax.linen as nn
  import paradigms
  from train import config as config_lib
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{workdir} is not a training run: ' + ('it has no config.json' if os.path.isdir(workdir)
                                                 else 'no such directory') +
        '; pass the --workdir given to `python -m train`')
  config = config_lib.load(path)
  paradigm = paradigms.get(config.paradigm)
  model = paradigm.build(config_lib.model_config(config))
  spec = paradigm.example_batch(1, config.data, model.cfg)
  batch = jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), spec)
  shapes = jax.eval_shape(lambda r: nn.meta.unbox(paradigm.init(model, r, batch))['params'],
                          jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)
  ema = config_lib.keeps_ema(config) if ema is None else ema
  lc = config.lora
  if lc.rank:  # the checkpoint holds the adapters; the base is rebuilt as the trainer built it
    from paradigms.nn import lora
    adapters = jax.eval_shape(lambda p: lora.init_adapters(p, lc.rank, jax.random.key(0),
                                                           lc.targets), shapes)
    full, abstract = abstract, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), adapters)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    params, _ = ckpt.restore_params(abstract, step, ema=ema)
  finally:
    ckpt.close()
  if lc.rank:
    params = lora.merge(lora.quantize_base(_base_params(config, paradigm, model, batch, full),
                                           lc.base_dtype, lc.targets),
                        params, alpha=lc.alpha, rank=lc.rank, shapes=full)
  return config, model, params


def _base_params(config, paradigm, model, batch, abstract):
  """A LoRA run's frozen base: train.init_from's params, else the seeded init (the trainer's
  `init_rng`)."""
  import flax.linen as nn
  if config.train.init_from:
    return source_params(config.train.init_from, abstract, model.cfg)
  init_rng = jax.random.split(jax.random.key(config.train.seed))[0]
  return nn.meta.unbox(paradigm.init(model, init_rng, batch))['params']


TOKENIZER_HELP = ('train one with `python -m train --config configs/vqvae_glyphs.py:small '
                  '--workdir runs/vqvae_glyphs` and pass --config.data.tokenizer=runs/vqvae_glyphs')


def tokenizer_spec(path: str) -> dict:
  """{'scales', 'latent_dim', 'codebook_size', 'image_size', 'channels', 'image_width'} of the
  VQ-VAE run in
  `path`, read from its saved config.json (no checkpoint is opened)."""
  if not path:
    raise ValueError('data.tokenizer is empty: next-scale prediction trains on the tokens of a '
                     f'multi-scale VQ-VAE; {TOKENIZER_HELP}')
  cfg_path = os.path.join(os.path.expanduser(path), 'config.json')
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'data.tokenizer={path!r} holds no trained VQ-VAE run ({cfg_path} '
                            f'is missing); {TOKENIZER_HELP}')
  with open(cfg_path) as f:
    saved = json.load(f)
  model = saved.get('model', {})
  if 'scales' not in model or 'latent_dim' not in model:
    raise ValueError(f'data.tokenizer={path!r} is a {saved.get("paradigm")!r} run, not a '
                     f'multi-scale VQ-VAE (no model.scales / model.latent_dim); {TOKENIZER_HELP}')
  return {'scales': tuple(int(s) for s in model['scales']), 'latent_dim': int(model['latent_dim']),
          'codebook_size': int(model['codebook_size']),
          'image_size': int(model.get('image_size', 0)), 'channels': int(model.get('channels', 0)),
          'image_width': int(model.get('image_width', 0))}


def load_tokenizer(config):
  """The VQ-VAE run that `config.data.tokenizer` names, as `(vq_model, vq_params)` on one
  device, checked against the config's model fields; None when the run needs no tokenizer
  (its paradigm is not `TOKENIZED` and data.tokenizer is empty). The samplers and the data
  pipeline take this pair as an argument (sample.next_scale.sample, pipelines.sources.open_data)."""
  import paradigms
  from paradigms.next_scale import check_tokenizer
  from train.config import model_config
  path = config.data.tokenizer
  tokenized = getattr(paradigms.get(config.paradigm), 'TOKENIZED', False)
  if not path and not tokenized:
    return None
  spec = tokenizer_spec(path)
  if tokenized:
    check_tokenizer(model_config(config), spec, f'data.tokenizer={path!r}')
  vq_config, vq_model, vq_params = load_run(os.path.expanduser(path))
  if vq_config.paradigm != 'vqvae':
    raise ValueError(f"data.tokenizer={path!r} is a {vq_config.paradigm!r} run; it must be a "
                     "'vqvae' run (configs/vqvae_glyphs.py)")
  return vq_model, vq_params


TOKENIZER_DIR = 'tokenizer'  # a run's subword tokenizer, saved by the trainer


def save_text_tokenizer(tokenizer, workdir: str) -> None:
  """Keep a subword tokenizer in the run (`workdir/tokenizer/`), so sampling and export reload
  the one the run trained with; the byte tokenizer needs nothing."""
  if hasattr(tokenizer, 'save'):
    tokenizer.save(os.path.join(workdir, TOKENIZER_DIR))


def load_text_tokenizer(config, workdir: str | None = None):
  """The text tokenizer of a run: the copy in `workdir/tokenizer/` when the trainer saved one,
  else the one `config.data.text_tokenizer` names (pipelines.subword.resolve_tokenizer)."""
  from pipelines import subword
  saved = os.path.join(workdir or '', TOKENIZER_DIR)
  if workdir and os.path.exists(os.path.join(saved, 'tokenizer.json')):
    return subword.load_tokenizer_folder(saved)
  return subword.resolve_tokenizer(config.data)


def graft(params, source, into: str = '', partial: bool = False):
  """``params`` with the subtree at module path ``into`` ('' = all of it, 'a/b' = params['a']['b'])
  replaced by ``source``, leaf for leaf: every name and shape must match (the error names the
  first that does not), except that with ``partial`` the leaves ``source`` lacks keep their
  value (e.g. the step-size table of a shortcut model started from a flow model). Each leaf
  takes the dtype and sharding of the one it replaces."""
  keys = [k for k in into.split('/') if k]
  node = params
  for depth, k in enumerate(keys):
    if not isinstance(node, dict) or k not in node:
      raise ValueError(f"train.init_into={into!r}: no module {'/'.join(keys[:depth + 1])!r} in "
                       f'the params; modules here: {sorted(node) if isinstance(node, dict) else []}')
    node = node[k]
  want = dict(jax.tree_util.tree_flatten_with_path(node)[0])
  got = dict(jax.tree_util.tree_flatten_with_path(source)[0])
  for path in sorted(set(want) | set(got), key=str):
    name = into + jax.tree_util.keystr(path)
    if path not in got and path in want and partial:
      continue
    if path not in got or path not in want:
      raise ValueError(f'train.init_from: {name} is in the {"new" if path in want else "trained"} '
                       'model only; the two models must have the same architecture there')
    if tuple(want[path].shape) != tuple(got[path].shape):
      raise ValueError(f'train.init_from: {name} has shape {tuple(got[path].shape)} in the trained '
                       f'run and {tuple(want[path].shape)} in the new model')

  def take(path, d):  # a fresh copy per call: the train step donates the params and the EMA,
    if path not in got:  # so the two must not share buffers
      return d
    return jax.device_put(jax.numpy.array(got[path], d.dtype, copy=True), d.sharding)
  new = jax.tree_util.tree_map_with_path(take, node)

  def put(tree, depth):
    if depth == len(keys):
      return new
    return {**tree, keys[depth]: put(tree[keys[depth]], depth + 1)}
  return put(params, 0)


def source_params(spec: str, abstract_params, model_cfg=None):
  """The params `train.init_from` names, in the shardings and dtypes of `abstract_params` (the
  model's): a trained run's workdir (its EMA params when kept) or 'hf:DIR', a Hugging Face
  folder read straight into those shardings (the model must already be its architecture,
  train.hf.apply_init_from_hf)."""
  if spec.startswith('hf:'):
    from train.hf import load_into
    return load_into(abstract_params, spec, model_cfg)
  _, _, source = load_run(spec)
  return source


def warm_start(state, workdir: str, into: str = '', partial: bool = False, model_cfg=None):
  """``state`` (a fresh TrainState) with the params ``source_params`` reads grafted at ``into``
  (``graft``), in both the params and the EMA; the optimiser state stays fresh. E.g. HART from
  a trained VAR: into='var'."""
  if workdir.startswith('hf:') and (into or partial):
    raise ValueError('train.init_into / train.init_partial do not apply to a Hugging Face '
                     'checkpoint (train.init_from=hf:DIR loads the whole model)')
  source = source_params(workdir, state.params, model_cfg)
  put = lambda tree: None if tree is None else graft(tree, source, into, partial)
  return state.replace(params=put(state.params), ema=put(state.ema))
