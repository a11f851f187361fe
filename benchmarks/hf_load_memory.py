"""Host memory of the streaming Hugging Face load (`train.hf.load_hf`, interop/load.py).

  python benchmarks/hf_load_memory.py                     # 134M-param fp32 Llama, 537 MB on disk
  python benchmarks/hf_load_memory.py --devices 1,8       # also on an 8-device CPU mesh (1, 4, 2)
  python benchmarks/hf_load_memory.py --hidden 256 --layers 2 --heads 4 --intermediate 512 \
      --vocab 4096 --devices 1,8 --out ''                 # smoke run (seconds; nothing appended)

1. Writes a Llama-shaped float32 safetensors folder: random weights under the published
   LlamaForCausalLM names in torch's Linear [out, in] layout, one shard per layer plus shards for
   the embedding and the head, `model.safetensors.index.json` and a matching config.json. Made
   and written one shard at a time, so the writer never holds the model.
2. For each `--devices` entry, two FRESH subprocesses (so neither the writer nor the other
   measurement pollutes the numbers) import jax and train.hf, initialise the backend, record a
   baseline and call `load_hf(folder)` (with `mesh=train.state.make_mesh(...)` when devices > 1,
   via XLA_FLAGS=--xla_force_host_platform_device_count=N on the CPU):
   - rss: a background thread reads RssAnon from /proc/self/status every ~2 ms during the load;
   - tracemalloc: `tracemalloc` traces Python-side allocations (numpy buffers included; XLA's
     own buffers are invisible to it) and reports their peak during the load.

Why RssAnon: the safetensors files are mmapped, so their pages, once touched, count in VmRSS
(RssFile) although they are page cache: clean, file-backed and reclaimable by the kernel at any
time, and shared with every other reader of the file. VmHWM (the RSS high-water mark, reported
for reference) therefore grows with every byte read even when nothing is copied. RssAnon is the
process's own private memory (numpy buffers, XLA's host buffers), the part that cannot be given
back; it is the honest measure of what the load costs.

Reading a run: `peak_extra` = peak - baseline during the load; `final_extra` is what the loaded
params hold afterwards (on the CPU about `params_bytes`, the leaves' nbytes; `held_bytes` counts
replicated shards once per device); `criterion`: peak_extra <= params_bytes + 1.5 *
largest_tensor_bytes, i.e. beyond the params the load never had much more than the largest
tensor in flight. A few MiB of fixed cost (tracing, jit caches) make tiny folders fail it.
Prints one JSON object and appends it to `--out`. The folder is deleted unless `--keep DIR`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from results_io import emit  # benchmarks/results_io.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'benchmarks', 'results', 'hf_load_memory.jsonl')
COMMON = ('devices', 'platform', 'mesh', 'params_bytes', 'held_bytes', 'largest_leaf_bytes')


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for k, v in dict(hidden=768, layers=12, heads=12, kv_heads=0, intermediate=2048,
                   vocab=32000).items():
    p.add_argument('--' + k.replace('_', '-'), type=int, default=v)  # kv-heads 0: --heads
  p.add_argument('--devices', default='1', help='comma-separated device counts, e.g. 1,8')
  p.add_argument('--mesh', default=None, help='mesh shape for devices > 1 (default 1,N/2,2)')
  p.add_argument('--keep', default=None, metavar='DIR',
                 help='write the folder to DIR and keep it (reused if DIR has config.json)')
  p.add_argument('--out', default=OUT, help="JSONL file the result is appended to ('' for none)")
  p.add_argument('--child', choices=('rss', 'tracemalloc'), help=argparse.SUPPRESS)
  p.add_argument('--folder', help=argparse.SUPPRESS)  # the child's folder
  args = p.parse_args(argv)
  args.kv_heads = args.kv_heads or args.heads
  args.devices = [int(d) for d in args.devices.split(',') if d]
  if args.hidden % args.heads or args.heads % args.kv_heads:
    p.error('--hidden must be a multiple of --heads, and --heads of --kv-heads')
  return args


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# --- the writer (parent process) -------------------------------------------------------------

def write_folder(args, folder: str) -> dict:
  """A Llama folder of random float32 weights, one shard at a time. Returns the header facts."""
  import numpy as np
  from safetensors.numpy import save_file
  D, F, V, H, K = args.hidden, args.intermediate, args.vocab, args.heads, args.kv_heads
  Dh = D // H
  rng = np.random.default_rng(0)

  def normal(*shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 0.02
    return x

  shapes = {'self_attn.q_proj': (H * Dh, D), 'self_attn.k_proj': (K * Dh, D),
            'self_attn.v_proj': (K * Dh, D), 'self_attn.o_proj': (D, H * Dh),
            'mlp.gate_proj': (F, D), 'mlp.up_proj': (F, D), 'mlp.down_proj': (D, F)}

  def layer(i):
    pre = f'model.layers.{i}.'
    out = {pre + k + '.weight': normal(*v) for k, v in shapes.items()}
    out.update({pre + k + '.weight': np.ones(D, np.float32)
                for k in ('input_layernorm', 'post_attention_layernorm')})
    return out

  shards = ([lambda: {'model.embed_tokens.weight': normal(V, D)}]
            + [lambda i=i: layer(i) for i in range(args.layers)]
            + [lambda: {'model.norm.weight': np.ones(D, np.float32),
                        'lm_head.weight': normal(V, D)}])
  os.makedirs(folder, exist_ok=True)
  weight_map, total = {}, 0
  for j, make in enumerate(shards):
    name = f'model-{j + 1:05d}-of-{len(shards):05d}.safetensors'
    tensors = make()  # one shard in memory at a time
    save_file(tensors, os.path.join(folder, name), metadata={'format': 'pt'})
    weight_map.update({k: name for k in tensors})
    total += sum(t.nbytes for t in tensors.values())
    del tensors
  with open(os.path.join(folder, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=1)
  config = dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_size=D,
                intermediate_size=F, num_hidden_layers=args.layers, num_attention_heads=H,
                num_key_value_heads=K, vocab_size=V, rms_norm_eps=1e-5, rope_theta=10000.0,
                hidden_act='silu', tie_word_embeddings=False, max_position_embeddings=2048,
                torch_dtype='float32')
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f, indent=1)
  return folder_facts(folder)


def folder_facts(folder: str) -> dict:
  """Tensor count, bytes and the largest tensor's bytes, from the safetensors headers."""
  from safetensors import safe_open
  size = {'F32': 4, 'F16': 2, 'BF16': 2, 'F64': 8}
  n, total, largest = 0, 0, 0
  for shard in sorted(x for x in os.listdir(folder) if x.endswith('.safetensors')):
    with safe_open(os.path.join(folder, shard), framework='numpy') as f:
      for k in f.keys():
        s = f.get_slice(k)
        b = size[s.get_dtype()] * math.prod(s.get_shape())
        n, total, largest = n + 1, total + b, max(largest, b)
  with open(os.path.join(folder, 'config.json')) as f:
    hf = json.load(f)
  model = {k: hf.get(k) for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                                  'num_key_value_heads', 'intermediate_size', 'vocab_size')}
  return {'model': model, 'tensors': n, 'tensor_bytes': total, 'largest_tensor_bytes': largest}


