"""Our training step against a PyTorch (eager) model of exactly the same shape, in one run.

  python benchmarks/torch_peer.py --config configs/ar_code.py:small
  python benchmarks/torch_peer.py --config configs/dit_glyphs.py:small

The PyTorch peer is written here from the config (`torch` is a benchmark extra, never a runtime
dependency) and checked to have our parameter count exactly:
  autoregressive  tied embedding, pre-norm blocks (RMSNorm, GQA attention with rotate-half RoPE
                  through F.scaled_dot_product_attention(is_causal=True), SwiGLU), final norm;
                  next-token cross-entropy.
  image_diffusion DiT: patch linear + fixed 2-D sin-cos positions, timestep MLP, label table
                  (pooled into the adaLN condition and prepended as tokens), adaLN-Zero blocks,
                  final adaLN + linear; rectified-flow loss ||F - (eps - x)||^2, t ~ U(0, 1).
Both sides: AdamW with the config's lr schedule (warmup + cosine, set per step on the torch
side), betas, eps and weight decay, global-norm clipping, one
fixed batch from the config's own data pipeline, the same number of threads (torch's default:
one per core; XLA's CPU client uses every core). `--rounds` alternating rounds (ABBA) of
`--steps / --rounds` steps each; the ratio of each round's rates is paired, and its median is
`ours_over_torch`. Losses of both sides after the same steps are printed so a speed-up that
changed the maths would show. Progress goes to stderr; the last line on stdout is one JSON
object. Never asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/ar_code.py:small', help='config file and preset')
  p.add_argument('--steps', type=int, default=24, help='timed steps per side, over all rounds')
  p.add_argument('--rounds', type=int, default=4, help='alternating rounds (ABBA order)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps per side (compiles ours)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override, repeatable, e.g. --set data.batch_size=16')
  args = p.parse_args(argv)
  if args.steps < args.rounds or args.rounds < 1 or args.warmup < 1:
    p.error('need --rounds >= 1, --steps >= --rounds and --warmup >= 1')
  return args


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


# --- the PyTorch peers -------------------------------------------------------------------------

def _torch_modules():
  import torch
  from torch import nn
  import torch.nn.functional as F

  class RMSNorm(nn.Module):
    def __init__(self, d, eps):
      super().__init__()
      self.eps, self.scale = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
      return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale

  class SwiGLU(nn.Module):
    def __init__(self, d, f):
      super().__init__()
      self.gate, self.up = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
      self.out = nn.Linear(f, d, bias=False)

    def forward(self, x):
      return self.out(F.silu(self.gate(x)) * self.up(x))

  class Attention(nn.Module):
    def __init__(self, d, h, k, dh, causal):
      super().__init__()
      self.h, self.k, self.dh, self.causal = h, k, dh, causal
      self.q, self.kv = nn.Linear(d, h * dh, bias=False), nn.Linear(d, 2 * k * dh, bias=False)
      self.o = nn.Linear(h * dh, d, bias=False)

    def forward(self, x, rope):
      B, L, _ = x.shape
      q = self.q(x).view(B, L, self.h, self.dh).transpose(1, 2)  # [B, H, L, Dh]
      k, v = self.kv(x).view(B, L, 2, self.k, self.dh).permute(2, 0, 3, 1, 4)
      if rope is not None:
        cos, sin = rope

        def rot(t):
          t1, t2 = t.chunk(2, dim=-1)
          return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], dim=-1)
        q, k = rot(q), rot(k)
      if self.k != self.h:
        k = k.repeat_interleave(self.h // self.k, dim=1)
        v = v.repeat_interleave(self.h // self.k, dim=1)
      y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
      return self.o(y.transpose(1, 2).reshape(B, L, self.h * self.dh))

  class Block(nn.Module):
    def __init__(self, d, h, k, dh, f, eps, causal, cond):
      super().__init__()
      self.n1, self.n2 = RMSNorm(d, eps), RMSNorm(d, eps)
      self.attn, self.mlp = Attention(d, h, k, dh, causal), SwiGLU(d, f)
      self.ada = nn.Linear(d, 6 * d) if cond else None

    def forward(self, x, rope=None, c=None):
      if self.ada is None:
        x = x + self.attn(self.n1(x), rope)
        return x + self.mlp(self.n2(x))
      b1, s1, g1, b2, s2, g2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
      x = x + g1 * self.attn(self.n1(x) * (1 + s1) + b1, rope)
      return x + g2 * self.mlp(self.n2(x) * (1 + s2) + b2)

  class LM(nn.Module):
    """Our Transformer (paradigms.nn.transformer) for the autoregressive paradigm."""

    def __init__(self, c):
      super().__init__()
      self.c = c
      self.embed = nn.Embedding(c.padded_vocab, c.d_model)
      self.blocks = nn.ModuleList(
          Block(c.d_model, c.n_heads, c.kv_heads, c.head_size, c.ff_size, c.norm_eps, True, False)
          for _ in range(c.n_layers))
      self.norm = RMSNorm(c.d_model, c.norm_eps)
      self.head = None if c.tie_embeddings else nn.Linear(c.d_model, c.padded_vocab, bias=False)
      for p in self.parameters():
        if p.dim() > 1:
          nn.init.normal_(p, std=0.02)

    def loss(self, batch):
      tokens = batch['tokens']
      inputs, targets = tokens[:, :-1], tokens[:, 1:]
      L, dh = inputs.shape[1], self.c.head_size
      inv = 1.0 / self.c.rope_base ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)
      theta = torch.arange(L, dtype=torch.float32)[:, None] * inv  # [L, Dh/2]
      rope = theta.cos(), theta.sin()
      x = self.embed(inputs)
      for blk in self.blocks:
        x = blk(x, rope)
      x = self.norm(x)
      logits = x @ (self.embed.weight.T if self.head is None else self.head.weight.T)
      return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

  class DiT(nn.Module):
    """Our DiT (paradigms.nn.dit) for the image_diffusion paradigm, flow objective."""

    def __init__(self, c):
      super().__init__()
      from paradigms.nn.dit import sincos_2d
      self.c, d = c, c.d_model
      self.patch = nn.Linear(c.patch_dim, d)
      self.register_buffer('pos', torch.tensor(sincos_2d(c.grid, d)))
      self.t1, self.t2 = nn.Linear(c.freq_dim, d), nn.Linear(d, d)
      self.labels = nn.Parameter(torch.randn(c.label_len, c.label_vocab, d) * 0.02)
      bb = c.backbone()
      self.blocks = nn.ModuleList(
          Block(d, bb.n_heads, bb.kv_heads, bb.head_size, bb.ff_size, c.norm_eps, False, True)
          for _ in range(c.n_layers))
      self.final_ada, self.norm = nn.Linear(d, 2 * d), RMSNorm(d, c.norm_eps)
      self.out = nn.Linear(d, c.patch_dim)

    def forward(self, x, t, label):
      c, p = self.c, self.c.patch_size
      B, H, W, C = x.shape
      patches = x.reshape(B, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5).reshape(
          B, -1, p * p * C)
      half = c.freq_dim // 2
      freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
      args = 1000.0 * t[:, None] * freqs[None]
      cond = self.t2(F.silu(self.t1(torch.cat([args.cos(), args.sin()], -1))))
      lab = self.labels[torch.arange(c.label_len)[None], label]  # [B, S, D]
      cond = cond + lab.sum(1)
      h = torch.cat([lab, self.patch(patches) + self.pos], dim=1)
      for blk in self.blocks:
        h = blk(h, None, cond)
      shift, scale = self.final_ada(F.silu(cond))[:, None].chunk(2, dim=-1)
      out = self.out(self.norm(h[:, c.label_len:]) * (1 + scale) + shift)
      g = H // p
      return out.reshape(B, g, g, p, p, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)

    def loss(self, batch):
      x = batch['image']
      t = torch.rand(x.shape[0])
      eps = torch.randn_like(x)
      tb = t[:, None, None, None]
      return (self(x * (1 - tb) + tb * eps, t, batch['label']) - (eps - x)).pow(2).mean()

  return LM, DiT


def torch_runner(config, cfg, batch):
  """`run(n) -> loss` for the PyTorch peer of `config` on the numpy `batch`."""
  import torch
  LM, DiT = _torch_modules()
  torch.manual_seed(config.train.seed)
  model = LM(cfg) if config.paradigm == 'autoregressive' else DiT(cfg)
  n_ours, n_torch = cfg.num_params(), sum(p.numel() for p in model.parameters())
  if n_ours != n_torch:
    raise SystemExit(f'error: the PyTorch peer has {n_torch:,} params, ours {n_ours:,}: the '
                     'shapes differ, so the comparison would not be fair')
  t = config.train
  decay = [p for n, p in model.named_parameters() if p.dim() > 1]
  other = [p for n, p in model.named_parameters() if p.dim() <= 1]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': t.weight_decay},
                           {'params': other, 'weight_decay': 0.0}],
                          lr=t.lr, betas=(t.b1, t.b2), eps=t.eps)
  batch = {k: torch.from_numpy(v.astype('int64') if v.dtype.kind == 'i' else v)
           for k, v in batch.items()}
  from train.state import make_optimizer
  schedule = make_optimizer(t)[1]  # ours: linear warmup, cosine decay
  step = [0]

  def run(n):
    loss = None
    for _ in range(n):
      for group in opt.param_groups:
        group['lr'] = float(schedule(step[0]))
      step[0] += 1
      opt.zero_grad(set_to_none=True)
      loss = model.loss(batch)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
      opt.step()
    return float(loss)

  return run, n_torch


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import numpy as np
  import torch
  import jax

  from train import config as config_lib
  from pipelines.sources import open_data
  from train_throughput import apply_overrides, bare_runner

  config = config_lib.from_file(args.config)
  overrides = apply_overrides(config, args.set)
  config_lib.validate(config)
  if config.paradigm not in ('autoregressive', 'image_diffusion'):
    raise SystemExit(f'error: no PyTorch peer for paradigm {config.paradigm!r}; use an '
                     'autoregressive or image_diffusion config')
  cfg = config_lib.model_config(config)
  d = config.data
  data = open_data(d)
  batch = next(iter(data.train_dataset(batch_size=d.batch_size, seed=d.seed + 1)))
  batch = {k: np.asarray(v) for k, v in batch.items()}
  unit = 'tokens' if config.paradigm == 'autoregressive' else 'images'
  per_step = d.batch_size * (d.seq_len if unit == 'tokens' else 1)

  sides = {'ours': bare_runner(config, batch)}
  sides['torch'], n_params = torch_runner(config, cfg, batch)
  compile_s = {}
  for name, run in sides.items():
    tic = time.perf_counter()
    run(args.warmup)
    compile_s[name] = time.perf_counter() - tic
    _log(f'{name}: {args.warmup} warmup steps in {compile_s[name]:.1f}s')
  per_round = args.steps // args.rounds
  rates = {name: [] for name in sides}
  losses = {name: [] for name in sides}
  for r in range(args.rounds):
    for name in (('ours', 'torch') if r % 2 == 0 else ('torch', 'ours')):
      tic = time.perf_counter()
      losses[name].append(sides[name](per_round))
      rates[name].append(per_step * per_round / (time.perf_counter() - tic))
    _log(f'round {r + 1}/{args.rounds}: ours {rates["ours"][-1]:,.0f} {unit}/s, '
         f'torch {rates["torch"][-1]:,.0f} {unit}/s')
  paired = [a / b for a, b in zip(rates['ours'], rates['torch'])]
  out = {
      'config': args.config, 'overrides': overrides, 'paradigm': config.paradigm,
      'device_kind': jax.devices()[0].device_kind, 'params': n_params,
      'torch_version': torch.__version__, 'jax_version': jax.__version__,
      'torch_threads': torch.get_num_threads(), 'unit': unit, 'per_step': per_step,
      'steps_per_round': per_round, 'rounds': args.rounds, 'warmup_s': compile_s,
      f'ours_{unit}_per_s': statistics.median(rates['ours']),
      f'torch_{unit}_per_s': statistics.median(rates['torch']),
      'ours_rounds': rates['ours'], 'torch_rounds': rates['torch'],
      'ours_loss_after_rounds': losses['ours'], 'torch_loss_after_rounds': losses['torch'],
      'ours_over_torch_rounds': paired, 'ours_over_torch': statistics.median(paired),
  }
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
