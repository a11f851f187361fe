"""tpu/aot.py: the trainer's real sharded train step compiled for a named TPU slice, with no TPU
attached (needs libtpu, the `tpu` extra; skipped with that reason where it is absent)."""
import importlib.util
import json

import pytest

from conftest import run_python

pytestmark = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                reason="libtpu is not installed (pip install -e '.[tpu]')")


def _aot(*args):
  out = run_python(['tpu/aot.py', *args], timeout=600).stdout
  return json.loads(out[out.index('{'):])


def test_tiny_preset_compiles_for_a_v5e_slice_and_fits():
  r = _aot('--config', 'configs/ar_code.py:tiny', '--topology', 'v5e:2x2',
           '--config.mesh.shape=(2,2,1)')
  assert (r['device_kind'], r['num_devices'], r['chips']) == ('TPU v5 lite', 4, 4)
  assert r['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  assert r['hbm_per_device_gib'] == 16 and r['fits'] is True
  # the arguments hold at least this device's shard of params + two Adam moments (float32)
  assert r['memory_breakdown_gib']['argument'] * 2 ** 30 >= 3 * 4 * r['params'] / 2
  assert 0 < r['memory_per_device_gib'] < 1
  assert r['flops_per_step_per_device'] > 0


def test_1b_preset_on_a_v5p_8_fits_with_grad_accumulation():
  """1.13B params, batch 512 x 2048 on 4 v5p chips: the activations of a whole step are
  refused (XLA asks for more than the 95 GiB of HBM), and the report says so."""
  r = _aot('--config', 'configs/ar_code.py:1b', '--topology', 'v5p:2x2x1')
  assert (r['device_kind'], r['num_devices'], r['hbm_per_device_gib']) == ('TPU v5', 4, 95)
  assert r['fits'] is False and r['memory_per_device_gib'] > 95
  assert 'RESOURCE_EXHAUSTED' in r['error']
  # eight micro-batches of 64 rows: the same step fits, with the model's FLOPs unchanged
  a = _aot('--config', 'configs/ar_code.py:1b', '--topology', 'v5p:2x2x1',
           '--config.train.grad_accum=8')
  assert a['fits'] is True and a['memory_per_device_gib'] < 95 < r['memory_per_device_gib']
  assert a['params'] == pytest.approx(1.13e9, rel=0.01)
  assert a['model_flops_per_step'] == r['model_flops_per_step']
