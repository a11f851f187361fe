"""The arena's models: configs from the budget, trained once by the one trainer, then reused.

    ctx = Context(budget='small', out='arena/report', runs='runs/arena')
    ar = ctx.run('ar', text_config('ar', TEXT['small']))    # trains, or loads a finished run
    ar.params, ar.n_params, ar.train_flops, ar.train_seconds

A run lives in `<runs>/<budget>/<name>` (a normal trainer workdir: `python -m sample` and
`python -m train.evaluate` work on it). When its newest checkpoint is at `train.steps` it is
loaded, not retrained; an interrupted run resumes where it stopped.

Training compute is stated analytically (Kaplan et al. 2020; PaLM App. B): per processed token
a training step costs 6 N + 12 n_layers T d FLOPs (attention halved under a causal mask), N the
parameters that multiply activations (embedding lookups excluded, the output head included)
and T the attended length.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import ml_collections

from arena.budgets import check

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
TEXT_KINDS = ('ar', 'mdlm', 'bd3', 'sedd', 'duo')


@dataclasses.dataclass
class Run:
  """A trained model and what it cost."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  n_params: int
  train_flops: float  # analytic, see the module doc
  train_seconds: float  # wall seconds the trainer spent on it (all launches)
  eval: dict  # the last held-out evaluation row of metrics.jsonl (eval_* keys)

  def describe(self) -> str:
    return f'{self.name}: {self.n_params:,} params, {self.train_flops:.2e} training FLOPs'

  def record(self) -> dict:
    """What a report's JSON keeps of the run: resolved config, size, compute, last evaluation."""
    return {'workdir': self.workdir, 'config': json.loads(self.config.to_json_best_effort()),
            'n_params': self.n_params, 'train_flops': self.train_flops,
            'train_seconds': self.train_seconds, 'eval': self.eval}


def config_file(spec: str) -> ml_collections.ConfigDict:
  """`'ar_code.py:small'` -> that file of configs/ (unlocked so the arena can add keys)."""
  from train.config import from_file
  c = from_file(os.path.join(CONFIGS, spec))
  c.unlock()
  return c


