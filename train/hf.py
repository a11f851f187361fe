"""Hugging Face folders as runs: load one, fine-tune from one, export a run as one.

    model, params, tokenizer = load_hf('Meta-Llama-3-8B')            # notebook
    python -m sample --hf DIR --prompt 'def ' --max-new-tokens 64    # CLI (sample/__main__.py)
    python -m train --config configs/ar_code.py:small --config.train.init_from=hf:DIR ...
    python -m train.export --workdir RUN --out DIR

An imported model is a run without a workdir: `hf_config(folder)` is the trainer config it
would have (paradigm from the family, the architecture in `model`, the mask id in `loss`, the
folder's tokenizer in `data.text_tokenizer`), so every sampler and the trainer take it as they
take our own runs. Params are read straight into their shardings (interop/load.py).
"""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import paradigms
from interop.hf import FAMILIES, export_family, from_hf_config, to_hf_config
from interop.load import hf_tensors, load_params
from interop.safetensors_io import CheckpointError, read_config, write_folder
from paradigms.nn.transformer import TransformerConfig
from train import config as config_lib

HF_PREFIX = 'hf:'
# model fields a fine-tune keeps from the user's config: how to compute, not what the model is
RUNTIME_FIELDS = ('dtype', 'param_dtype', 'remat_policy', 'attention_impl', 'dropout', 'max_len',
                  'vocab_multiple')


def hf_folder(spec: str) -> str:
  """'hf:DIR' (or DIR) -> the expanded folder path."""
  return os.path.expanduser(spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec)


def hf_config(folder: str, max_len: int = 4096):
  """The trainer config an imported model gets (see the module doc); locked."""
  imp = from_hf_config(read_config(folder), max_len=max_len)
  c = config_lib.base_config()
  c.paradigm = imp.family.paradigm
  c.model.update(dataclasses.asdict(TransformerConfig(**imp.model)))
  if imp.family.paradigm == 'masked_diffusion':
    from paradigms.masked_diffusion import Options  # the section is the paradigm's own
    c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options(
        mask_id=int(imp.mask_id), schedule='linear', block_size=0, time_conditioning=False)))
  if os.path.exists(os.path.join(folder, 'tokenizer.json')):
    c.data.text_tokenizer = HF_PREFIX + os.path.abspath(folder)
  c.data.seq_len = imp.model['max_len']
  return config_lib.finalize(c)