# --- the measurement (fresh subprocess) ------------------------------------------------------

def _status() -> dict:
  """Memory fields of /proc/self/status, in bytes. RssAnon is the measure: RssFile (and so VmRSS
  and VmHWM) also counts the mmapped safetensors pages, which are reclaimable page cache."""
  out = {}
  with open('/proc/self/status') as f:
    for line in f:
      k, _, v = line.partition(':')
      if k in ('RssAnon', 'RssFile', 'VmRSS', 'VmHWM'):
        out[k] = int(v.split()[0]) * 1024
  return out


def child(args) -> None:
  sys.path.insert(0, ROOT)
  sys.setswitchinterval(0.0005)  # let the sampler thread in between the loader's bytecodes
  import gc
  import tracemalloc
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  from train.hf import load_hf
  from train.state import make_mesh
  jax.block_until_ready(jax.numpy.zeros(8) + 1)  # backend up before the baseline
  mesh = make_mesh(tuple(int(x) for x in args.mesh.split(','))) if args.mesh else None
  stop, peak = threading.Event(), {'RssAnon': 0, 'RssFile': 0}

  def sample():
    while not stop.is_set():
      s = _status()
      peak.update({k: max(v, s[k]) for k, v in peak.items()})
      time.sleep(0.002)

  thread = threading.Thread(target=sample, daemon=True)
  gc.collect()
  base = _status()
  if args.child == 'rss':
    thread.start()
  else:
    tracemalloc.start()  # traced bytes start at 0: the baseline
  tic = time.perf_counter()
  _, params, _ = load_hf(args.folder, mesh=mesh)
  jax.block_until_ready(params)
  res = {'load_s': time.perf_counter() - tic}
  stop.set()
  gc.collect()
  final = _status()
  if args.child == 'rss':
    thread.join()
    res.update(baseline=base['RssAnon'], peak=max(peak['RssAnon'], final['RssAnon']),
               final=final['RssAnon'], peak_rss_file=peak['RssFile'],
               vm_hwm_before=base['VmHWM'], vm_hwm_after=final['VmHWM'])
  else:
    current, top = tracemalloc.get_traced_memory()
    res.update(baseline=0, peak=top, final=current)
  leaves = jax.tree.leaves(params)
  res.update(devices=len(jax.devices()), platform=jax.devices()[0].platform,
             mesh=None if mesh is None else list(mesh.devices.shape),
             params_bytes=sum(x.nbytes for x in leaves),
             held_bytes=sum(s.data.nbytes for x in leaves for s in x.addressable_shards),
             largest_leaf_bytes=max(x.nbytes for x in leaves))
  print(json.dumps(res), flush=True)


