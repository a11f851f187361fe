"""Compile the real sharded train step for a TPU topology ahead of time, with no TPU attached.

  pip install -e '.[tpu]'          # libtpu: the TPU compiler runs on this x86 host
  python tpu/aot.py --config configs/ar_code.py:1b --topology v5p:2x2x1
  python tpu/aot.py --config configs/dit_glyphs.py:base --topology v5e:2x2 --config.mesh.shape='(4,1,1)'

`jax.experimental.topologies.get_topology_desc` describes the named slice's devices; the
trainer's own `train.state.setup` builds the mesh over them, and its jitted train step is
lowered against abstract (ShapeDtypeStruct) state and batch that carry the mesh's shardings,
then compiled by XLA's TPU backend. Nothing is allocated and no TPU is needed. Prints one
JSON object:
  topology, device_kind, num_devices, chips  the slice (a v5p chip is one JAX device with two
                                              TensorCores: 'v5p:2x2x1' is a v5p-8, 4 chips)
  mesh, params, global_batch                  the config's mesh, parameter count and batch
  memory_per_device_gib                       XLA's buffer assignment of one device:
                                              arguments + outputs - aliased (donated) + temps
                                              + generated code: the step's peak HBM
  hbm_per_device_gib, fits                    the chip's HBM (per device); fits = peak <= HBM
  flops_per_step_per_device                   XLA's cost analysis of the compiled program. It
                                              counts a loop body once, not times its trip
                                              count: with layers scanned (and grad_accum) it is
                                              a lower bound; prefer the model's own count:
  model_flops_per_step                        6 N tokens + attention (the model's own count,
                                              AR configs), for MFU
With --mode decode it compiles one bf16 sampling step instead of the train step: for an
autoregressive model one KV-cached token for --decode-batch sequences with a cache of
--decode-len positions (the cache donated), for a masked-diffusion model one denoising forward
over --decode-batch x --decode-len tokens; params bf16, sharded by the config's mesh and rules.
A program whose buffers exceed HBM is refused by XLA; the report then has fits=false, the
memory XLA asked for, and the error line. Raise train.grad_accum (smaller micro-batches), a
stronger model.remat_policy, or a bigger slice.
The topology names are those of `gcloud compute tpus` (TYPE:AxBxC): v4, v5e (= v5litepod),
v5p, v6e. A config whose mesh does not fit the slice fails with make_mesh's message.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the host backend; the TPU compiler is separate
# compiling needs no TPU, so do not wait for the lock of a process that holds a real one
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file and preset, e.g. '
                                          'configs/ar_code.py:1b', lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', 'v5p:2x2x1', 'TPU slice, TYPE:AxB[xC]')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'decode'], 'the train step, or one bf16 '
                          'sampling step')
_DECODE_BATCH = flags.DEFINE_integer('decode_batch', 1, '--mode decode: sequences')
_DECODE_LEN = flags.DEFINE_integer('decode_len', 4096, '--mode decode: cache (AR) or sequence '
                                   '(masked diffusion) length')
flags.mark_flags_as_required(['config'])

GIB = 2 ** 30
# HBM per chip, by the device_kind the topology's devices report
HBM_PER_CHIP_GIB = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}


def topology_devices(name: str):
  """The devices of a named TPU slice (needs libtpu; no TPU attached)."""
  try:
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform='tpu', topology_name=name).devices
  except Exception as e:  # no libtpu, or an unknown name
    raise RuntimeError(f'cannot describe TPU topology {name!r} ({type(e).__name__}: {e}). '
                       "Install the TPU compiler with pip install -e '.[tpu]' and name a slice "
                       "as TYPE:AxB[xC], e.g. v5p:2x2x1 or v5e:2x2.") from e


def compile_train_step(config, devices):
  """(compiled, setup) of the trainer's train step over `devices` (abstract inputs only)."""
  import jax
  import paradigms
  from jax.sharding import NamedSharding, PartitionSpec as P
  from train import config as config_lib
  from train.state import make_mesh, setup

  config_lib.validate(config)
  paradigm = paradigms.get(config.paradigm)
  mesh = make_mesh(config.mesh.shape, list(devices))
  s = setup(config, paradigm, mesh)
  spec = paradigm.example_batch(config.data.batch_size, config.data,
                                config_lib.model_config(config))
  batch = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                       spec, s.batch_sharding)
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))
  return s.train_step.lower(s.abstract_state, batch, rng).compile(), s