def _param_shardings(model, mesh, rules):
  """The NamedSharding of every param of `model` on `mesh` under the logical `rules`."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  specs = nn.get_partition_spec(shapes)['params']
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def load_hf(folder: str, *, dtype: str = 'float32', mesh=None, rules=None, max_len: int = 4096,
            vocab_multiple: int | None = None):
  """(model, params, tokenizer) of a Hugging Face-format folder.

  model: our Transformer (the family's paradigm: build it into samplers with
  paradigms.autoregressive.LogitsFn or paradigms.masked_diffusion.LogitsFn(model, mask_id));
  params: `dtype` ('float32' | 'bfloat16'), sharded over `mesh` by the logical `rules`
  (default train.config.DEFAULT_RULES) or on one device when mesh is None, the embedding rows
  padded to a multiple of `vocab_multiple` (default: 128 on a mesh, so the vocabulary shards;
  the padding rows are zeros and their logits masked); tokenizer: a
  pipelines.subword.TextTokenizer (eos_id, bos_id, mask_id, chat template), or None when the
  folder has no tokenizer.json.
  """
  model, params, tokenizer, _ = load_hf_run(folder, dtype=dtype, mesh=mesh, rules=rules,
                                            max_len=max_len, vocab_multiple=vocab_multiple)
  return model, params, tokenizer


def load_hf_run(folder: str, *, dtype: str = 'float32', mesh=None, rules=None, max_len=4096,
                vocab_multiple: int | None = None):
  """(model, params, tokenizer, config): `load_hf` plus the run config (`hf_config`)."""
  folder = hf_folder(folder)
  config = hf_config(folder, max_len=max_len)
  if vocab_multiple is None:
    vocab_multiple = 1 if mesh is None else 128
  config.model.update(param_dtype=dtype, dtype=dtype, vocab_multiple=vocab_multiple)
  model = paradigms.get(config.paradigm).build(config_lib.model_config(config))
  family = from_hf_config(read_config(folder)).family
  shardings = None
  if mesh is not None:
    shardings = _param_shardings(model, mesh, rules or config_lib.DEFAULT_RULES)
  params = load_params(folder, model.cfg, family, shardings, dtype)
  tokenizer = hf_tokenizer(folder, model.cfg.vocab_size)
  return model, params, tokenizer, config


def hf_tokenizer(folder: str, vocab_size: int):
  """The folder's TextTokenizer (None without tokenizer.json), checked against the model's
  vocabulary: a tokenizer with ids the model cannot embed is refused (a model vocabulary
  larger than the tokenizer's, padded as Qwen's is, is fine)."""
  from pipelines.subword import load_tokenizer_folder
  if not os.path.exists(os.path.join(folder, 'tokenizer.json')):
    return None
  tok = load_tokenizer_folder(folder, read_config(folder))
  if tok.vocab_size > vocab_size:
    raise CheckpointError(f'{folder}: tokenizer.json has {tok.vocab_size} ids but the model embeds '
                          f'only {vocab_size} (config.json vocab_size); the tokenizer belongs to '
                          'another model')
  return tok


def apply_init_from_hf(config) -> None:
  """For `train.init_from=hf:DIR`: the architecture fields of config.model become the imported
  model's (runtime fields such as dtype and remat stay), masked diffusion takes its mask id, and
  text data takes the folder's tokenizer unless data.text_tokenizer names another. Refuses a
  paradigm the family does not have."""
  folder = hf_folder(config.train.init_from)
  hf = hf_config(folder, max_len=config.model.max_len)
  if config.paradigm != hf.paradigm:
    raise ValueError(f'train.init_from={config.train.init_from!r} is a {hf.paradigm!r} model '
                     f'but paradigm={config.paradigm!r}; use a {hf.paradigm} config (e.g. '
                     f'configs/{"ar" if hf.paradigm == "autoregressive" else "mdlm"}_code.py)')
  keep = {k: config.model[k] for k in RUNTIME_FIELDS}
  for k in hf.model.keys():
    config.model[k] = keep.get(k, hf.model[k])
  if config.paradigm == 'masked_diffusion':
    config.loss.mask_id = hf.loss.mask_id
  if not config.data.text_tokenizer and hf.data.text_tokenizer:
    config.data.text_tokenizer = hf.data.text_tokenizer


def load_into(params, spec: str, model_cfg):
  """The imported params of `spec` ('hf:DIR') in the shardings and dtypes of `params` (a fresh
  train state's, same architecture)."""
  folder = hf_folder(spec)
  family = from_hf_config(read_config(folder)).family
  shardings = jax.tree.map(lambda a: a.sharding, params)
  loaded = load_params(folder, model_cfg, family, shardings, model_cfg.param_dtype)
  return jax.tree.map(lambda new, old: new.astype(old.dtype), loaded, params)


def export_params(params, model_cfg, paradigm: str, out: str, *, dtype: str = 'float32',
                  mask_id: int | None = None, bos_id=None, eos_id=None, tokenizer=None,
                  max_shard_bytes: int = 2 ** 31) -> str:
  """Write `params` of a Transformer as a Hugging Face folder (family by `export_family`):
  safetensors shards + config.json (+ the tokenizer's files). Returns `out`."""
  family = export_family(model_cfg, paradigm)
  hf = to_hf_config(model_cfg, family, mask_id=mask_id, bos_id=bos_id, eos_id=eos_id,
                    dtype=dtype)
  write_folder(out, hf_tensors(params, model_cfg, family, dtype), hf,
               max_shard_bytes=max_shard_bytes)
  if tokenizer is not None and hasattr(tokenizer, 'save'):
    tokenizer.save(out)
  return out


def export_run(workdir: str, out: str, *, dtype: str = 'float32', step: int | None = None,
               ema: bool | None = None, max_shard_bytes: int = 2 ** 31) -> str:
  """A trained autoregressive or masked-diffusion run (its EMA params when kept) as a Hugging
  Face folder: LlamaForCausalLM (Qwen2/Qwen3/Mistral when it uses their options) or LLaDA
  (Dream with shifted logits). The byte-level tokenizer has no tokenizer.json; a run with a
  subword tokenizer writes its tokenizer.json."""
  from train.checkpoint import load_run, load_text_tokenizer
  config, model, params = load_run(workdir, step, ema=ema)
  if config.paradigm not in ('autoregressive', 'masked_diffusion'):
    raise ValueError(f'{workdir} is a {config.paradigm!r} run; only autoregressive and '
                     'masked_diffusion runs export to a Hugging Face family')
  tok = load_text_tokenizer(config, workdir)
  mask_id = config.loss.mask_id if config.paradigm == 'masked_diffusion' else None
  return export_params(params, model.cfg, config.paradigm, out, dtype=dtype, mask_id=mask_id,
                       bos_id=tok.bos_id, eos_id=tok.eos_id, tokenizer=tok,
                       max_shard_bytes=max_shard_bytes)


__all__ = ['FAMILIES', 'HF_PREFIX', 'apply_init_from_hf', 'export_params', 'export_run',
           'hf_config', 'load_hf', 'load_hf_run', 'load_into']