def measure(args, folder: str, devices: int, mode: str, largest: int) -> dict:
  env = dict(os.environ)
  cmd = [sys.executable, os.path.abspath(__file__), '--child', mode, '--folder', folder]
  if devices > 1:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={devices}').strip()
    env['JAX_PLATFORMS'] = 'cpu'
    cmd += ['--mesh', args.mesh or ('1,-1,2' if devices % 2 == 0 else '1,-1,1')]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'{mode} measurement failed:\n{proc.stderr[-4000:]}')
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  r['peak_extra'] = r['peak'] - r['baseline']
  r['final_extra'] = r['final'] - r['baseline']
  r['bound'] = r['params_bytes'] + 1.5 * largest
  r['criterion'] = r['peak_extra'] <= r['bound']
  return r


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.child:
    return child(args)
  folder = args.keep or tempfile.mkdtemp(prefix='hf_load_memory_')
  try:
    if args.keep and os.path.exists(os.path.join(folder, 'config.json')):
      _log(f'reusing {folder}')
      facts = folder_facts(folder)
    else:
      tic = time.perf_counter()
      facts = write_folder(args, folder)
      _log(f'wrote {facts["tensors"]} tensors, {facts["tensor_bytes"] / 2**20:.1f} MiB, to '
           f'{folder} in {time.perf_counter() - tic:.1f}s')
    mib = lambda b: round(b / 2**20, 1)
    runs = []
    for n in args.devices:
      run = {}
      for mode in ('rss', 'tracemalloc'):
        r = measure(args, folder, n, mode, facts['largest_tensor_bytes'])
        run.update({k: r.pop(k) for k in COMMON})
        run[mode] = r
        _log(f'devices {n} {mode}: peak_extra {mib(r["peak_extra"])} MiB, final_extra '
             f'{mib(r["final_extra"])} MiB, params {mib(run["params_bytes"])} MiB, bound '
             f'{mib(r["bound"])} MiB -> criterion {r["criterion"]}')
      runs.append(run)
  finally:
    if not args.keep:
      shutil.rmtree(folder, ignore_errors=True)
  out = {
      'bench': 'hf_load_memory',
      'dtype': 'float32',
      **facts,
      'file_bytes_mib': mib(facts['tensor_bytes']),
      'criterion': 'peak_extra <= params_bytes + 1.5 * largest_tensor_bytes',
      'runs': runs,
      'all_pass': all(run[m]['criterion'] for run in runs for m in ('rss', 'tracemalloc')),
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
  }
  emit(out, args.out, indent=2)
  return out


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