def compile_decode_step(config, devices, batch: int, length: int):
  """(compiled, n_params, mesh) of one bf16 sampling step (see the module doc)."""
  import dataclasses
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import paradigms
  from jax.sharding import NamedSharding, PartitionSpec as P
  from train import config as config_lib
  from train.state import make_mesh
  config_lib.validate(config)
  mesh = make_mesh(config.mesh.shape, list(devices))
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.mesh.rules)
  cfg = dataclasses.replace(config_lib.model_config(config), dtype='bfloat16',
                            param_dtype='bfloat16', remat_policy='none')
  model = paradigms.get(config.paradigm).build(cfg)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    shard = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)['params']
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.meta.unbox(boxed)['params'], shard)
  n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(params))
  rows = P(('data', 'fsdp')) if batch % (mesh.shape['data'] * mesh.shape['fsdp']) == 0 else P()
  run = lambda fn: (lambda *a: _in_rules(fn, mesh, rules, *a))
  if config.paradigm == 'autoregressive':
    cache = jax.eval_shape(lambda: model.init_cache(batch, length))
    heads = 'tensor' if cfg.kv_heads % mesh.shape['tensor'] == 0 else None
    kv = NamedSharding(mesh, P(None, rows[0] if rows else None, heads, None, None))  # [NL, B, K, S, Dh]
    cache = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=kv if a.ndim == 5 else NamedSharding(mesh, P())), cache)
    tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=NamedSharding(mesh, rows))
    step = jax.jit(run(lambda p, t, c: model.apply({'params': p}, t, cache=c)),
                   donate_argnums=(2,))
    return step.lower(params, tokens, cache).compile(), n_params, mesh
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=NamedSharding(mesh, rows))
  step = jax.jit(run(lambda p, t: model.apply({'params': p}, t)[0]))
  return step.lower(params, tokens).compile(), n_params, mesh


def _in_rules(fn, mesh, rules, *args):
  import flax.linen as nn
  import jax
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    return fn(*args)


def report(config, topology: str, mode: str = 'train', decode_batch: int = 1,
           decode_len: int = 4096) -> dict:
  """Compile for `topology` and measure (see the module doc)."""
  import jax
  from train import config as config_lib
  devices = topology_devices(topology)
  kind = devices[0].device_kind
  if 'scan_unroll' in config.model and not config.model.scan_unroll:
    config.model.scan_unroll = 1  # a TPU program: the CPU host's automatic unroll does not apply
  chips = math.prod(int(v) for v in topology.split(':')[1].split('x'))
  hbm = HBM_PER_CHIP_GIB.get(kind)
  hbm_dev = hbm * chips / len(devices) if hbm else None
  d = config.data
  out = {'topology': topology, 'device_kind': kind, 'num_devices': len(devices), 'chips': chips,
         'paradigm': config.paradigm, 'global_batch': int(d.batch_size),
         'grad_accum': int(config.train.grad_accum),
         'dtype': config.model.get('dtype', 'float32'),
         'remat_policy': config.model.get('remat_policy', 'none'), 'hbm_per_device_gib': hbm_dev}
  mcfg = config_lib.model_config(config)
  if mode == 'decode':
    out.update(mode='decode', decode_batch=decode_batch, decode_len=decode_len, dtype='bfloat16',
               lora_rank=0)
    out.pop('global_batch'), out.pop('grad_accum')
  else:
    out['lora_rank'] = int(config.lora.rank)
  if mode == 'train' and hasattr(mcfg, 'flops_per_token') and 'seq_len' in d:
    out['model_flops_per_step'] = float(mcfg.flops_per_token(d.seq_len)) * d.batch_size * d.seq_len
  try:
    if mode == 'decode':
      compiled, n_params, mesh = compile_decode_step(config, devices, decode_batch, decode_len)
    else:
      compiled, s = compile_train_step(config, devices)
      n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(s.abstract_params))
      mesh = s.mesh
  except Exception as e:  # XLA refuses a program whose buffers exceed HBM
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    need = re.search(r'required for [^(]*\(([\d.]+)G\)', str(e))
    return {**out, 'fits': False, 'memory_per_device_gib': float(need[1]) if need else None,
            'error': str(e).strip().splitlines()[0][:500]}
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      **out, 'mesh': dict(mesh.shape), 'params': int(n_params),
      'memory_per_device_gib': peak / GIB,
      'memory_breakdown_gib': {k: getattr(mem, f'{k}_size_in_bytes') / GIB
                               for k in ('argument', 'output', 'alias', 'temp', 'generated_code')},
      'fits': None if hbm_dev is None else bool(peak <= hbm_dev * GIB),
      'flops_per_step_per_device': float(cost.get('flops', float('nan'))),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    out = report(_CONFIG.value, _TOPOLOGY.value, _MODE.value, _DECODE_BATCH.value,
                 _DECODE_LEN.value)
  except RuntimeError as e:
    sys.exit(str(e))
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  app.run(main)
