"""Tiny random Hugging Face-format models, built locally with `transformers` (nothing downloads):
one per family, in the published tensor names and config keys (LLaDA and Dream, whose modelling
code is not in `transformers`, are a Llama / Qwen2 model renamed to their names)."""
from __future__ import annotations

import json
import os

import numpy as np

V = 101  # vocabulary of the tiny models
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=V, max_position_embeddings=128)
LLAMA3 = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
          'original_max_position_embeddings': 16}
AR_FAMILIES = {  # name -> (transformers class names, extra config)
    'llama': ('LlamaConfig', 'LlamaForCausalLM', dict(rope_scaling=LLAMA3, tie_word_embeddings=False)),
    'llama_linear_tied': ('LlamaConfig', 'LlamaForCausalLM',
                          dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0},
                               tie_word_embeddings=True)),
    'mistral': ('MistralConfig', 'MistralForCausalLM', dict(sliding_window=5, tie_word_embeddings=False)),
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM', dict(tie_word_embeddings=False)),
    'qwen3': ('Qwen3Config', 'Qwen3ForCausalLM', dict(head_dim=24, tie_word_embeddings=True)),
}
LLADA_NAMES = {'input_layernorm': 'attn_norm', 'post_attention_layernorm': 'ff_norm',
               'self_attn.q_proj': 'q_proj', 'self_attn.k_proj': 'k_proj',
               'self_attn.v_proj': 'v_proj', 'self_attn.o_proj': 'attn_out',
               'mlp.gate_proj': 'ff_proj', 'mlp.up_proj': 'up_proj', 'mlp.down_proj': 'ff_out'}


def _perturbed(model, seed: int):
  """Random weights well away from init (norm scales, biases and all), so every tensor matters."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=g) * 0.05)
  return model.eval()


def ar_model(name: str, folder: str, seed: int = 0):
  """The transformers model of family `name`, saved to `folder` as safetensors. Returns it."""
  import transformers
  import torch
  torch.manual_seed(seed)
  cfg_cls, model_cls, extra = AR_FAMILIES[name]
  cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
  model = _perturbed(getattr(transformers, model_cls)(cfg), seed)
  model.save_pretrained(folder)
  return model


def _save(state: dict, folder: str, config: dict) -> None:
  from safetensors.torch import save_file
  os.makedirs(folder, exist_ok=True)
  save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, 'model.safetensors'),
            metadata={'format': 'pt'})
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f, indent=1)


def llada_model(folder: str, seed: int = 1, mask_id: int = V - 1):
  """A Llama model (the reference) saved under LLaDA's names and config keys."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(**dict(COMMON, num_key_value_heads=4), tie_word_embeddings=False,
                                 rms_norm_eps=1e-5, rope_theta=500000.0)
  model = _perturbed(transformers.LlamaForCausalLM(cfg), seed)
  top = {'model.embed_tokens.weight': 'model.transformer.wte.weight',
         'lm_head.weight': 'model.transformer.ff_out.weight',
         'model.norm.weight': 'model.transformer.ln_f.weight'}
  state = {}
  for k, v in model.state_dict().items():
    if k in top:
      state[top[k]] = v
      continue
    k = k.replace('model.layers.', 'model.transformer.blocks.')
    for a, b in LLADA_NAMES.items():
      k = k.replace(f'.{a}.', f'.{b}.')
    state[k] = v
  _save(state, folder, dict(
      architectures=['LLaDAModelLM'], model_type='llada', d_model=64, n_heads=4, n_kv_heads=4,
      n_layers=2, mlp_hidden_size=96, mlp_ratio=4, vocab_size=V, embedding_size=V,
      mask_token_id=mask_id, rope=True, rope_theta=500000.0, rms_norm_eps=1e-5,
      layer_norm_type='rms', block_type='llama', activation_type='silu', include_bias=False,
      include_qkv_bias=False, weight_tying=False, alibi=False, attention_layer_norm=False,
      max_sequence_length=4096, eos_token_id=V - 2, pad_token_id=V - 2))
  return model


def dream_model(folder: str, seed: int = 2, mask_id: int = V - 1):
  """A Qwen2 model (the reference) saved as Dream: the same names, Dream's config keys."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.Qwen2Config(**COMMON, tie_word_embeddings=False)
  model = _perturbed(transformers.Qwen2ForCausalLM(cfg), seed)
  _save(dict(model.state_dict()), folder, dict(
      architectures=['DreamModel'], model_type='Dream', hidden_size=64, intermediate_size=96,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
      max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
      tie_word_embeddings=False, use_sliding_window=False, sliding_window=None,
      mask_token_id=mask_id, pad_token_id=V - 2, bos_token_id=V - 2, eos_token_id=V - 2,
      hidden_act='silu'))
  return model


def torch_logits(model, tokens: np.ndarray, bidirectional: bool = False) -> np.ndarray:
  """float32 logits [B, L, V] of a transformers model; `bidirectional` passes an all-True 4-D
  mask (the LLaDA / Dream attention on the Llama / Qwen2 reference)."""
  import torch
  t = torch.tensor(np.asarray(tokens), dtype=torch.long)
  kw = {}
  if bidirectional:
    kw['attention_mask'] = torch.ones(t.shape[0], 1, t.shape[1], t.shape[1], dtype=torch.bool)
  with torch.no_grad():
    return model(t, **kw).logits.float().numpy()
