"""Who am I in a multi-process run? Resolved from environment variables, in pure Python.

    python -m train.distributed          # print this process's resolution as JSON (no JAX import)

`resolve(environ)` reads a dict of environment variables and returns a `ProcessEnv` (the
coordinator's `host:port`, the process count, this process's id, the accelerator ids it owns),
or None when the variables describe a single process. `python -m train` calls it before anything
touches a device (`train.multihost.initialize`) and passes the result to
`jax.distributed.initialize`; `tpu/slurm.sbatch` is the recipe that launches it under SLURM.

Two sources, overrides first:

| variable | meaning |
|---|---|
| `JAX_COORDINATOR_ADDRESS` | `host:port` (or `host`) of process 0's coordinator service |
| `JAX_NUM_PROCESSES` | processes in the run |
| `JAX_PROCESS_ID` | this process's index, 0-based |
| `JAX_LOCAL_DEVICE_IDS` | comma-separated accelerator ids this process uses (default: see below) |
| `JAX_COORDINATOR_PORT`, `MASTER_PORT` | the port when the address names none (this order) |
| `SLURM_STEP_NUM_TASKS` (else `SLURM_NTASKS`) | processes: the tasks of this `srun` step |
| `SLURM_PROCID` | this process's index |
| `SLURM_STEP_NODELIST` (else `SLURM_JOB_NODELIST`) | the hosts; the first runs task 0 |
| `SLURM_LOCALID`, `SLURM_STEP_TASKS_PER_NODE` | one process per GPU: which GPU |
| `SLURM_JOB_ID` | the default port, `61440 + SLURM_JOB_ID % 4096` (as JAX's own SLURM detection) |

- With all three `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, SLURM gives
  at most the local devices: the same code path runs on localhost (`tests/test_distributed.py`)
  or under any launcher.
- Inside an `srun` step (`SLURM_STEP_NODELIST` or `SLURM_STEP_NUM_TASKS` set), SLURM supplies
  what the `JAX_*` variables leave out; any `JAX_*` variable present overrides its SLURM value
  (e.g. `JAX_COORDINATOR_ADDRESS=10.1.0.1` when host names resolve to the wrong interface).
- The job-level variables alone (a batch script's own shell, an `salloc` shell) are no `srun`
  step: nothing is joined, since no other task was started.
- One process: None (nothing to join; `python -m train` then runs exactly as without variables).
- Local devices: `JAX_LOCAL_DEVICE_IDS` if set; else, one task on this node (one process per
  node) or a task that SLURM bound to a single GPU (`CUDA_VISIBLE_DEVICES` lists one): None,
  every visible device; else (several tasks on the node sharing its GPUs) `(SLURM_LOCALID,)`.
  (JAX's own SLURM detection always picks `[SLURM_LOCALID]`, one GPU of eight for a
  one-process-per-node task; `train.multihost` switches it off and passes these values.)

Compressed node lists (`node[01-03,07],gpu-a7`, `rack[1-2]-n[1-2]`) are expanded by
`expand_nodelist`, with no call to `scontrol`. A missing or malformed variable raises one
ValueError that names the variable and what to set.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
from collections.abc import Mapping

DEFAULT_PORT = 61440  # with SLURM_JOB_ID: 61440 + id % 4096, in [61440, 65535]
_OVERRIDES = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
_HOW = ('set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or launch '
        'with srun (tpu/slurm.sbatch)')


@dataclasses.dataclass(frozen=True)
class ProcessEnv:
  """This process's place in a multi-process run: the arguments of `jax.distributed.initialize`.

  Attributes:
    coordinator_address: 'host:port' of the coordinator service that process 0 starts; every
      process connects to it.
    num_processes: P, the number of processes in the run (>= 2).
    process_id: this process's index in [0, P); `jax.process_index()` after initialize.
    local_device_ids: the accelerator ids (indices into CUDA_VISIBLE_DEVICES) this process
      drives, e.g. (3,) for one process per GPU; None: every visible device (one process per
      node, or a GPU that SLURM bound to the task).
    source: where the values came from: 'env' (JAX_* only), 'slurm', or 'slurm+env' (SLURM
      with JAX_* overrides).
  """
  coordinator_address: str
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None
  source: str

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def expand_nodelist(nodelist: str) -> list[str]:
  """Every host of a SLURM host list, in order: 'node[01-03,07],gpu-a7' -> ['node01', 'node02',
  'node03', 'node07', 'gpu-a7'].

  Commas inside brackets separate ranges, outside them hosts. A range keeps the zero padding of
  its lower bound ('n[08-10]' -> n08 n09 n10; 'n[8-10]' -> n8 n9 n10). Several bracket groups in
  one name expand as their product, the first one slowest ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1
  r2n2). Raises ValueError on unbalanced or nested brackets, an empty host or range, or a range
  whose bounds are not integers in order."""
  if not isinstance(nodelist, str) or not nodelist.strip():
    raise ValueError(f'empty SLURM node list {nodelist!r}')
  hosts, depth, start = [], 0, 0
  text = nodelist.strip()
  for i, ch in enumerate(text + ','):
    if ch == '[':
      depth += 1
      if depth > 1:
        raise ValueError(f'nested brackets in SLURM node list {nodelist!r}')
    elif ch == ']':
      depth -= 1
      if depth < 0:
        raise ValueError(f'unbalanced "]" in SLURM node list {nodelist!r}')
    elif ch == ',' and depth == 0:
      hosts += _expand_host(text[start:i].strip(), nodelist)
      start = i + 1
  if depth:
    raise ValueError(f'unbalanced "[" in SLURM node list {nodelist!r}')
  return hosts


def _expand_host(pattern: str, nodelist: str) -> list[str]:
  """One comma-free entry of a node list ('node[01-03,07]') -> its host names."""
  if not pattern:
    raise ValueError(f'empty host name in SLURM node list {nodelist!r}')
  parts = re.split(r'\[([^\]]*)\]', pattern)  # literal, ranges, literal, ranges, ..., literal
  choices = []
  for k, part in enumerate(parts):
    if k % 2 == 0:
      choices.append([part])
      continue
    names = []
    for rng in part.split(','):
      lo, sep, hi = rng.strip().partition('-')
      if not lo.isdigit() or (sep and not hi.isdigit()):
        raise ValueError(f'bad range {rng!r} in SLURM node list {nodelist!r}; expected N or '
                         'N-M with integers, e.g. node[01-04,07]')
      a, b = int(lo), int(hi) if sep else int(lo)
      if b < a:
        raise ValueError(f'range {rng!r} runs backwards in SLURM node list {nodelist!r}')
      names += [str(n).zfill(len(lo)) for n in range(a, b + 1)]
    choices.append(names)
  return [''.join(p) for p in itertools.product(*choices)]


def _tasks_per_node(spec: str) -> list[int]:
  """SLURM's tasks-per-node form '8(x2),4' -> [8, 8, 4]."""
  out = []
  for item in spec.split(','):
    m = re.fullmatch(r'\s*(\d+)(?:\(x(\d+)\))?\s*', item)
    if not m:
      raise ValueError(f'SLURM_STEP_TASKS_PER_NODE={spec!r} is not of the form 8(x2),4')
    out += [int(m.group(1))] * int(m.group(2) or 1)
  return out


