"""Sharding on 8 virtual CPU devices (mesh data=2, fsdp=2, tensor=2): parameters are laid out as
the rules say, and loss and gradients equal the single-device ones."""
import json

from conftest import run_python

SCRIPT = r'''
import json, jax, jax.numpy as jnp, numpy as np
import paradigms
from train.config import from_file
from train.state import make_mesh, setup, device_batch
from pipelines.text import load_corpus, train_dataset

c = from_file('configs/ar_code.py:tiny')
c.model.n_heads, c.model.n_kv_heads, c.model.d_model = 4, 2, 32
c.data.batch_size = 8
c.mesh.shape = (2, 2, 2)
p = paradigms.get(c.paradigm)
big = setup(c, p, make_mesh((2, 2, 2)))
one = setup(c, p, make_mesh((1, 1, 1), jax.devices()[:1]))
state = big.init(jax.random.key(0))
specs = {jax.tree_util.keystr(k): list(v.sharding.spec) for k, v in
         jax.tree_util.tree_leaves_with_path(state.params)}
shard_shapes = {jax.tree_util.keystr(k): list(v.addressable_shards[0].data.shape) for k, v in
                jax.tree_util.tree_leaves_with_path(state.params)}
batch = next(iter(train_dataset(load_corpus(c.data).train, seq_len=c.data.seq_len,
                                batch_size=8, seed=0)))
params1 = jax.device_put(jax.device_get(state.params), one.state_sharding.params)

def loss_and_grads(s, params):
  b = device_batch(batch, s.batch_sharding)
  f = jax.jit(jax.value_and_grad(lambda q: p.loss(q, b, None, model=s.model)[0]))
  with jax.set_mesh(s.mesh):
    import flax.linen as nn
    with nn.logical_axis_rules(s.rules):
      return jax.device_get(f(params))

l8, g8 = loss_and_grads(big, state.params)
l1, g1 = loss_and_grads(one, params1)
gdiff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)))
gscale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g1))
new_state, metrics = big.train_step(state, device_batch(batch, big.batch_sharding), jax.random.key(1))
print(json.dumps(dict(n=jax.device_count(), specs=specs, shard_shapes=shard_shapes, l8=float(l8),
                      l1=float(l1), gdiff=gdiff, gscale=gscale,
                      step_spec=list(new_state.params['layers']['attn']['wq'].sharding.spec))))
'''


def test_params_sharded_by_rules_and_loss_grads_match_single_device():
  out = json.loads(run_python(['-c', SCRIPT], devices=8).stdout.strip().splitlines()[-1])
  assert out['n'] == 8
  s, shapes = out['specs'], out['shard_shapes']
  # rules: embed->fsdp, heads/kv_heads/mlp/vocab->tensor, layers/head_dim->replicated
  assert s["['layers']['attn']['wq']"] == [None, 'fsdp', 'tensor', None]
  assert s["['layers']['mlp']['w_gate']"] == [None, 'fsdp', 'tensor']
  assert s["['embed']['embedding']"] == ['tensor', 'fsdp']
  assert shapes["['layers']['attn']['wq']"] == [2, 16, 2, 8]  # [L, D/2, H/2, Dh] per device
  assert shapes["['embed']['embedding']"] == [129, 16]  # [V/2, D/2]
  assert out['step_spec'] == s["['layers']['attn']['wq']"]  # the step keeps the layout
  assert abs(out['l8'] - out['l1']) < 1e-5
  assert out['gdiff'] <= 1e-5 * max(1.0, out['gscale'])
