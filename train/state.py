"""Mesh, sharding rules, the train state, the optimiser and the jitted train step.

Params are created already sharded: `jax.eval_shape(init)` gives the boxed abstract state whose
logical axis names the rules turn into `NamedSharding`s; `jax.jit(init, out_shardings=...)`
then materialises each shard on its device. The train step is one `jax.jit` with explicit in/out
shardings and the state donated.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from paradigms.nn import lora
from train.config import MESH_AXES, ema_beta, keeps_ema, model_config


@struct.dataclass
class TrainState:
  step: jax.Array  # [] int32 optimiser steps taken
  params: Any  # float32 param tree
  opt_state: Any
  ema: Any = None  # EMA of params, or None when train.ema_decay == 0
  extra: Any = None  # the paradigm's untrained state (`init_extra`), e.g. VQ code usage
  base: Any = None  # LoRA: the frozen base params (quantised with lora.base_dtype); `params` are
  #                   then the adapters. Never checkpointed: rebuilt from init or train.init_from


def make_mesh(shape, devices=None) -> jax.sharding.Mesh:
  """An Auto-typed ('data', 'fsdp', 'tensor') mesh; one -1 entry takes the remaining devices."""
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  n = len(devices)
  if shape.count(-1) > 1:
    raise ValueError(f'mesh.shape={tuple(shape)} may contain at most one -1')
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if n % rest:
      raise ValueError(f'mesh.shape={tuple(shape)}: {n} devices are not divisible by {rest}')
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n:
    raise ValueError(f'mesh.shape={tuple(shape)} needs {math.prod(shape)} devices but {n} are '
                     f'available; set mesh.shape so the sizes multiply to {n} (or use -1)')
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_sharding(mesh, rules, names: tuple) -> NamedSharding:
  """NamedSharding of an array whose axes carry logical `names`."""
  return nn.logical_to_mesh_sharding(P(*names), mesh, rules)


def make_optimizer(t) -> tuple[optax.GradientTransformation, Callable]:
  """AdamW (Loshchilov & Hutter 2019) with linear warmup + cosine decay and global-norm clipping.

  Weight decay skips norm scales and biases (leaves named 'scale', 'b' or 'bias').
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=min(t.warmup_steps, t.steps - 1),
      decay_steps=t.steps, end_value=t.lr * t.min_lr_ratio)

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) not in ('scale', 'b', 'bias'), params)

  tx = optax.chain(
      optax.clip_by_global_norm(t.clip_norm),
      optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                  mask=decay_mask))
  return tx, schedule


@dataclasses.dataclass
class Setup:
  """Everything the loop needs that is derived from the config, mesh and paradigm."""
  mesh: jax.sharding.Mesh
  rules: tuple
  model: nn.Module
  state_sharding: Any  # TrainState of NamedSharding
  batch_sharding: Any  # dict of NamedSharding
  abstract_state: Any  # TrainState of ShapeDtypeStruct (with shardings), for restores
  init: Callable  # rng -> sharded TrainState
  train_step: Callable  # (state, batch, rng) -> (state, metrics)
  eval_step: Callable  # (params, batch, rng) -> {'nats', 'tokens'}
  schedule: Callable
  abstract_params: Any  # the model's full params (ShapeDtypeStruct with shardings)
  model_params: Callable  # (state, ema: bool) -> the model's params (LoRA: base + adapters merged)
  make_base: Callable  # full params -> state.base (LoRA: quantised per lora.base_dtype)
  make_extra: Callable  # params -> state.extra (`init_extra` of the params a run starts from)