def _int(environ: Mapping[str, str], name: str, minimum: int = 0) -> int:
  value = environ[name]
  try:
    n = int(value.strip())
  except ValueError:
    n = None
  if n is None or n < minimum:
    raise ValueError(f'{name}={value!r} is not an integer >= {minimum}; set {name} to one')
  return n


def _port(environ: Mapping[str, str]) -> int:
  """JAX_COORDINATOR_PORT, else MASTER_PORT, else 61440 + SLURM_JOB_ID % 4096, else 61440."""
  for name in ('JAX_COORDINATOR_PORT', 'MASTER_PORT'):
    if environ.get(name, '').strip():
      port = _int(environ, name, 1)
      if port > 65535:
        raise ValueError(f'{name}={port} is not a port (1-65535)')
      return port
  job = environ.get('SLURM_JOB_ID', '').strip()
  return DEFAULT_PORT + int(job) % 4096 if job.isdigit() else DEFAULT_PORT


def _address(value: str, environ: Mapping[str, str]) -> str:
  """'host:port' from JAX_COORDINATOR_ADDRESS's 'host:port', 'host', '[v6]:port' or '[v6]'."""
  value = value.strip()
  m = re.fullmatch(r'(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+)(?::(\d+))?', value)
  if not m:
    raise ValueError(f'JAX_COORDINATOR_ADDRESS={value!r} is not host:port (e.g. '
                     '10.0.0.1:1234 or node01:1234)')
  port = int(m.group(2)) if m.group(2) else _port(environ)
  if not 0 < port < 65536:
    raise ValueError(f'JAX_COORDINATOR_ADDRESS={value!r}: port {port} is not in 1-65535')
  return f'{m.group(1)}:{port}'


def _in_srun_step(environ: Mapping[str, str]) -> bool:
  """Whether srun started this process (a step's variables; a batch shell has none)."""
  return 'SLURM_STEP_NODELIST' in environ or 'SLURM_STEP_NUM_TASKS' in environ


def _nodelist_var(environ: Mapping[str, str]) -> str | None:
  """The first of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST that is set."""
  return next((v for v in ('SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST')
               if environ.get(v, '').strip()), None)


