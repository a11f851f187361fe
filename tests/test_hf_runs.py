"""Runs and Hugging Face folders: fine-tuning from one (init_from=hf:DIR), exporting our runs to
one (python -m train.export), and runs with a subword tokenizer."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_python
from train.config import from_file
from train.trainer import train

pytest.importorskip('torch')
pytest.importorskip('transformers')

import hf_models  # noqa: E402


def _tiny(name, **changes):
  c = from_file(os.path.join(ROOT, 'configs', f'{name}:tiny'))
  for key, value in changes.items():
    section, _, field = key.partition('.')
    c[section][field] = value
  return c


def _text_corpus(tmp_path):
  root = tmp_path / 'corpus'
  root.mkdir()
  for i in range(6):
    (root / f'm{i}.py').write_text(f'def f{i}(x):\n    return x * {i}\n' * 40)
  return str(root)


def test_init_from_hf_takes_the_folders_model_and_tokenizer_and_lr_0_changes_nothing(tmp_path):
  """Fine-tune a Llama folder (with a BPE tokenizer.json) at lr 0: the run's architecture and
  tokenizer are the folder's, and exporting it gives back the folder's tensors bit for bit."""
  import transformers
  from pipelines.subword import train_bpe
  from safetensors.numpy import load_file
  corpus = _text_corpus(tmp_path)
  tok = train_bpe([open(os.path.join(corpus, f)).read() for f in os.listdir(corpus)], 300)
  folder = str(tmp_path / 'hf')
  cfg = transformers.LlamaConfig(**dict(hf_models.COMMON, vocab_size=320), tie_word_embeddings=False)
  hf_models._perturbed(transformers.LlamaForCausalLM(cfg), 0).save_pretrained(folder)
  tok.save(folder)
  c = _tiny('ar_code.py', **{'train.init_from': f'hf:{folder}', 'train.lr': 0.0,
                             'train.steps': 2, 'train.eval_every': 2, 'train.ckpt_every': 2,
                             'data.source': 'text', 'data.files': corpus,
                             'data.cache_dir': str(tmp_path / 'cache'), 'data.seq_len': 16})
  wd = str(tmp_path / 'run')
  train(c, wd)
  with open(os.path.join(wd, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['d_model'] == 64 and saved['model']['vocab_size'] == 320
  assert saved['data']['text_tokenizer'] == f'hf:{os.path.abspath(folder)}'
  assert os.path.exists(os.path.join(wd, 'tokenizer', 'tokenizer.json'))
  run_python(['-m', 'train.export', '--workdir', wd, '--out', str(tmp_path / 'out')])
  a = load_file(os.path.join(folder, 'model.safetensors'))
  b = load_file(str(tmp_path / 'out' / 'model.safetensors'))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert os.path.exists(tmp_path / 'out' / 'tokenizer.json')


def test_init_from_hf_refuses_the_wrong_paradigm(tmp_path):
  folder = str(tmp_path / 'llada')
  hf_models.llada_model(folder)
  c = _tiny('ar_code.py', **{'train.init_from': f'hf:{folder}'})
  with pytest.raises(ValueError, match="is a 'masked_diffusion' model but paradigm='autoregressive'"):
    train(c, str(tmp_path / 'run'))


@pytest.mark.parametrize('name', ['ar_code.py', 'mdlm_code.py'])
def test_our_runs_export_and_transformers_or_our_import_gives_the_same_logits(tmp_path, name):
  import torch
  import transformers
  from train.checkpoint import load_run
  from train.hf import load_hf
  c = _tiny(name, **{'train.steps': 4, 'train.eval_every': 4, 'train.ckpt_every': 4,
                     'data.cache_dir': str(tmp_path / 'cache')})
  wd = str(tmp_path / 'run')
  train(c, wd)
  out = str(tmp_path / 'out')
  run_python(['-m', 'train.export', '--workdir', wd, '--out', out])
  _, model, params = load_run(wd)
  tokens = np.random.RandomState(0).randint(0, 256, (2, 20))
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(tokens))[0])
  again_model, again, _ = load_hf(out)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(again))
  np.testing.assert_array_equal(ours, np.asarray(again_model.apply({'params': again},
                                                                   jnp.asarray(tokens))[0]))
  with open(os.path.join(out, 'config.json')) as f:
    hf = json.load(f)
  if name == 'ar_code.py':
    assert hf['architectures'] == ['LlamaForCausalLM'] and hf['tie_word_embeddings']
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
      theirs = ref(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  else:
    assert hf['architectures'] == ['LLaDAModelLM'] and hf['mask_token_id'] == 257


def test_a_bpe_run_saves_its_tokenizer_and_samples_text(tmp_path):
  corpus = _text_corpus(tmp_path)
  c = _tiny('ar_code.py', **{'data.source': 'text', 'data.files': corpus,
                             'data.text_tokenizer': 'bpe:300', 'model.vocab_size': 300,
                             'data.cache_dir': str(tmp_path / 'cache'), 'data.seq_len': 16,
                             'train.steps': 4, 'train.eval_every': 4, 'train.ckpt_every': 4})
  wd = str(tmp_path / 'run')
  last = train(c, wd)
  assert last['eval_bpb'] < last['eval_bits_per_token']  # > 1 byte per token
  from train.evaluate import evaluate_run  # reloads the saved config: the vocabulary must follow
  ev = evaluate_run(wd, batches=1)
  assert ev['bpb'] < ev['bits_per_token']
  proc = run_python(['-m', 'sample', '--workdir', wd, '--prompt', 'def f', '--num', '1',
                     '--max-new-tokens', '8', '--json', '--temperature', '0'])
  row = json.loads(proc.stdout.splitlines()[0])
  from pipelines.subword import load_tokenizer_folder
  tok = load_tokenizer_folder(os.path.join(wd, 'tokenizer'))
  assert row['prompt_tokens'] == tok.encode('def f').tolist()
  assert row['text'] == tok.decode(row['tokens'])
