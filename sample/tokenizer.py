"""A tokenizer run's reconstructions: the ceiling of every model that samples through it.

  python -m sample --workdir runs/vqvae_glyphs --num 48 --zoom 3 --out recon.png --judge

writes held-out images beside their reconstructions decode(f_hat) (VAR Algorithm 1 then 2) and,
with --judge, prints the glyph judge's verdict on three sets of the same images: the real ones,
decode(f) (the autoencoder without quantisation) and decode(f_hat). A VAR or HART sample cannot
be read more often than decode(f_hat) is, so this is the first number to check when their
grids are illegible.
"""
from __future__ import annotations

import functools
import sys
import time

import jax
import numpy as np

from paradigms import vqvae


@functools.partial(jax.jit, static_argnums=0)
def reconstruct(model: vqvae.VQVAE, params, x):
  """x [B, H, W, C] -> (decode(f), decode(f_hat)), both [B, H, W, C]: the autoencoder alone and
  through the multi-scale residual quantiser."""
  _, f, f_hat = vqvae.residual(model, params, x)
  return vqvae.decode(model, params, f), vqvae.decode(model, params, f_hat)


def cli(args, config, model, params, rng) -> None:
  """`python -m sample --workdir W --num N --out recon.png [--zoom --judge]` for a tokenizer run:
  N held-out images and their reconstructions, interleaved (image, decode(f_hat)) on the grid;
  --judge scores each set against its own labels, with the FD against the N real images: the
  protocol of the generators' judge, whose samples are drawn for those images' labels."""
  del rng  # reconstruction is deterministic
  from sample import images
  if args.label:
    sys.exit('--label: a tokenizer run reconstructs held-out images, it does not draw labels; '
             'drop --label')
  if args.judge and config.data.source != 'glyphs':
    sys.exit(f'--judge: the glyph judge reads glyph images; this tokenizer was trained on '
             f'data.source={config.data.source!r}; drop --judge')
  t0 = time.perf_counter()
  ref = images.reference(config, args.num)
  x, labels = ref['image'], ref['label']
  x_f, x_fhat = (np.asarray(a) for a in jax.device_get(reconstruct(model, params, x)))
  pairs = np.stack([x, x_fhat], 1).reshape(2 * args.num, *x.shape[1:])
  cols = 2 * int(np.ceil(np.sqrt(args.num / 2)))
  images.image_grid(pairs, cols=cols, zoom=args.zoom).save(args.out)
  mse = float(np.mean((x_fhat - x) ** 2))
  print(f'wrote {args.out}: {args.num} held-out images, each beside decode(f_hat); mse '
        f'{mse:.5f} per pixel, {time.perf_counter() - t0:.2f}s including compilation',
        file=sys.stderr)
  if args.judge:
    for name, xs in (('real', x), ('decode(f)', x_f), ('decode(f_hat)', x_fhat)):
      print(f'{name}: ', end='')
      images.cli_judge(config, xs, labels, reference_images=x)
