"""The trainer's config schema: every key a run can set, with defaults that work.

Config files in configs/ start from `base_config()` and change what they need; the result is
locked, so a misspelt key (`--config.train.stpes=10`) fails and names itself. The sections:
  paradigm  registry name (paradigms.PARADIGMS)
  model     fields of the paradigm's `Config` dataclass (the module sees only these)
  loss      keyword arguments of the paradigm's loss() (e.g. z_loss)
  data      the source and its windows or images (pipelines/: text.py, images.py, glyphs.py)
  train     optimiser, schedule, logging, evaluation, checkpoints
  mesh      device mesh shape and the logical-axis -> mesh-axis rules
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections

import paradigms
from paradigms.nn.lora import DEFAULT_TARGETS, QUANT
from paradigms.nn.transformer import TransformerConfig

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis name -> mesh axes. Parameter names: embed, mlp, heads, kv_heads, head_dim, vocab,
# layers, cond. Activation names (kept apart so a tensor never uses one mesh axis twice): batch,
# length, act_embed, act_mlp, act_heads, act_kv_heads, act_vocab.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('act_embed', None),
    ('act_mlp', 'tensor'),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('vocab', 'tensor'),
    ('layers', None),
    ('cond', None),
)


def base_config() -> ml_collections.ConfigDict:
  """Every key with its default (not locked: config files lock after editing)."""
  c = ml_collections.ConfigDict()
  c.paradigm = 'autoregressive'
  c.model = ml_collections.ConfigDict(dataclasses.asdict(TransformerConfig()))
  # the autoregressive loss's options (other paradigms replace the section with their own);
  # xent_chunk > 0: cross-entropy in chunks of that many positions, no full logits (memory)
  c.loss = ml_collections.ConfigDict({'z_loss': 0.0, 'xent_chunk': 0})

  c.data = ml_collections.ConfigDict()
  c.data.source = 'cpython'  # 'cpython' | 'text' | 'tokens'
  c.data.files = ''  # glob of text files (source='text'), e.g. 'corpus/**/*.txt'
  c.data.path = ''  # token array .bin/.npy (source='tokens')
  c.data.eval_path = ''  # optional held-out token array; '' holds out the tail
  c.data.token_dtype = 'uint16'  # dtype of a raw .bin token file
  c.data.holdout_fraction = 0.05
  c.data.train_tokens = 0  # > 0: train on only the first N training tokens (data-constrained)
  c.data.vocab_size = c.model.get_ref('vocab_size')  # token ids must stay below this
  c.data.text_tokenizer = ''  # text: '' = bytes | 'bpe:N' (trained on the corpus) | 'hf:DIR'
  c.data.seq_len = 256
  c.data.query_len = 64  # source='retrieval': query bytes (documents take seq_len)
  c.data.batch_size = 32  # global batch (sequences per optimiser step)
  c.data.seed = 0
  c.data.cache_dir = ''  # '' -> $JAX_PARADIGMS_CACHE or ~/.cache/jax_paradigms
  # Image sources ('glyphs' | 'images' (folder, data.files) | 'npz' (data.path)):
  c.data.image_size = 32
  c.data.channels = 3
  c.data.alphabet = '0123456789ABCDEFGHKMNPRSTUVWXYZ'  # glyph symbols
  c.data.max_chars = 3  # glyph string length bound = label slots of every image source
  c.data.jitter = 1.0  # glyph size/position spread in [0, 1]: 1 = full, 0 = large and centred
  c.data.stroke = 0.0  # glyph letter thickening, a fraction of the font size: 0 regular, 0.06 bold
  c.data.palette = 'colour'  # glyph colours: 'colour' (random ink and ground) | 'mono' (black on white)
  c.data.image_width = 0  # image width W (data.image_size is the height H); 0 = square (W = H)
  c.data.prompts = False  # glyphs: the prompt set (strings of 1..max_chars <= 8, hash-split into
  #                          seen (train) and held-out (eval) strings); False = the label set
  c.data.heldout_strings = 0.2  # prompts: fraction of strings held out of training (by hash)
  c.data.tokenizer = ''  # a trained VQ-VAE workdir: image batches gain its 'tokens' and 'inputs'
  c.data.tokenizer_residual = False  # also 'residual' f - f_hat [B, h*w, Cz] (HART)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.lr = 3e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio at `steps`
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.weight_decay = 0.1
  c.train.clip_norm = 1.0
  c.train.grad_accum = 1  # micro-batches per step; data.batch_size must divide by it
  c.train.ema_decay = 0.0  # > 0 keeps EMA params (used by the sampler when present)
  c.train.ema_halflife_nimg = 0.0  # > 0: EDM's EMA, decay = 0.5 ** (batch_size / halflife)
  c.train.ema_rampup_ratio = 0.05  # EDM: halflife <= images seen x ratio (0 = off)
  c.train.seed = 0
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8  # held-out batches spread over the split; 0 = all of it
  c.train.ckpt_every = 200
  c.train.keep = 3
  c.train.async_checkpoint = True
  c.train.progress = True  # tqdm progress bar
  c.train.stop_at = 0  # > 0: checkpoint and stop at this step without ending the schedule
  c.train.init_from = ''  # a trained run's workdir (its EMA params), or hf:DIR (a Hugging Face
  #                          folder: the model's architecture and tokenizer become the folder's)
  c.train.init_into = ''  # where they go: '' = the whole tree, 'var' = HART's VAR, 'a/b' nested
  c.train.init_partial = False  # True: new leaves the run lacks keep their init (flow -> shortcut)

  # Sample-based evaluation by an external judge (image paradigms): generate `num` samples with
  # `sampler`/`steps`/`cfg` every `every` steps and score them (evaluators/images.py JUDGES).
  c.judge = ml_collections.ConfigDict()
  c.judge.name = ''  # '' = off | 'glyphs' (classifier FD + recognition accuracy)
  c.judge.every = 0  # 0 = only at the end of training (when name is set)
  c.judge.num = 256
  c.judge.sampler = 'heun'
  c.judge.steps = 18
  c.judge.cfg = 1.0  # classifier-free guidance weight (1 = none)
  c.judge.train_steps = 0  # the judge classifier's training steps; 0 = its default

  # LoRA / QLoRA (paradigms/nn/lora.py): rank > 0 trains low-rank adapters on the kernels
  # `targets` matches, the base frozen (from train.init_from, or the seeded init) and never saved
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # 0 = full training
  c.lora.alpha = 16.0  # W' = W + alpha / rank * A B
  c.lora.dropout = 0.0  # rank dropout of A's components during training
  c.lora.targets = DEFAULT_TARGETS  # regex over '/'-joined param paths (attention + MLP)
  c.lora.base_dtype = ''  # QLoRA: '' (the param dtype) | 'int8' | 'nf4' for the frozen base

  # Inference defaults that `python -m sample` reads (its flags override them): int8 weights and
  # an int8 KV cache (paradigms/nn/quant.py, docs/inference.md); training never reads them
  c.sample = ml_collections.ConfigDict()
  c.sample.quantize = ''  # '' = the param dtype | 'int8': weight-only, per-output-channel scales
  c.sample.kv_int8 = False  # True: the KV cache in int8 with per-token, per-head scales

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # sizes of (data, fsdp, tensor); one -1 takes the remaining devices
  c.mesh.rules = DEFAULT_RULES
  return c


def config_arg(arg: str, presets, variants, name: str) -> tuple[str, set]:
  """'preset[,variant...]' of a config file -> (preset, {variants}); a clear error naming the
  choices otherwise. E.g. 'small,prompt' -> ('small', {'prompt'})."""
  preset, *rest = arg.split(',')
  bad = [v for v in rest if v not in variants]
  if preset not in presets or bad:
    what = f'preset {preset!r}' if preset not in presets else f'variant {bad[0]!r}'
    extra = f', optionally followed by ,{" / ,".join(variants)}' if variants else ''
    raise ValueError(f'unknown {what} for {name}; give one of {sorted(presets)}{extra} '
                     f'(e.g. small{"," + variants[0] if variants else ""})')
  return preset, set(rest)


PROMPT_MAX_CHARS = 8


def use_prompts(data: ml_collections.ConfigDict) -> None:
  """The `prompt` variant of the glyph configs: the prompt-conditioned glyph set (strings of 1..8
  characters on H x 2H images, strings split by hash into seen and held-out, pipelines/glyphs.py);
  the condition is the string as max_chars character tokens."""
  data.update(image_width=2 * data.image_size, prompts=True, max_chars=PROMPT_MAX_CHARS)


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Lock the config (unknown keys now fail) and return it."""
  c.lock()
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Cross-field checks, each naming the key to change."""
  t, d = c.train, c.data
  if t.steps < 1:
    raise ValueError(f'train.steps must be >= 1, got {t.steps}')
  if d.batch_size % t.grad_accum:
    raise ValueError(f'data.batch_size={d.batch_size} must be a multiple of train.grad_accum={t.grad_accum}')
  if not 0 <= t.ema_decay < 1:
    raise ValueError(f'train.ema_decay must be in [0, 1), got {t.ema_decay}')
  if t.ema_halflife_nimg < 0 or (t.ema_halflife_nimg and t.ema_decay):
    raise ValueError('set at most one of train.ema_decay and train.ema_halflife_nimg (>= 0), got '
                     f'{t.ema_decay} and {t.ema_halflife_nimg}')
  if len(c.mesh.shape) != len(MESH_AXES):
    raise ValueError(f'mesh.shape must give sizes for {MESH_AXES}, got {tuple(c.mesh.shape)}')
  if c.judge.every < 0 or c.judge.num < 1 or c.judge.steps < 1:
    raise ValueError('judge.every must be >= 0 and judge.num, judge.steps >= 1, got '
                     f'{c.judge.every}, {c.judge.num}, {c.judge.steps}')
  for key in ('log_every', 'eval_every', 'ckpt_every', 'keep'):
    if t[key] < 1:
      raise ValueError(f'train.{key} must be >= 1, got {t[key]}')
  if (t.init_into or t.init_partial) and not t.init_from:
    raise ValueError('train.init_into / train.init_partial need train.init_from (a trained '
                     'workdir)')
  lc = c.lora
  if lc.rank < 0 or not 0 <= lc.dropout < 1 or lc.base_dtype not in QUANT:
    raise ValueError(f'lora.rank must be >= 0, lora.dropout in [0, 1) and lora.base_dtype one of '
                     f'{QUANT}; got {lc.rank}, {lc.dropout}, {lc.base_dtype!r}')
  if not lc.rank and (lc.base_dtype or lc.dropout):
    raise ValueError('lora.base_dtype / lora.dropout need lora.rank > 0')
  if lc.rank and t.init_into:
    raise ValueError('lora.rank > 0 takes the whole base from train.init_from; '
                     'train.init_into does not apply')
  if c.sample.quantize not in ('', 'int8'):
    raise ValueError(f"sample.quantize={c.sample.quantize!r}: choose '' (off) or 'int8'")
  model_config(c)  # the paradigm's model dataclass validates its own fields


def keeps_ema(c: ml_collections.ConfigDict) -> bool:
  """Whether the run keeps EMA params (train.ema_decay > 0 or an EDM half-life)."""
  return c.train.ema_decay > 0 or c.train.ema_halflife_nimg > 0


def ema_beta(c: ml_collections.ConfigDict, step):
  """EMA decay beta at 0-based optimiser step `step` (traced or int), for the update
  e <- beta e + (1 - beta) theta: train.ema_decay, or with a half-life EDM's (App. C.2)
  beta = 0.5 ** (B / max(h, 1e-8)), h = min(halflife_nimg, step * B * ema_rampup_ratio) (EDM's
  training loop: the ramp-up keeps early averages from holding on to the initialisation)."""
  t, B = c.train, c.data.batch_size
  if not t.ema_halflife_nimg:
    return t.ema_decay
  h = t.ema_halflife_nimg
  if t.ema_rampup_ratio:
    h = jnp.minimum(h, step * B * t.ema_rampup_ratio)
  return 0.5 ** (B / jnp.maximum(h, 1e-8))


def model_config(c: ml_collections.ConfigDict):
  """The frozen dataclass the network is built from (`paradigms.get(c.paradigm).Config`);
  modules never see the whole config."""
  cls = getattr(paradigms.get(c.paradigm), 'Config', TransformerConfig)
  fields = {f.name for f in dataclasses.fields(cls)}
  extra = set(c.model.keys()) - fields
  if extra:
    raise ValueError(f'unknown model keys {sorted(extra)}; {cls.__name__} has {sorted(fields)}')
  return cls(**{k: c.model[k] for k in c.model.keys()})


def from_file(spec: str) -> ml_collections.ConfigDict:
  """`'configs/ar_code.py:tiny'` -> that file's get_config('tiny') (as `--config` does)."""
  import importlib.util
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_config_' + os.path.basename(path)[:-3], path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} not found')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def save(c: ml_collections.ConfigDict, path) -> None:
  with open(path, 'w') as f:
    f.write(c.to_json_best_effort(indent=2, sort_keys=True))


def load(path) -> ml_collections.ConfigDict:
  """A saved config (config.json in a workdir), re-based on the current schema and locked."""
  with open(path) as f:
    saved = json.load(f)
  c = base_config()
  c.loss = ml_collections.ConfigDict(saved.pop('loss', {}))  # paradigm-specific: taken as saved
  c.model = ml_collections.ConfigDict(saved.pop('model', {}))  # the paradigm's Config fields
  if 'vocab_size' in c.model:  # re-link the reference to the replaced model section
    c.data.vocab_size = c.model.get_ref('vocab_size')
  _merge(c, saved, prefix='')
  return finalize(c)


def _merge(c: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
  for k, v in saved.items():
    if k not in c:
      raise ValueError(f'saved config has key {prefix + k!r} unknown to this version of the code')
    if isinstance(c[k], ml_collections.ConfigDict):
      _merge(c[k], v, prefix + k + '.')
    elif isinstance(c[k], tuple):
      c[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    elif k == 'vocab_size' and prefix == 'data.':
      continue  # a reference to model.vocab_size
    else:
      c[k] = v
