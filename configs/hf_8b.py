"""The shapes of two published 8B models, for ahead-of-time compilation (no weights needed):

  python tpu/aot.py --config configs/hf_8b.py:llama3_8b --topology v5p:2x2x1       # full FT
  python tpu/aot.py --config configs/hf_8b.py:llada_8b_lora --topology v5e:2x4     # LoRA FT
  python tpu/aot.py --config configs/hf_8b.py:llama3_8b --topology v5e:2x4 \\
      --mode decode --decode-batch 32 --config.mesh.shape='(1,1,8)'                # bf16 decode

Presets: tiny / small (the Llama-3 recipe scaled down to run here on the embedded code bytes:
GQA, untied head, rope_theta 500000, FSDP mesh; tiny runs in seconds, small in CPU minutes; add
--config.lora.rank=4 to train adapters on them), llama3_8b / llada_8b (full fine-tuning: float32 params and Adam, bf16 compute, 'dots'
remat, FSDP over the slice) and llama3_8b_lora / llada_8b_lora (LoRA rank 16 on the attention
and MLP projections, bf16 frozen base). Architectures from the published config.json files:
  Llama-3-8B   hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 128256,
               rope_theta 500000, rms_norm_eps 1e-5, untied head  (LlamaForCausalLM)
  LLaDA-8B     d_model 4096, 32 layers, 32 heads (no GQA), mlp_hidden_size 12288,
               vocab 126464, rope_theta 500000, rms_norm_eps 1e-5, untied, bidirectional,
               mask_token_id 126336  (LLaDAModelLM)
To fine-tune a real folder, use --config.train.init_from=hf:DIR with configs/ar_code.py or
configs/mdlm_code.py instead: the architecture is read from the folder. Measured fits are in
docs/hf.md.
"""
import dataclasses

import ml_collections

from paradigms.masked_diffusion import Options
from train.config import base_config, finalize

LLAMA3_8B = dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                 d_ff=14336, rope_base=500000.0, norm_eps=1e-5, tie_embeddings=False,
                 max_len=8192)
LLADA_8B = dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                d_ff=12288, rope_base=500000.0, norm_eps=1e-5, tie_embeddings=False,
                max_len=4096, mask='bidirectional')


def get_config(preset: str = 'llama3_8b'):
  presets = ('tiny', 'small', 'llama3_8b', 'llada_8b', 'llama3_8b_lora', 'llada_8b_lora')
  if preset not in presets:
    raise ValueError(f'unknown preset {preset!r} for configs/hf_8b.py; choose one of {presets}')
  c = base_config()
  if preset in ('tiny', 'small'):
    return finalize(_scaled_down(c, preset))
  if preset.startswith('llada'):
    c.paradigm = 'masked_diffusion'
    c.model.update(LLADA_8B)
    c.loss = ml_collections.ConfigDict(dataclasses.asdict(Options(mask_id=126336,
                                                                  schedule='linear')))
  else:
    c.model.update(LLAMA3_8B)
  c.model.update(dtype='bfloat16', remat_policy='dots', attention_impl='')
  c.data.update(seq_len=2048, batch_size=32)
  c.train.update(steps=1000, warmup_steps=50, lr=1e-5, grad_accum=4)
  c.mesh.shape = (1, -1, 1)  # FSDP over the slice
  if preset.endswith('_lora'):
    c.model.param_dtype = 'bfloat16'  # the frozen base in bf16
    c.lora.rank = 16
    c.train.lr = 2e-4
  return finalize(c)


def _scaled_down(c, preset):
  """Llama-3-8B's recipe at a size this machine trains: the same ratios (GQA 2:1 heads, untied
  head, d_ff 3.5 d, rope_theta 500000), byte vocabulary."""
  shape = dict(rope_base=500000.0, norm_eps=1e-5, tie_embeddings=False)
  c.mesh.shape = (1, -1, 1)
  if preset == 'tiny':
    c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=112, max_len=64, **shape)
    c.data.update(seq_len=32, batch_size=8)
    c.train.update(steps=30, warmup_steps=5, lr=3e-3, log_every=10, eval_every=15,
                   eval_batches=2, ckpt_every=15, progress=False)
  else:
    c.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=448, max_len=512,
                   **shape)
    c.data.update(seq_len=256, batch_size=32)
    c.train.update(steps=800, warmup_steps=50, lr=3e-3, log_every=25, eval_every=200,
                   eval_batches=16, ckpt_every=200)
  return c
