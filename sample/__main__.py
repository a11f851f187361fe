"""CLI: python -m sample --workdir runs/ar_code --prompt 'def ' --num 4 --max-new-tokens 256

Loads the saved config and the newest checkpoint of --workdir and prints the samples.
"""
from __future__ import annotations

import argparse
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(prog='python -m sample', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True, help='run directory written by python -m train')
  p.add_argument('--prompt', default='', help="text prompt (byte-level corpora), e.g. 'def '")
  p.add_argument('--prompt-ids', default='', help='comma-separated token ids (token-array corpora)')
  p.add_argument('--num', type=int, default=4, help='number of samples (the batch)')
  p.add_argument('--max-new-tokens', type=int, default=256)
  p.add_argument('--temperature', type=float, default=1.0, help='0 = greedy (argmax)')
  p.add_argument('--top-k', type=int, default=0, help='0 = off')
  p.add_argument('--top-p', type=float, default=1.0, help='1 = off')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--no-ema', action='store_true', help='use raw params even if EMA was kept')
  return p.parse_args(argv)


def _prompt_ids(args, config, tok):
  import numpy as np
  if args.prompt_ids:
    ids = [int(x) for x in args.prompt_ids.split(',') if x.strip()]
  elif config.data.source in ('cpython', 'text'):
    ids = tok.encode(args.prompt).tolist()
  else:
    sys.exit('this run was trained on a token array; pass the prompt as --prompt-ids 1,2,3')
  if not ids:  # an empty prompt starts a new document
    ids = [tok.EOS]
  bad = [i for i in ids if not 0 <= i < config.model.vocab_size]
  if bad:
    sys.exit(f'prompt ids {bad} are outside the vocabulary [0, {config.model.vocab_size})')
  return np.asarray([ids] * args.num, np.int32)


def _sample_autoregressive(args, config, model, params, prompt, rng):
  from paradigms.autoregressive import LogitsFn
  from sample.autoregressive import generate
  from train.data import ByteTokenizer
  total = prompt.shape[1] + args.max_new_tokens
  return generate(LogitsFn(model), params, prompt, rng, model.init_cache(args.num, total),
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature or 1.0,
                  greedy=args.temperature == 0, top_k=args.top_k, top_p=args.top_p,
                  eos_id=ByteTokenizer.EOS)


# paradigm name -> sampling entry point: the one place the CLI branches on the paradigm
SAMPLERS = {'autoregressive': _sample_autoregressive}


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax
  from train.checkpoint import load_run
  from train.data import ByteTokenizer
  config, model, params = load_run(args.workdir, args.step, ema=False if args.no_ema else None)
  if config.paradigm not in SAMPLERS:
    sys.exit(f'no sampler for paradigm {config.paradigm!r}; known: {sorted(SAMPLERS)}')
  tok = ByteTokenizer()
  prompt = _prompt_ids(args, config, tok)
  t0 = time.perf_counter()
  out = SAMPLERS[config.paradigm](args, config, model, params, prompt, jax.random.key(args.seed))
  tokens, lengths = jax.device_get((out.tokens, out.lengths))
  dt = time.perf_counter() - t0
  for i in range(args.num):
    text = tok.decode(tokens[i, :lengths[i]])
    print(f'===== sample {i} ({lengths[i] - prompt.shape[1]} new tokens) =====\n{text}')
  print(f'[{int(out.nfe)} network evaluations, {dt:.2f}s including compilation]', file=sys.stderr)


if __name__ == '__main__':
  main()