def local_device_ids(environ: Mapping[str, str]) -> tuple[int, ...] | None:
  """The accelerator ids this process drives: JAX_LOCAL_DEVICE_IDS; else, in an srun step whose
  tasks share this node's GPUs (2+ tasks here, CUDA_VISIBLE_DEVICES not bound to one GPU),
  (SLURM_LOCALID,); else None (every visible device)."""
  ids = environ.get('JAX_LOCAL_DEVICE_IDS', '').strip()
  if ids:
    try:
      out = tuple(int(v) for v in ids.split(','))
    except ValueError:
      out = ()
    if not out or min(out) < 0:
      raise ValueError(f'JAX_LOCAL_DEVICE_IDS={ids!r} is not a comma-separated list of device '
                       'ids such as 0,1')
    return out
  if not _in_srun_step(environ) or 'SLURM_LOCALID' not in environ:
    return None
  spec = environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_TASKS_PER_NODE')
  if not spec:
    return None
  per_node = _tasks_per_node(spec)
  nodelist = _nodelist_var(environ)
  hosts = expand_nodelist(environ[nodelist]) if nodelist else []
  name, node_id = environ.get('SLURMD_NODENAME', ''), environ.get('SLURM_NODEID', '')
  if name in hosts and len(per_node) == len(hosts):
    here = per_node[hosts.index(name)]
  elif node_id.isdigit() and int(node_id) < len(per_node):
    here = per_node[int(node_id)]
  else:
    here = max(per_node)
  visible = environ.get('CUDA_VISIBLE_DEVICES', environ.get('ROCR_VISIBLE_DEVICES', ''))
  if here <= 1 or len([v for v in visible.split(',') if v.strip()]) == 1:
    return None  # one process per node, or SLURM bound one GPU to this task
  return (_int(environ, 'SLURM_LOCALID'),)


def resolve(environ: Mapping[str, str] | None = None) -> ProcessEnv | None:
  """This process's `ProcessEnv` from environment variables (the module docstring's table), or
  None when they describe one process (no JAX_* variables and no `srun` step of 2+ tasks, or a
  process count of 1).

  Args:
    environ: the variables, e.g. `dict(os.environ)` (the default) or a faked SLURM environment.

  Raises:
    ValueError: one line naming the missing or malformed variable and what to set.
  """
  environ = os.environ if environ is None else environ
  given = {k: environ[k].strip() for k in _OVERRIDES if environ.get(k, '').strip()}
  slurm = _in_srun_step(environ)
  if not given and not slurm:
    return None
  if not slurm and len(given) < len(_OVERRIDES):
    missing = [k for k in _OVERRIDES if k not in given]
    raise ValueError(f'{", ".join(given)} set without {" and ".join(missing)}: set all three of '
                     f'{", ".join(_OVERRIDES)} (or launch with srun, tpu/slurm.sbatch)')
  nodelist = _nodelist_var(environ) if slurm else None
  if 'JAX_COORDINATOR_ADDRESS' in given:
    address = _address(given['JAX_COORDINATOR_ADDRESS'], environ)
  elif nodelist:  # task 0 runs on the step's first node
    address = f'{expand_nodelist(environ[nodelist])[0]}:{_port(environ)}'
  else:
    raise ValueError(f'no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST to find the coordinator '
                     f'host in; {_HOW}')
  tasks = 'SLURM_STEP_NUM_TASKS' if 'SLURM_STEP_NUM_TASKS' in environ else 'SLURM_NTASKS'
  num_var = 'JAX_NUM_PROCESSES' if 'JAX_NUM_PROCESSES' in given else tasks
  pid_var = 'JAX_PROCESS_ID' if 'JAX_PROCESS_ID' in given else 'SLURM_PROCID'
  for name in (num_var, pid_var):
    if name not in environ:
      raise ValueError(f'{name} is not set in this srun step; {_HOW}')
  num, pid = _int(environ, num_var, 1), _int(environ, pid_var)
  if pid >= num:
    raise ValueError(f'{pid_var}={pid} is not below {num_var}={num}: process ids run from 0 to '
                     'the process count - 1')
  if num == 1:
    return None
  source = 'env' if len(given) == len(_OVERRIDES) else 'slurm+env' if given else 'slurm'
  return ProcessEnv(address, num, pid, local_device_ids(environ), source)


def main() -> None:
  """Print this host's name and this process's resolution as one JSON line (the host alone for a
  single process); exit 2 with one line on a bad environment."""
  try:
    env = resolve(os.environ)
  except ValueError as err:
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)
  host = os.environ.get('SLURMD_NODENAME') or os.uname().nodename
  print(json.dumps({'host': host, **(env.as_dict() if env else {})}), flush=True)


if __name__ == '__main__':
  main()