def setup(config, paradigm, mesh) -> Setup:
  """Build the model, shardings and jitted functions for `config` on `mesh`."""
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.mesh.rules)
  model_cfg = model_config(config)
  model = paradigm.build(model_cfg)
  t, d, lc = config.train, config.data, config.lora
  tx, schedule = make_optimizer(t)
  ema_on = keeps_ema(config)
  loss_kwargs = dict(config.loss)
  takes_extra = getattr(paradigm, 'LOSS_TAKES_EXTRA', False)  # e.g. DUO's distillation teacher
  batch_spec = paradigm.example_batch(d.batch_size, d, model_cfg)
  if lc.rank and hasattr(paradigm, 'after_update'):
    raise ValueError(f'lora.rank={lc.rank}: the {config.paradigm!r} paradigm edits its params '
                     'after each update (after_update), which a frozen base cannot take; train it '
                     'fully (lora.rank=0)')

  def init_boxed(rng):
    one = paradigm.example_batch(1, d, model_cfg)  # shapes of params do not depend on the batch
    batch = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), one)
    params = paradigm.init(model, rng, batch)['params']  # boxed with logical names
    extra = (paradigm.init_extra(model, params, **loss_kwargs) if hasattr(paradigm, 'init_extra')
             else None)
    base = None
    if lc.rank:  # the trained params are the adapters; the (boxed) init is the frozen base
      base = params if not lc.base_dtype else lora.quantize_base(
          nn.meta.unbox(params), lc.base_dtype, lc.targets)
      params = lora.init_adapters(nn.meta.unbox(params), lc.rank, jax.random.fold_in(rng, 7),
                                  lc.targets)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=params if ema_on else None, extra=extra, base=base)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: init_boxed(jax.random.key(0)))  # no concrete array: AOT meshes
    state_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    full_boxed = jax.eval_shape(lambda: paradigm.init(
        model, jax.random.key(0), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                               paradigm.example_batch(1, d, model_cfg)))['params'])
    full_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(full_boxed), mesh, rules)
  abstract_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 nn.meta.unbox(full_boxed), full_sharding)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed), state_sharding)
  batch_sharding = jax.tree.map(
      lambda a: logical_sharding(mesh, rules, ('batch',) + (None,) * (a.ndim - 1)), batch_spec)
  replicated = NamedSharding(mesh, P())

  def run(fn):
    """Trace `fn` under the mesh and logical rules, so activation constraints take effect
    (without a mesh in context Flax silently drops them)."""
    def wrapped(*args):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        return fn(*args)
    return wrapped

  init = jax.jit(run(lambda rng: nn.meta.unbox(init_boxed(rng))), out_shardings=state_sharding)

  def merged(base, params, rng=None):
    """The model's params: `params` itself, or with LoRA base + adapters (paradigms/nn/lora.py)."""
    if base is None:
      return params
    return lora.merge(base, params, alpha=lc.alpha, rank=lc.rank, shapes=abstract_params,
                      rng=rng, dropout=lc.dropout)

  def loss_fn(params, batch, rng, base=None, extra=None):
    full = merged(base, params, None if rng is None else jax.random.fold_in(rng, 3))
    more = {'extra': extra} if takes_extra else {}
    loss, metrics = paradigm.loss(full, batch, rng, model=model, **more, **loss_kwargs)
    return loss, dict(metrics, loss=loss)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grads_and_metrics(params, batch, rng, base=None, extra=None):
    """Mean gradient over `grad_accum` micro-batches (scanned, accumulated in float32)."""
    A = t.grad_accum
    if A == 1:
      (_, metrics), grads = grad_fn(params, batch, rng, base, extra)
      return grads, metrics
    # micro-batch i takes rows i, i + A, ...: every data shard holds an equal part of each
    micro = jax.tree.map(lambda x: x.reshape((x.shape[0] // A, A) + x.shape[1:]).swapaxes(0, 1), batch)

    def body(acc, xs):
      mb, i = xs
      (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i), base, extra)
      return jax.tree.map(jnp.add, acc, (g, m)), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, m_shape), g_shape = jax.eval_shape(grad_fn, params, first, rng, base, extra)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), (g_shape, m_shape))
    (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(A)))
    return jax.tree.map(lambda x: x / A, (grads, metrics))

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grads, metrics = grads_and_metrics(state.params, batch, rng, state.base, state.extra)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = state.extra
    aux = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith('_')]}
    if hasattr(paradigm, 'after_update'):  # e.g. dead VQ codes re-initialised from the batch
      params, extra, more = paradigm.after_update(
          params, extra, aux, jax.random.fold_in(rng, 2 ** 31 - 1), model=model, **loss_kwargs)
      metrics.update(more)
    ema = state.ema
    if ema_on:
      beta = ema_beta(config, state.step)
      ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, ema, params)
    metrics = dict(metrics, grad_norm=optax.tree_utils.tree_norm(grads), lr=schedule(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                      extra=extra, base=state.base), metrics

  train_step_jit = jax.jit(run(train_step), in_shardings=(state_sharding, batch_sharding, replicated),
                           out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  eval_step = jax.jit(run(lambda params, batch, rng: paradigm.evaluate(params, batch, rng, model=model,
                                                                     **loss_kwargs)),
                      in_shardings=(full_sharding, batch_sharding, replicated),
                      out_shardings=replicated)
  merge_jit = jax.jit(run(merged), out_shardings=full_sharding)

  def model_params(state, ema: bool = False):
    params = state.ema if ema else state.params
    return params if state.base is None or params is None else merge_jit(state.base, params)

  def make_base(full):
    """The frozen base a LoRA state holds, from full params (a warm start's)."""
    if not lc.base_dtype:
      return jax.tree.map(lambda x, a: jax.device_put(jnp.asarray(x, a.dtype), a.sharding), full,
                          abstract_params)
    return jax.jit(run(lambda p: lora.quantize_base(p, lc.base_dtype, lc.targets)),
                   out_shardings=state_sharding.base)(full)

  def make_extra(params):
    """The paradigm's `init_extra` of `params` (a warm start's), laid out as the state's."""
    if not hasattr(paradigm, 'init_extra'):
      return None
    return jax.jit(run(lambda p: paradigm.init_extra(model, p, **loss_kwargs)),
                   out_shardings=state_sharding.extra)(params)

  return Setup(mesh=mesh, rules=rules, model=model, state_sharding=state_sharding,
               batch_sharding=batch_sharding, abstract_state=abstract_state, init=init,
               train_step=train_step_jit, eval_step=eval_step, schedule=schedule,
               abstract_params=abstract_params, model_params=model_params, make_base=make_base,
               make_extra=make_extra)


def device_batch(batch: dict, sharding) -> dict:
  """This process's numpy batch -> global jax.Arrays laid out by `sharding` (multi-host safe)."""
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)),
                      batch, sharding)
