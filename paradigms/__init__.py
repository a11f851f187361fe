"""jax-paradigms: generative paradigms as pure JAX/Flax modules.

Each paradigm module exports the same surface: `Config` (the frozen dataclass its network is
built from, filled from `config.model`), `build(model_cfg) -> nn.Module`,
`example_batch(batch_size, data_cfg, model_cfg)` (shapes of one batch), `init(model, rng, batch)`,
`loss(params, batch, rng, *, model, **loss_cfg) -> (scalar, metrics)` and
`evaluate(params, batch, rng, *, model, **loss_cfg)` -> sums, either {'nats', 'tokens'} (bits
per token) or {'<name>_sum', ..., 'count'} (means). Two optional hooks give a paradigm
untrained state: `init_extra(model, params, **loss_cfg) -> pytree` (kept in the train state,
checkpointed; made again from the params a warm start grafts in) and `after_update(params, extra,
aux, rng, *, model, **loss_cfg) -> (params, extra, metrics)`, run after each optimiser update
with `aux` = the loss metrics whose names start with '_' (not logged). A paradigm with
`LOSS_TAKES_EXTRA = True` gets `extra=` (read-only) in `loss` too (DUO's distillation teacher). A paradigm that trains on the tokens of a VQ-VAE run sets `TOKENIZED = True` (the
trainer then loads `config.data.tokenizer` and maps image batches through it). The registry below is the only place that
maps a paradigm's name to its module.
"""
import importlib

PARADIGMS = {
    'autoregressive': 'paradigms.autoregressive',
    'masked_diffusion': 'paradigms.masked_diffusion',
    'image_diffusion': 'paradigms.image_diffusion',
    'next_scale': 'paradigms.next_scale',
    'vqvae': 'paradigms.vqvae',
    'hybrid': 'paradigms.hybrid',
    'raster_ar': 'paradigms.raster_ar',
    'maskgit': 'paradigms.maskgit',
    'transfusion': 'paradigms.transfusion',
    'sedd': 'paradigms.sedd',
    'duo': 'paradigms.duo',
    'embedding': 'paradigms.embedding',
}


def get(name: str):
  """The paradigm module registered under `name`."""
  if name not in PARADIGMS:
    raise ValueError(f'unknown paradigm {name!r}; registered: {sorted(PARADIGMS)}')
  return importlib.import_module(PARADIGMS[name])
