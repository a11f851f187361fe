"""Block diffusion LM (BD3-LM) on the CPython standard library's source (byte level).

  python -m train --config configs/bd3lm_code.py:small --workdir runs/bd3_b4             # B = 4
  python -m train --config configs/bd3lm_code.py:small,16 --workdir runs/bd3_b16         # B = 16

The argument is `preset[,block_size]` (default block size 4). The network reads
concat(x_t, x_0) under the BD3 mask, so a training step costs about twice an MDLM step.
B = seq_len is MDLM; B = 1 is next-token prediction.
"""
import os

from train.config import from_file


def get_config(arg: str = 'small,4'):
  preset, _, block = arg.partition(',')
  mdlm = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mdlm_code.py')
  c = from_file(f'{mdlm}:{preset or "small"}')
  c.loss.block_size = int(block or 4)
  return c