def apply(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Nested overrides {'model': {...}, 'train': {...}} into config `c` (in place, returned)."""
  for section, values in overrides.items():
    if isinstance(values, dict):
      for k, v in values.items():
        if k not in c[section]:
          raise KeyError(f'{section}.{k} is not a key of the config')
        c[section][k] = v
    else:
      c[section] = values
  return c


def text_config(kind: str, spec: dict, *, block_size: int = 0) -> ml_collections.ConfigDict:
  """A text contestant on the CPython corpus: 'ar' (causal), 'mdlm' (masked diffusion), 'bd3'
  (block diffusion with `block_size`), 'sedd' (score entropy, uniform chain) or 'duo' (uniform-
  state NELBO), all on configs/ar_code.py's backbone with `spec` (budgets.TEXT / JUDGE) applied,
  so they differ only in the mask, the loss and (SEDD, DUO) the time-conditioning hook."""
  if kind not in TEXT_KINDS:
    raise ValueError(f'unknown text contestant {kind!r}; choose one of {TEXT_KINDS}')
  if kind == 'bd3' and not block_size:
    raise ValueError('a bd3 contestant needs block_size >= 1')
  c = config_file({'ar': 'ar_code.py', 'sedd': 'sedd_code.py', 'duo': 'duo_code.py'}.get(
      kind, 'mdlm_code.py') + ':small')
  apply(c, spec)
  if kind == 'bd3':
    c.loss.block_size = block_size
  return c


DUO_ROUNDS = 5  # consistency-distillation rounds (delta 1/64 doubling to 1/4, as configs/duo_code.py)


def train_stages(ctx: Context, stages: list[tuple[str, ml_collections.ConfigDict]]) -> Run:
  """Train runs in order (each may start from an earlier one: train.init_from) and return the
  last, charged with the training FLOPs and wall time of every stage."""
  runs = [ctx.run(name, config) for name, config in stages]
  return dataclasses.replace(runs[-1], train_flops=sum(r.train_flops for r in runs),
                             train_seconds=sum(r.train_seconds for r in runs))


def duo_recipe(recipe: str, spec: dict, workdir) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The runs of one of DUO's two recipes (Sahoo et al. 2025) on the `duo` contestant's network
  and data, as [(name, config)] to train in order (the last is the result); workdir(name) is
  where a run lives (`Context.workdir`):

  'curriculum'  stage 1, the Gaussian-guided curriculum (eq. 21), for half of spec's steps
                (`duo_cl1`), then stage 2, the plain NELBO from it, for the other half
                (`duo_cl`): as many updates as the plain `duo` run.
  'restart'     the curriculum's control: the same two stages (`duo_rs1`, `duo_rs`: each with its
                own warmup and cosine decay, the second from the first's params with a fresh
                optimiser), both on the plain NELBO. 'curriculum' minus 'restart' is what the
                curriculum itself does; 'restart' minus the one-run `duo` is what the restart costs.
  'distill'     discrete consistency distillation (Alg. 1) of the finished `duo` run:
                DUO_ROUNDS rounds of steps / DUO_ROUNDS updates at the config's lr
                (`duo_dcd`); the final student is scored (no EMA: a few hundred updates are
                too short for one).
  """
  steps = spec['train']['steps']
  if recipe in ('curriculum', 'restart'):
    name = {'curriculum': 'duo_cl', 'restart': 'duo_rs'}[recipe]
    first = apply(config_file(f'duo_code.py:small{",curriculum" if recipe == "curriculum" else ""}'),
                  spec)
    first.train.steps = steps // 2
    second = apply(config_file('duo_code.py:small'), spec)
    second.train.update(steps=steps - steps // 2, init_from=workdir(name + '1'))
    return [(name + '1', first), (name, second)]
  if recipe != 'distill':
    raise ValueError(f"unknown DUO recipe {recipe!r}; choose 'curriculum', 'restart' or 'distill'")
  c = config_file('duo_code.py:small,distill')
  lr = c.train.lr  # distillation's own (lower) rate, not the pre-training one of spec
  apply(c, spec)
  per_round = max(steps // DUO_ROUNDS, 1)
  c.loss.distill_round_steps = per_round
  c.train.update(steps=DUO_ROUNDS * per_round, warmup_steps=min(per_round, 50), lr=lr,
                 init_from=workdir('duo'), ema_decay=0.0)
  return [('duo_dcd', c)]


def train_flops(config, n_params: int) -> float:
  """Analytic training FLOPs of `config` (module doc): steps x batch x tokens x FLOPs/token.

  Token paradigms use `TransformerConfig.flops_per_token`: AR counts the useful (causal) half
  of attention, MDLM, SEDD and UDLM all of it (embedding fine-tunes: query + document tokens
  under the run's mask); BD3 runs the network on concat(x_t, x_0), 2 seq_len tokens,
  under a mask about as dense as a causal one. Image Transformers (DiT, VAR, HART) count their
  tokens per image (`image_flops_per_example`), raster AR / MaskGIT / Transfusion their sequence's
(SEQUENCE_IMAGE_MODELS); other paradigms 6 N per example."""
  from train.config import model_config
  d, t = config.data, config.train
  if config.paradigm in ('autoregressive', 'masked_diffusion', 'sedd', 'duo', 'embedding'):
    cfg = model_config(config)
    bd3 = config.paradigm == 'masked_diffusion' and 0 < config.loss.get('block_size', 0) < d.seq_len
    T = d.seq_len * (2 if bd3 else 1)
    causal = config.paradigm == 'autoregressive' or bd3
    if config.paradigm == 'embedding':  # a query and a document per example, the run's mask
      T, causal = d.seq_len + d.query_len, cfg.mask == 'causal'
    return float(t.steps * d.batch_size * T * cfg.flops_per_token(T, causal=causal))
  if config.paradigm in IMAGE_TRANSFORMERS:
    return float(t.steps * d.batch_size * image_flops_per_example(config, n_params))
  if config.paradigm in SEQUENCE_IMAGE_MODELS:  # one Transformer sequence per image
    m = model_config(config)
    T = m.seq_len
    per_token = m.backbone().flops_per_token(T, causal=config.paradigm != 'maskgit')
    return float(t.steps * d.batch_size * T * per_token)
  return float(t.steps * d.batch_size * 6 * n_params)


# Image paradigms whose network is the shared Transformer over a token sequence.
IMAGE_TRANSFORMERS = ('image_diffusion', 'next_scale', 'hybrid')
# ... and those over [prompt ; image] sequences of the text backbone, counted as text models:
# T = model.seq_len tokens of TransformerConfig.flops_per_token (causal for raster AR and
# Transfusion, whose image block is bidirectional: slightly under-counted; MaskGIT
# bidirectional); Transfusion's patch encoder and decoder are left out.
SEQUENCE_IMAGE_MODELS = ('raster_ar', 'maskgit', 'transfusion')


def image_tokens(config) -> tuple[int, float]:
  """(T, T_att) of a DiT / VAR / HART run: T the sequence through the blocks (DiT: patches +
  label tokens; VAR/HART: sum_k s_k^2, the first s_1^2 positions holding the start token) and
  T_att the keys a query attends to on average (DiT: T; VAR's block-causal mask: scale k sees
  scales 1..k, T_att = sum_k s_k^2 (s_1^2 + ... + s_k^2) / T)."""
  from train.config import model_config
  m = model_config(config)
  if config.paradigm == 'image_diffusion':
    return m.num_tokens, float(m.num_tokens)
  sizes = list(m.scale_sizes)
  seen = sum(n * sum(sizes[:k + 1]) for k, n in enumerate(sizes))
  return m.num_tokens, seen / m.num_tokens


def image_flops_per_example(config, n_params: int) -> float:
  """Training FLOPs per image of a DiT / VAR / HART run: T (6 N' + 12 n_layers T_att d) + 6 N_c
  (`image_tokens`). N' are the parameters that multiply every token's activations; left out
  are the lookup tables (label, level, position, step and HART token embeddings), HART's head
  and the N_c that act once per image on the condition (every block's and the output's adaLN
  projection, DiT's noise-level MLP). HART's residual head is an MLP over s_K^2 x
  loss.diffusion_mul rows per image, 6 N_head a row; a shortcut DiT adds two no-grad teacher
  passes (a third of a training pass each) on its loss.shortcut_fraction of the batch."""
  from train.config import model_config
  m = model_config(config)
  T, T_att = image_tokens(config)
  d = m.d_model
  lookups, n_head = m.label_len * m.label_vocab * d, 0
  n_cond = m.n_layers * 6 * d * (d + 1) + 2 * d * (d + 1)  # adaLN (cond_dim = d) per image
  if config.paradigm == 'image_diffusion':
    lookups += (m.max_step_index + 1) * d if m.step_conditioning else 0
    n_cond += m.freq_dim * d + d + d * d + d  # the noise-level MLP
  else:
    lookups += (m.num_scales + m.num_tokens) * d
    if config.paradigm == 'hybrid':
      lookups += m.codebook_size * d
      n_head = m.head().num_params()
  n_token = n_params - lookups - n_head - n_cond
  flops = T * (6 * n_token + 12 * m.n_layers * T_att * d) + 6 * n_cond
  if config.paradigm == 'image_diffusion':
    flops *= 1 + 2 * config.loss.get('shortcut_fraction', 0.0) / 3
  if n_head:
    flops += 6 * n_head * m.residual_len * config.loss.diffusion_mul
  return float(flops)


def same_config(saved: dict, now: dict) -> bool:
  """True when a finished run's saved resolved config is `now`'s, up to keys the config schema
  gained since it was trained (absent from `saved`: a new key's default keeps the old behaviour,
  the schema's rule), so adding a field does not invalidate every trained run."""
  if not isinstance(saved, dict) or not isinstance(now, dict):
    return saved == now
  return set(saved) <= set(now) and all(same_config(v, now[k]) for k, v in saved.items())


@dataclasses.dataclass
class Context:
  """What every experiment gets: the budget, where results and runs go, the seed."""
  budget: str
  out: str
  runs: str = 'runs/arena'
  seed: int = 0
  progress: bool = True
  retrain: bool = False
  _retrained: set = dataclasses.field(default_factory=set, repr=False)

  def __post_init__(self):
    check(self.budget)
    os.makedirs(self.out, exist_ok=True)

  def log(self, msg: str) -> None:
    print(f'[arena {self.budget}] {msg}', file=sys.stderr, flush=True)

  def workdir(self, name: str) -> str:
    return os.path.join(self.runs, self.budget, name)

  def untrained(self) -> bool:
    """True when no run of this budget, finished or not, exists yet (or --retrain): what
    follows trains every model it uses from scratch."""
    import glob
    return self.retrain or not glob.glob(self.workdir('*'))

  def run(self, name: str, config: ml_collections.ConfigDict) -> Run:
    """Train `config` into the run `name` (or resume / reuse it) and load its params."""
    from train.checkpoint import load_run
    from train.config import finalize
    from train.trainer import train
    workdir = self.workdir(name)
    config.train.seed = self.seed
    config.data.seed = self.seed
    config.train.progress = self.progress
    finalize(config)
    marker = os.path.join(workdir, 'arena.json')
    if self.retrain and name not in self._retrained:  # once per process: runs are shared
      self._retrained.add(name)
      shutil.rmtree(workdir, ignore_errors=True)
    resolved = json.loads(config.to_json_best_effort())
    resolved['train'].pop('progress', None)
    done = _read(marker)
    if done and not same_config(done.get('config', {}), resolved):
      raise ValueError(f'{workdir} holds a finished run of another config (the budget changed?); '
                       'delete it or pass --retrain to train it again.')
    if not done:
      self.log(f'training {name} ({config.paradigm}, {config.train.steps} steps) in {workdir}')
      tic = time.perf_counter()
      train(config, workdir)
      seconds = _read(marker + '.partial').get('seconds', 0.0) + time.perf_counter() - tic
      if _finished(workdir, config.train.steps):
        done = {'config': resolved, 'seconds': seconds}
        _write(marker, done)
      else:  # stopped by a signal: keep the time spent for the resumed launch
        _write(marker + '.partial', {'seconds': seconds})
        raise KeyboardInterrupt(f'{name} stopped before step {config.train.steps}; rerun to resume')
    config, model, params = load_run(workdir)
    n = int(sum(x.size for x in jax.tree.leaves(params)))
    return Run(name=name, workdir=workdir, config=config, model=model, params=params, n_params=n,
               train_flops=train_flops(config, n), train_seconds=done['seconds'],
               eval=last_eval(workdir))


def last_eval(workdir: str) -> dict:
  """The newest held-out evaluation row of `<workdir>/metrics.jsonl` ({} if none)."""
  rows = eval_rows(workdir)
  return rows[-1] if rows else {}


def eval_rows(workdir: str) -> list[dict]:
  """Every held-out evaluation row (those with eval_* keys) of the run, in step order."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  from train.metrics import read_rows
  return [r for _, r in read_rows(path) if any(k.startswith('eval_') for k in r)]


def _finished(workdir: str, steps: int) -> bool:
  from train.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.latest_step() == steps
  finally:
    ckpt.close()


def _write(path: str, payload: dict) -> None:
  with open(path, 'w') as f:
    json.dump(payload, f, indent=1)


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
