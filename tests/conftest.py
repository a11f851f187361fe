"""Shared fixtures: tiny configs and a subprocess runner for multi-device and CLI tests."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
