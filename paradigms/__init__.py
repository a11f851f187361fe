"""jax-paradigms: generative paradigms as pure JAX/Flax modules.

Each paradigm module exports the same surface: `build(model_cfg) -> nn.Module`,
`example_batch(batch_size, seq_len)`, `init(model, rng, batch)`,
`loss(params, batch, rng, *, model, **loss_cfg) -> (scalar, metrics)` and
`evaluate(params, batch, rng, *, model) -> {'nats', 'tokens'}`. The registry below is the only
place that maps a paradigm's name to its module.
"""
import importlib

PARADIGMS = {
    'autoregressive': 'paradigms.autoregressive',
    'masked_diffusion': 'paradigms.masked_diffusion',
}


def get(name: str):
  """The paradigm module registered under `name`."""
  if name not in PARADIGMS:
    raise ValueError(f'unknown paradigm {name!r}; registered: {sorted(PARADIGMS)}')
  return importlib.import_module(PARADIGMS[name])
