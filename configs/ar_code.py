"""Causal transformer LM on the CPython standard library's source (byte level).

  python -m train --config configs/ar_code.py:small --workdir runs/ar_code
  python -m sample --workdir runs/ar_code --prompt 'def ' --num 4 --max-new-tokens 256

Presets (`:tiny`, `:small`, `:base`, `:1b`), figures measured as stated:
  tiny   tests; 2 layers, d=32 (39k params), 30 steps: ~5 s on a 2-core CPU; loss only has to fall.
  small  CPU demo; 4 layers, d=128, 2 heads (886k params), seq 256, batch 32, 800 steps.
         Measured on a 2-core CPU: 14 min 12 s wall (about 8.1k tokens/s), held-out 1.75 bits per
         byte over the whole held-out split (`python -m train.evaluate`); per-file gzip -9 gets
         1.64 there. Samples look like Python (indentation, defs, self.assertEqual(...)).
         Longer: `--config.train.steps=3600` (same model, 29.5M tokens) reached 1.42 held-out bits
         per byte, beating gzip: 82 min wall on the 2-core CPU while sharing it for 50 of them,
         ~61 min alone at the same 8.1k tokens/s.
  base   one GPU; 14 layers, d=768, 12 heads (99M params), seq 1024, batch 64, bf16, cuDNN
         attention, 'dots' remat; 20k steps (1.3B tokens). Train step measured on one H200
         (benchmarks/gpu_speed.py, 2026-11-27): 528k tokens/s, 35% MFU ('dots' beat no remat,
         31%, and 'full', 32%), so 20k steps take ~41 min. Not yet trained to the end;
         held-out bpb well below the small preset's is expected (~1.0 is the goal, unverified).
  1b     TPU pods; 24 layers, d=2048, GQA 16/8 (1.13B params), seq 2048, batch 512, FSDP over
         the pod, 'dots' remat. Not yet trained; estimate: 52B tokens x 7.4 GFLOP/token, ~7.3 h
         on a v5p-64 at 50% MFU. Compiled ahead of time (tpu/aot.py, tpu/README.md): 49.9 GiB
         per device on a v5p-64; on a v5p-8 it needs --config.train.grad_accum=8 (56.8 GiB of
         95; without it XLA asks for 290 GiB).
"""
from train.config import base_config, finalize


def get_config(preset: str = 'small'):
  c = base_config()
  c.paradigm = 'autoregressive'
  c.loss.input_mask_rate = 0.0  # > 0: replace inputs by MASK at this rate (targets whole)
  presets = {'tiny': _tiny, 'small': _small, 'base': _base, '1b': _1b}
  if preset not in presets:
    raise ValueError(f'unknown preset {preset!r} for configs/ar_code.py; choose one of {sorted(presets)}')
  presets[preset](c)
  return finalize(c)


def _tiny(c):
  c.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64)
  c.data.update(seq_len=32, batch_size=8)
  c.train.update(steps=30, warmup_steps=5, lr=3e-3, log_every=10, eval_every=15, eval_batches=2,
                 ckpt_every=15, progress=False)


def _small(c):
  # 2 heads of 64: on a CPU the softmax over [B, H, L, L] costs more than the matmuls
  c.model.update(d_model=128, n_layers=4, n_heads=2, max_len=512)
  c.data.update(seq_len=256, batch_size=32)
  c.train.update(steps=800, warmup_steps=50, lr=3e-3, log_every=25, eval_every=200,
                 eval_batches=16, ckpt_every=200)


def _base(c):
  c.model.update(d_model=768, n_layers=14, n_heads=12, max_len=1024, dtype='bfloat16',
                 attention_impl='cudnn', remat_policy='dots')
  c.data.update(seq_len=1024, batch_size=64)
  c.train.update(steps=20_000, warmup_steps=1000, lr=1e-3, log_every=100, eval_every=1000,
                 eval_batches=32, ckpt_every=1000)


def _1b(c):
  c.model.update(d_model=2048, n_layers=24, n_heads=16, n_kv_heads=8, d_ff=5632, max_len=2048,
                 dtype='bfloat16', attention_impl='', remat_policy='dots')
  c.data.update(seq_len=2048, batch_size=512)
  c.train.update(steps=50_000, warmup_steps=2000, lr=3e-4, log_every=100, eval_every=2000,
                 eval_batches=32, ckpt_every=1000)
  c.mesh.shape = (1, -1, 1)  # pure FSDP over the pod; set tensor > 1 for wider models
