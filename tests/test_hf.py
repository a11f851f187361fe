"""Hugging Face checkpoints in and out: equivalence with `transformers` on the same weights.

Every model is a tiny random one built here (tests/hf_models.py); nothing downloads."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

import hf_models  # noqa: E402
from conftest import run_python  # noqa: E402
from interop.safetensors_io import CheckpointError  # noqa: E402
from train.hf import export_params, load_hf, load_hf_run  # noqa: E402

TOKENS = np.random.RandomState(0).randint(0, hf_models.V - 2, (2, 12))


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """name -> (folder, transformers reference model) for every family."""
  root = tmp_path_factory.mktemp('hf')
  out = {name: (str(root / name), hf_models.ar_model(name, str(root / name)))
         for name in hf_models.AR_FAMILIES}
  out['llada'] = (str(root / 'llada'), hf_models.llada_model(str(root / 'llada')))
  out['dream'] = (str(root / 'dream'), hf_models.dream_model(str(root / 'dream')))
  return out


def _hf_greedy(ref, prompt, n):
  """transformers' greedy `generate` with no stop token (min_new_tokens would instead forbid
  the EOS id, changing the argmax where EOS wins)."""
  import torch
  ref.generation_config.eos_token_id = None
  with torch.no_grad():
    return ref.generate(torch.tensor(prompt), max_new_tokens=n, do_sample=False,
                        pad_token_id=0).numpy()


def _ours(model, params, tokens):
  return np.asarray(model.apply({'params': params}, jnp.asarray(tokens))[0])


@pytest.mark.parametrize('name', list(hf_models.AR_FAMILIES))
def test_ar_families_match_transformers_logits_and_greedy_generate(folders, name):
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  folder, ref = folders[name]
  model, params, tok = load_hf(folder)
  assert tok is None  # no tokenizer.json in these folders
  ours = _ours(model, params, TOKENS)
  np.testing.assert_allclose(ours, hf_models.torch_logits(ref, TOKENS), atol=1e-4, rtol=0)
  prompt = TOKENS[:1, :5]
  out = generate(LogitsFn(model), params, jnp.asarray(prompt), jax.random.key(0),
                 model.init_cache(1, 5 + 32), max_new_tokens=32, greedy=True)
  want = _hf_greedy(ref, prompt, 32)
  assert want.shape == (1, 37)
  np.testing.assert_array_equal(np.asarray(out.tokens)[0], want[0])


def test_sliding_window_and_rope_scaling_are_what_the_match_tests(folders):
  """The options under test change the logits: without them the match above would fail."""
  import dataclasses
  from paradigms.nn.transformer import Transformer
  for name, change in (('mistral', dict(sliding_window=0)), ('llama', dict(rope_scaling=''))):
    model, params, _ = load_hf(folders[name][0])
    other = Transformer(dataclasses.replace(model.cfg, **change))
    diff = np.abs(_ours(model, params, TOKENS) - _ours(other, params, TOKENS)).max()
    assert diff > 1e-3, (name, diff)


def test_llada_is_the_bidirectional_llama_under_its_names(folders):
  folder, ref = folders['llada']
  model, params, _, config = load_hf_run(folder)
  assert config.paradigm == 'masked_diffusion' and config.loss.mask_id == hf_models.V - 1
  want = hf_models.torch_logits(ref, TOKENS, bidirectional=True)
  np.testing.assert_allclose(_ours(model, params, TOKENS), want, atol=1e-4, rtol=0)
  causal = hf_models.torch_logits(ref, TOKENS)
  assert np.abs(want - causal)[:, :-1].max() > 1e-2  # the reference really is bidirectional


def test_dream_shifts_logits_right_by_one(folders):
  folder, ref = folders['dream']
  model, params, _ = load_hf(folder)
  assert model.cfg.shift_logits and model.cfg.qkv_bias
  raw = hf_models.torch_logits(ref, TOKENS, bidirectional=True)  # logit i predicts token i + 1
  ours = _ours(model, params, TOKENS)  # ours: logit i predicts token i
  np.testing.assert_allclose(ours[:, 1:], raw[:, :-1], atol=1e-4, rtol=0)
  np.testing.assert_allclose(ours[:, 0], raw[:, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', ['llama', 'qwen3', 'mistral', 'llada', 'dream'])
def test_import_export_import_is_bit_identical_and_transformers_loads_the_export(
    folders, name, tmp_path):
  import transformers
  folder, ref = folders[name]
  model, params, tok, config = load_hf_run(folder)
  mask_id = config.loss.mask_id if config.paradigm == 'masked_diffusion' else None
  out = export_params(params, model.cfg, config.paradigm, str(tmp_path / 'out'), mask_id=mask_id,
                      max_shard_bytes=40_000)  # several shards and an index
  assert os.path.exists(tmp_path / 'out' / 'model.safetensors.index.json')
  again = load_hf(out)[1]
  jax.tree.map(np.testing.assert_array_equal, params, again)
  if config.paradigm == 'autoregressive':
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(hf_models.torch_logits(loaded, TOKENS),
                               hf_models.torch_logits(ref, TOKENS), atol=1e-5, rtol=0)
  else:
    with open(os.path.join(out, 'config.json')) as f:
      exported = json.load(f)
    with open(os.path.join(folder, 'config.json')) as f:
      original = json.load(f)
    for key in ('architectures', 'mask_token_id', 'vocab_size'):
      assert exported[key] == original[key], key


def test_a_bf16_checkpoint_converts_to_float32_params(folders, tmp_path):
  import torch
  folder, ref = folders['qwen2']
  ref.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
  ref.to(torch.float32)
  model, params, _ = load_hf(str(tmp_path / 'bf16'))
  assert params['embed']['embedding'].dtype == jnp.float32
  want = load_hf(folder)[1]['embed']['embedding']
  np.testing.assert_allclose(params['embed']['embedding'], want, atol=1e-2)
  _, bf, _ = load_hf(str(tmp_path / 'bf16'), dtype='bfloat16')
  assert bf['layers']['attn']['wq'].dtype == jnp.bfloat16


# --- bad input: one clear message, nothing loaded half-way ----------------------------------------

def _copy(src, dst, config_edit=None, drop=()):
  import shutil
  shutil.copytree(src, dst)
  if config_edit:
    path = os.path.join(dst, 'config.json')
    with open(path) as f:
      c = json.load(f)
    config_edit(c)
    with open(path, 'w') as f:
      json.dump(c, f)
  for name in drop:
    os.remove(os.path.join(dst, name))
  return str(dst)


def test_bad_folders_say_what_is_wrong(folders, tmp_path):
  from safetensors.numpy import save_file
  llama = folders['llama'][0]
  cases = {
      'unknown architecture': (_copy(llama, tmp_path / 'a', lambda c: c.update(
          architectures=['GPTNeoXForCausalLM'])), r"GPTNeoXForCausalLM.*not supported"),
      'yarn': (_copy(llama, tmp_path / 'b', lambda c: c.update(
          rope_scaling={'rope_type': 'yarn', 'factor': 4.0}, rope_parameters=None)),
               r"rope_scaling type 'yarn' is not supported"),
      'shape': (_copy(llama, tmp_path / 'c', lambda c: c.update(intermediate_size=80)),
                r"mlp.gate_proj.weight' has shape \[96, 64\] but config.json implies \[80, 64\]"),
      'o_proj bias': (_copy(llama, tmp_path / 'd', lambda c: c.update(attention_bias=True)),
                      'attention_bias=true'),
  }
  # a pickle checkpoint, never opened
  pk = _copy(llama, tmp_path / 'e', drop=['model.safetensors'])
  with open(os.path.join(pk, 'pytorch_model.bin'), 'wb') as f:
    f.write(b'\x80\x04not really a pickle')
  cases['pickle'] = (pk, r'pickle checkpoint.*never unpickles.*safetensors')
  # a sharded folder missing one shard
  model, params, _ = load_hf(llama)
  sharded = export_params(params, model.cfg, 'autoregressive', str(tmp_path / 'f'),
                          max_shard_bytes=40_000)
  os.remove(os.path.join(sharded, 'model-00002-of-' + sorted(os.listdir(sharded))[-2][-17:]))
  cases['missing shard'] = (sharded, r'names shard\(s\) .*model-00002.* not in the folder')
  # an integer tensor where a weight should be
  bad = _copy(llama, tmp_path / 'g')
  from safetensors.numpy import load_file
  weights = load_file(os.path.join(bad, 'model.safetensors'))
  weights['model.norm.weight'] = np.ones(64, np.int32)
  save_file(weights, os.path.join(bad, 'model.safetensors'))
  cases['int dtype'] = (bad, r"'model.norm.weight' has dtype I32, which cannot stand for a float")
  for what, (folder, pattern) in cases.items():
    with pytest.raises(CheckpointError, match=pattern):
      load_hf(folder)


def test_a_tokenizer_larger_than_the_model_is_refused(folders, tmp_path):
  from pipelines.subword import train_bpe
  folder = _copy(folders['llama'][0], tmp_path / 'tok')
  train_bpe(['def f(x):\n  return x\n'] * 20, 300).save(folder)  # > 258 ids (bytes), > 101
  with pytest.raises(CheckpointError, match=r'tokenizer.json has 2\d\d ids but the model embeds only 101'):
    load_hf(folder)


def test_cli_sample_hf_json_and_one_line_errors(folders, tmp_path):
  folder, ref = folders['qwen3']
  proc = run_python(['-m', 'sample', '--hf', folder, '--prompt-ids', '1,2,3', '--max-new-tokens',
                     '16', '--temperature', '0', '--num', '1', '--json'])
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  assert len(rows) == 1 and len(rows[0]['tokens']) == 16 and 'text' in rows[0]
  assert rows[0]['tokens'] == _hf_greedy(ref, np.array([[1, 2, 3]]), 16)[0, 3:].tolist()
  proc = run_python(['-m', 'sample', '--hf', folders['llada'][0], '--prompt-ids', '1,2,3',
                     '--max-new-tokens', '8', '--temperature', '0', '--num', '1', '--json',
                     '--strategy', 'topk'])
  assert len(json.loads(proc.stdout.splitlines()[0])['tokens']) == 8
  bad = _copy(folder, tmp_path / 'bad', lambda c: c.update(architectures=['Gemma3ForCausalLM']))
  proc = run_python(['-m', 'sample', '--hf', bad, '--prompt-ids', '1'], check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: config.json architectures=')


SHARDED = r'''
import sys, jax, numpy as np, jax.numpy as jnp
from train.hf import load_hf
from train.state import make_mesh
folder = sys.argv[1]
model, single, _ = load_hf(folder)
mesh = make_mesh((1, 4, 2))
sharded_model, sharded, _ = load_hf(folder, mesh=mesh)
wq = sharded['layers']['attn']['wq']
assert len(wq.sharding.device_set) == 8 and not wq.sharding.is_fully_replicated, wq.sharding
shard_shapes = {tuple(s.data.shape) for s in wq.addressable_shards}
tokens = jnp.asarray(np.arange(24).reshape(2, 12) % 90)
a = model.apply({'params': single}, tokens)[0]
with jax.set_mesh(mesh):
  b = jax.jit(lambda p, t: sharded_model.apply({'params': p}, t)[0])(sharded, tokens)
host = jax.device_get(sharded)
V = single['embed']['embedding'].shape[0]
assert host['embed']['embedding'].shape[0] == 128 and not host['embed']['embedding'][V:].any()
host['embed']['embedding'] = host['embed']['embedding'][:V]
jax.tree.map(np.testing.assert_array_equal, single, host)
np.testing.assert_allclose(np.asarray(a), np.asarray(b)[..., :V], atol=1e-5)
assert (np.asarray(b)[..., V:] == -1e6).all()  # padded rows are never sampled
print('OK', sorted(shard_shapes))
'''


def test_sharded_load_on_8_devices_equals_one_device(folders, tmp_path):
  script = tmp_path / 'sharded.py'
  script.write_text(SHARDED)
  proc = run_python([str(script), folders['qwen3'][0]], devices=8)
  assert 'OK' in proc.stdout
  # wq [2, 64, 4, 24]: embed over fsdp=4, heads over tensor=2
  assert '(2, 16, 2, 24)' in proc.stdout


def test_streaming_load_peak_host_memory_is_one_leaf_plus_a_tensor(tmp_path):
  """tracemalloc sees every numpy buffer of the load, the placed params among them (on CPU a
  device array may keep the numpy buffer it was made from): the peak stays under the params
  plus 1.5x the largest tensor in the file, where a load that read every tensor before placing
  them would hold the model twice (2 x 12 MB here)."""
  import tracemalloc
  import torch
  import transformers
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                                 num_attention_heads=4, vocab_size=2048, tie_word_embeddings=False)
  transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / 'm')
  _, params, _ = load_hf(str(tmp_path / 'm'))
  leaves = jax.tree.leaves(params)
  largest_leaf, total = max(x.nbytes for x in leaves), sum(x.nbytes for x in leaves)
  largest_tensor = 2048 * 256 * 4  # the embedding (and the head), float32
  tracemalloc.start()
  load_hf(str(tmp_path / 'm'))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak < total + 1.5 * largest_tensor < 2 * total, (peak, largest_leaf, total)


def test_a_lora_model_unmerged_in_transformers_equals_our_merged_model(folders):
  """Logits of the LoRA model y = x W^T + (alpha/r) (x A) B, computed *unmerged* by forward hooks
  on transformers' own Linear layers, equal ours from `lora.merge`d params to 1e-5 (the LoRA
  paper's eq. 3, both sides of its equality). Adapters in our layout: A [n_in, r], B [r, n_out],
  whose flattened axes are HF's in/out orders (q_proj out = (head, head_dim))."""
  import torch
  from paradigms.nn import lora
  folder, ref = folders['llama']
  model, params, _ = load_hf(folder)
  adapters = lora.init_adapters(params, 3, jax.random.key(1))
  adapters = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(2), x.shape),
                          adapters)  # B != 0
  alpha, r = 6.0, 3
  names = {'attn.wq': 'self_attn.q_proj', 'attn.wk': 'self_attn.k_proj',
           'attn.wv': 'self_attn.v_proj', 'attn.wo': 'self_attn.o_proj',
           'mlp.w_gate': 'mlp.gate_proj', 'mlp.w_up': 'mlp.up_proj', 'mlp.w_out': 'mlp.down_proj'}
  hooks = []
  for key, ab in adapters.items():
    for i, layer in enumerate(ref.model.layers):
      A, B = (torch.tensor(np.asarray(ab[n][i])) for n in 'ab')
      linear = layer.get_submodule(names[key.removeprefix('layers.')])
      hooks.append(linear.register_forward_hook(
          lambda mod, inp, out, A=A, B=B: out + (alpha / r) * (inp[0] @ A) @ B))
  try:
    unmerged = hf_models.torch_logits(ref, TOKENS)
  finally:
    for h in hooks:
      h.remove()
  merged = _ours(model, lora.merge(params, adapters, alpha=alpha, rank=r), TOKENS)
  assert np.abs(unmerged - hf_models.torch_logits(ref, TOKENS)).max() > 0.1  # the branches matter
  np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
