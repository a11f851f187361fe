"""A notebook-style tour, in-process: build a tiny model, train it a few steps with the library's
own functions, and sample it with a jitted sampler. Two families: a causal LM on the embedded
CPython-source corpus, and a flow DiT on the procedural glyph images (a PNG grid).

    python examples/quickstart.py [--out examples_out]      # ~1 minute on 2 CPU cores

Each block is what a notebook cell would hold. Nothing here touches disk but the PNG it writes
(and the corpus cache the data layer builds once under ~/.cache/jax_paradigms).
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import paradigms
from evaluators.images import image_grid
from paradigms.autoregressive import LogitsFn
from paradigms.image_diffusion import Denoiser
from pipelines.glyphs import encode_text
from pipelines.sources import open_data
from pipelines.text import ByteTokenizer
from sample.autoregressive import generate
from sample.image_diffusion import cfg_denoiser, flow_sigmas, sample
from train.config import from_file
from train.state import device_batch, make_mesh, setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_steps(config, steps: int):
  """The trainer's own pieces, without its loop: a sharded setup on this machine's devices, the
  config's data pipeline, and `steps` calls of the jitted, donated train step."""
  s = setup(config, paradigms.get(config.paradigm), make_mesh(config.mesh.shape))
  data = open_data(config.data)
  batches = iter(data.train_dataset(batch_size=config.data.batch_size, seed=0))
  state, rng = s.init(jax.random.key(0)), jax.random.key(1)
  for step in range(steps):
    state, metrics = s.train_step(state, device_batch(next(batches), s.batch_sharding), rng)
    if step in (0, steps - 1):
      print(f'  step {step + 1:3d}: loss {float(metrics["loss"]):.3f}')
  return s.model, (state.ema if state.ema is not None else state.params)


def text_lm(steps: int) -> str:
  """A 39k-parameter causal LM (configs/ar_code.py:tiny) and the KV-cache sampler."""
  config = from_file(os.path.join(ROOT, 'configs/ar_code.py:tiny'))
  model, params = train_steps(config, steps)
  tok = ByteTokenizer()
  prompt = jnp.asarray([tok.encode('def ')] * 2)  # [B, P]
  out = generate(LogitsFn(model), params, prompt, jax.random.key(2),
                 model.init_cache(2, prompt.shape[1] + 48), max_new_tokens=48,
                 temperature=0.8, eos_id=tok.EOS)  # one jitted while_loop
  return tok.decode(np.asarray(out.tokens[0, :int(out.lengths[0])]))


def glyph_dit(steps: int, out_png: str) -> tuple:
  """A tiny class-conditional flow DiT (configs/dit_glyphs.py:tiny) and Euler with guidance."""
  config = from_file(os.path.join(ROOT, 'configs/dit_glyphs.py:tiny'))
  model, params = train_steps(config, steps)
  d = config.data
  labels = jnp.asarray([encode_text(t, d.alphabet, d.max_chars) for t in ['7', 'A', '42', 'XY']])
  D = cfg_denoiser(Denoiser(model, 'flow'), 2.0, 0)  # D(x; sigma, label), guidance w = 2
  shape = (len(labels), d.image_size, d.get('image_width', 0) or d.image_size, d.channels)
  out = sample('euler', D, params, flow_sigmas(8), shape, labels, jax.random.key(3))  # one scan
  image_grid(out.x, zoom=4).save(out_png)
  return out.x.shape, int(out.nfe)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='examples_out', help='folder for the PNG grid')
  p.add_argument('--steps', type=int, default=30, help='training steps per model')
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  print('causal LM on the CPython standard library (byte level):')
  print('  sample:', repr(text_lm(args.steps)))
  png = os.path.join(args.out, 'glyphs.png')
  print('flow DiT on glyph images:')
  shape, nfe = glyph_dit(args.steps, png)
  print(f'  wrote {png}: images {shape}, {nfe} network evaluations')
  print(f'done in {time.perf_counter() - t0:.0f} s')


if __name__ == '__main__':
  main()
