"""CLI: python -m train.export --workdir RUN --out DIR [--dtype bfloat16] [--step N] [--no-ema]

Writes an autoregressive or masked-diffusion run as a Hugging Face-format folder: safetensors
shards and config.json (LlamaForCausalLM, or Qwen2/Qwen3/Mistral when the run uses their
options; LLaDA, or Dream with shifted logits, for masked diffusion), plus tokenizer.json when
the run trained with a subword tokenizer. `transformers` loads the AR folders with
AutoModelForCausalLM and gives the same logits (tests/test_hf.py).
"""
from __future__ import annotations

import sys

from train.cli import ArgumentParser, run_main, writable_dir


def main(argv=None):
  p = ArgumentParser(prog='python -m train.export', description=__doc__.split('\n\n')[1])
  p.add_argument('--workdir', required=True, help='the run (python -m train --workdir)')
  p.add_argument('--out', required=True, help='the folder to write')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--no-ema', action='store_true', help='export raw params even if EMA was kept')
  p.add_argument('--max-shard-gb', type=float, default=2.0, help='safetensors shard size')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  from train.hf import export_run
  out = writable_dir(args.out, '--out')
  export_run(args.workdir, out, dtype=args.dtype, step=args.step,
             ema=False if args.no_ema else None, max_shard_bytes=int(args.max_shard_gb * 2 ** 30))
  print(f'wrote {out}')


if __name__ == '__main__':
  run_main(main)
