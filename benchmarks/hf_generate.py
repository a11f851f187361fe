"""Greedy decode speed: our jitted KV-cache sampler against `transformers`' `generate` (PyTorch).

  python benchmarks/hf_generate.py                        # ~134M-param Llama, batches 1 and 16
  python benchmarks/hf_generate.py --tiny                 # smoke run (seconds)
  JAX_PLATFORMS=cpu python benchmarks/hf_generate.py      # keep JAX on the CPU beside torch

Both sides decode the SAME weights from the SAME prompts in one run:
  - a Llama-shaped `transformers.LlamaForCausalLM` is built locally (random init, fixed torch
    seed; nothing downloads), saved with `save_pretrained` (safetensors) into a temp folder;
  - ours: `train.hf.load_hf(folder)`, then `sample.autoregressive.generate` (one jitted
    `lax.while_loop` over a preallocated KV cache) with `paradigms.autoregressive.LogitsFn`;
  - theirs: `model.generate(do_sample=False)` in `torch.inference_mode()` on the CPU, with its
    default cache, `torch.set_num_threads(os.cpu_count())`.
Prompts are random ids (fixed seed) of `--prompt-len`; N = `--new-tokens` greedy tokens with no
EOS stop (transformers: `generation_config.eos_token_id = None`, `pad_token_id=0`), so both write
exactly N tokens. Per batch size: one untimed call each (our compile + run, their warm-up), then
`--repeats` timed rounds alternating ours/theirs (the order flips each round so machine noise
falls on both). tokens/s = batch * N / median seconds (prefill included).

Reading a row: `ratio` = ours_tok_s / theirs_tok_s (> 1: we are faster). `same_tokens` compares
the greedy tokens of the untimed calls, row by row (`first_mismatch`: [row, index among the new
tokens] of the first difference, else null); in float32 they should agree, and a rare late
mismatch is a near-tie of two logits flipped by rounding. `device` is JAX's device: when it is an
accelerator, the comparison is that device against torch on the CPU (`theirs_device`).
One JSON object per batch row goes to stdout and is appended to `--out`; progress to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time

from results_io import emit  # benchmarks/results_io.py (this script's folder is on sys.path)

FULL = dict(hidden=768, layers=12, heads=12, intermediate=2048, vocab=32000, new_tokens=128,
            prompt_len=32, repeats=3)
TINY = dict(hidden=64, layers=2, heads=4, intermediate=128, vocab=256, new_tokens=8,
            prompt_len=32, repeats=2)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'hf_generate.jsonl')


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for k in ('hidden', 'layers', 'heads', 'intermediate', 'vocab'):
    p.add_argument(f'--{k}', type=int, default=None, help=f'model {k} (default {FULL[k]})')
  p.add_argument('--batches', default='1,16', help='comma-separated batch sizes')
  p.add_argument('--new-tokens', type=int, default=None, help=f'N (default {FULL["new_tokens"]})')
  p.add_argument('--prompt-len', type=int, default=None, help=f'P (default {FULL["prompt_len"]})')
  p.add_argument('--repeats', type=int, default=None,
                 help=f'timed rounds (default {FULL["repeats"]})')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--tiny', action='store_true',
                 help='smoke run: hidden 64, 2 layers, vocab 256, 8 new tokens (flags still win)')
  p.add_argument('--out', default=OUT, help="JSONL file the rows are appended to ('' for none)")
  args = p.parse_args(argv)
  for k, v in (TINY if args.tiny else FULL).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.batches = [int(b) for b in args.batches.split(',') if b]
  if min(args.batches + [args.new_tokens, args.prompt_len, args.repeats]) < 1:
    p.error('--batches, --new-tokens, --prompt-len and --repeats must all be >= 1')
  if args.hidden % args.heads:
    p.error(f'--hidden {args.hidden} is not a multiple of --heads {args.heads}')
  return args


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def build_reference(args, folder):
  """The transformers model (random init, fixed seed), saved to `folder`. Returns it."""
  import torch
  import transformers
  transformers.utils.logging.disable_progress_bar()
  torch.manual_seed(args.seed)
  cfg = transformers.LlamaConfig(
      hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
      max_position_embeddings=max(2048, args.prompt_len + args.new_tokens), rms_norm_eps=1e-5,
      tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(cfg).eval()
  if args.dtype == 'bfloat16':
    model = model.to(torch.bfloat16)
  model.save_pretrained(folder)  # safetensors
  model.generation_config.eos_token_id = None  # no EOS stop: exactly N new tokens
  return model


def first_mismatch(a, b):
  """[row, index] of the first differing token of two [B, N] arrays, or None."""
  import numpy as np
  diff = np.argwhere(a != b)
  return None if diff.size == 0 else [int(x) for x in diff[0]]


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  from train.hf import load_hf

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  P, N = args.prompt_len, args.new_tokens
  tmp = tempfile.mkdtemp(prefix='hf_generate_')
  try:
    ref = build_reference(args, tmp)
    n_params = sum(p.numel() for p in ref.parameters())
    _log(f'transformers LlamaForCausalLM: {n_params:,} params ({n_params / 1e6:.1f}M), '
         f'{args.dtype}, torch threads {threads}')
    model, params, _ = load_hf(tmp, dtype=args.dtype, max_len=P + N)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logits_fn = LogitsFn(model)
  dev = jax.devices()[0]
  device = dev.device_kind or dev.platform
  prompts = np.random.default_rng(args.seed).integers(0, args.vocab, (max(args.batches), P))

  rows = []
  for B in args.batches:
    prompt_np = prompts[:B]
    prompt = jnp.asarray(prompt_np, jnp.int32)
    empty = model.init_cache(B, P + N)  # not donated, so every call reuses it
    key = jax.random.key(args.seed)
    prompt_t = torch.as_tensor(prompt_np, dtype=torch.long)
    mask_t = torch.ones_like(prompt_t)

    def ours():
      out = generate(logits_fn, params, prompt, key, empty, max_new_tokens=N, greedy=True)
      return jax.block_until_ready(out.tokens)

    def theirs():
      with torch.inference_mode():
        return ref.generate(prompt_t, attention_mask=mask_t, max_new_tokens=N, do_sample=False,
                            pad_token_id=0)

    tic = time.perf_counter()
    ours_tokens = np.asarray(ours())[:, P:]
    compile_s = time.perf_counter() - tic
    tic = time.perf_counter()
    theirs_tokens = theirs().numpy()[:, P:]
    warmup_s = time.perf_counter() - tic
    if theirs_tokens.shape != (B, N):
      raise RuntimeError(f'transformers wrote {theirs_tokens.shape[1]} new tokens, not {N}')
    _log(f'batch {B}: ours first call (compile + run) {compile_s:.1f}s, theirs warm-up '
         f'{warmup_s:.1f}s')

    seconds = {'ours': [], 'theirs': []}
    fns = {'ours': ours, 'theirs': theirs}
    for i in range(args.repeats):
      for name in (('ours', 'theirs') if i % 2 == 0 else ('theirs', 'ours')):
        tic = time.perf_counter()
        fns[name]()
        seconds[name].append(time.perf_counter() - tic)
        _log(f'batch {B} round {i + 1}/{args.repeats} {name}: {seconds[name][-1]:.3f}s')

    rate = {k: B * N / statistics.median(v) for k, v in seconds.items()}
    mismatch = first_mismatch(ours_tokens, theirs_tokens)
    row = {
        'bench': 'hf_generate',
        'batch': B,
        'new_tokens': N,
        'prompt_len': P,
        'params': n_params,
        'model': dict(hidden=args.hidden, layers=args.layers, heads=args.heads,
                      intermediate=args.intermediate, vocab=args.vocab),
        'dtype': args.dtype,
        'ours_tok_s': rate['ours'],
        'theirs_tok_s': rate['theirs'],
        'ratio': rate['ours'] / rate['theirs'],
        'same_tokens': mismatch is None,
        'first_mismatch': mismatch,
        'ours_seconds': seconds['ours'],
        'theirs_seconds': seconds['theirs'],
        'ours_compile_s': compile_s,
        'theirs_warmup_s': warmup_s,
        'device': device,
        'theirs_device': 'cpu',
        'torch_threads': threads,
        'repeats': args.repeats,
        'versions': dict(jax=jax.__version__, torch=torch.__version__,
                         transformers=transformers.__version__),
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
    }
    emit(row, args.out)
    rows.append(row)
  return rows


if __name__ == '__main__':
  from train.cli import run_main
  run_main(main)
