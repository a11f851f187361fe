"""Shared fixtures: tiny configs and a subprocess runner for multi-device and CLI tests."""
import os
import subprocess
import sys

import pytest

# the tests are written for CPU (8 virtual devices for sharding); with libtpu installed (the tpu
# extra, for tests/test_aot.py) JAX would otherwise probe for a TPU in every process first
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _share_compiled_programs() -> None:
  """One persistent XLA compilation cache for the whole run: the pytest process, its xdist
  workers (they inherit the environment) and the tests' `python -m ...` subprocesses. Many tests
  compile the same tiny programs (a tiny config's train step, in each CLI subprocess and again
  after each module's `jax.clear_caches()`); on 2 cores a set of four test files took 218-238 s
  without it and 172-176 s with it, starting empty as CI does. The directory is fresh per run and
  removed at exit; set JAX_COMPILATION_CACHE_DIR yourself to keep one across runs."""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  import atexit
  import shutil
  import tempfile
  path = tempfile.mkdtemp(prefix='jax-paradigms-tests-xla-')
  atexit.register(shutil.rmtree, path, True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


_share_compiled_programs()


@pytest.fixture(autouse=True, scope='module')
def _drop_compiled_code():
  """Drop every module's compiled executables when it ends. An xdist worker runs hundreds of
  tests; their jit caches grew one to ~5 GB by a third of the suite (a worker died of a fatal
  signal in CI at 24 GiB with two such workers and the tests' own subprocesses)."""
  yield
  import gc
  import jax
  jax.clear_caches()
  gc.collect()


@pytest.fixture
def tiny_config():
  """configs/ar_code.py:tiny, locked (existing keys may be changed, new keys fail)."""
  from train.config import from_file
  return from_file(os.path.join(ROOT, 'configs', 'ar_code.py:tiny'))


def run_python(args, devices: int = 1, timeout: int = 300, check: bool = True):
  """Run `python args...` from the repo root, with `devices` virtual CPU devices."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'python {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def train_tiny_on_tokens(tmp_path, config: str):
  """Train configs/vqvae_glyphs.py:tiny (4 steps) into tmp_path/t1, then `config` (e.g.
  'var_glyphs.py:tiny', 8 steps, judge on 8 samples) on its tokens into tmp_path/t2.
  Returns (the token model's config, its workdir)."""
  from train.config import from_file
  from train.trainer import train
  t1, t2 = str(tmp_path / 't1'), str(tmp_path / 't2')
  vq = from_file(os.path.join(ROOT, 'configs', 'vqvae_glyphs.py:tiny'))
  vq.data.cache_dir = str(tmp_path)
  vq.train.update(steps=4, eval_every=4, ckpt_every=4, log_every=2)
  train(vq, t1)
  c = from_file(os.path.join(ROOT, 'configs', config))
  c.data.update(tokenizer=t1, cache_dir=str(tmp_path))
  c.train.update(steps=8, eval_every=8, ckpt_every=8, log_every=4)
  c.judge.num = 8
  train(c, t2)
  return c, t2


def trained_params(workdir):
  """The raw (not EMA) params of a trained run, on the host."""
  import jax
  from train.checkpoint import load_run
  return jax.device_get(load_run(str(workdir), ema=False)[2])
