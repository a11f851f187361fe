"""Hugging Face checkpoints <-> our Transformer: config keys, tensor names and layouts.

Families (the `architectures` entry of config.json -> a family -> our paradigm):
  LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM   autoregressive
  LLaDAModelLM  (LLaDA, Nie et al. 2025; OLMo-style names)                    masked_diffusion
  DreamModel    (Dream, Ye et al. 2025; Qwen2.5 names, logits shifted)        masked_diffusion

Every family is the same pre-norm SwiGLU Transformer; they differ in names, biases, q/k norms,
RoPE scaling, windows, tying and (LLaDA, Dream) a bidirectional mask. A torch Linear stores
W [out, in]; ours stores [in, out] with heads split, e.g. q_proj.weight [H*Dh, D] is our
attn.wq [D, H, Dh]. Each `Tensor` says how: the HF tensor viewed as `view` (merged axes split),
then permuted by `perm` (ours[j] = view[perm[j]]). The same rule reads a device shard's slice
(`read_slice`) and writes a layer back (`to_hf`).

Published names and keys were checked against the models' public config.json and modelling
files (see docs/hf.md): LLaDA-8B: ff_proj is the SiLU gate, up_proj the linear branch,
ff_out both the block's down projection and the untied output head; Dream: q/k/v biases are
always on, and `generation_utils` shifts logits right by one.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from interop.safetensors_io import CheckpointError


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  architecture: str  # the config.json `architectures` entry
  model_type: str
  paradigm: str  # 'autoregressive' | 'masked_diffusion'
  names: str  # 'hf' (Llama-style) | 'llada' (OLMo-style)


FAMILIES = {f.architecture: f for f in (
    Family('llama', 'LlamaForCausalLM', 'llama', 'autoregressive', 'hf'),
    Family('mistral', 'MistralForCausalLM', 'mistral', 'autoregressive', 'hf'),
    Family('qwen2', 'Qwen2ForCausalLM', 'qwen2', 'autoregressive', 'hf'),
    Family('qwen3', 'Qwen3ForCausalLM', 'qwen3', 'autoregressive', 'hf'),
    Family('llada', 'LLaDAModelLM', 'llada', 'masked_diffusion', 'llada'),
    Family('dream', 'DreamModel', 'Dream', 'masked_diffusion', 'hf'),
)}

NAMES = {  # per-family tensor names; {i} is the layer
    'hf': dict(embed='model.embed_tokens.weight', head='lm_head.weight', norm='model.norm.weight',
               layer='model.layers.{i}.', attn_norm='input_layernorm.weight',
               mlp_norm='post_attention_layernorm.weight', q='self_attn.q_proj', k='self_attn.k_proj',
               v='self_attn.v_proj', o='self_attn.o_proj.weight', q_norm='self_attn.q_norm.weight',
               k_norm='self_attn.k_norm.weight', gate='mlp.gate_proj.weight',
               up='mlp.up_proj.weight', down='mlp.down_proj.weight'),
    'llada': dict(embed='model.transformer.wte.weight', head='model.transformer.ff_out.weight',
                  norm='model.transformer.ln_f.weight', layer='model.transformer.blocks.{i}.',
                  attn_norm='attn_norm.weight', mlp_norm='ff_norm.weight', q='q_proj', k='k_proj',
                  v='v_proj', o='attn_out.weight', q_norm=None, k_norm=None, gate='ff_proj.weight',
                  up='up_proj.weight', down='ff_out.weight'),
}
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)  # buffers some old exports carry


@dataclasses.dataclass(frozen=True)
class Imported:
  """What a config.json says, in our terms."""
  family: Family
  model: dict  # TransformerConfig fields
  mask_id: int | None  # masked-diffusion families
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None


def family_of(hf: dict) -> Family:
  archs = hf.get('architectures') or []
  for a in archs:
    if a in FAMILIES:
      return FAMILIES[a]
  raise CheckpointError(f'config.json architectures={archs} is not supported; supported: '
                        f'{sorted(FAMILIES)}')


def _refuse(cond: bool, what: str) -> None:
  if cond:
    raise CheckpointError(f'config.json {what}')


def _rope(hf: dict) -> dict:
  """rope_theta and rope scaling from a v4 (`rope_theta`, `rope_scaling`) or v5
  (`rope_parameters`) config."""
  params = hf.get('rope_parameters') or {}
  scaling = dict(hf.get('rope_scaling') or params)
  theta = hf.get('rope_theta', params.get('rope_theta', 10_000.0))
  kind = scaling.get('rope_type', scaling.get('type', 'default'))
  out = {'rope_base': float(theta)}
  if kind in ('default', None):
    return out
  if kind == 'linear':
    return dict(out, rope_scaling='linear', rope_factor=float(scaling['factor']))
  if kind == 'llama3':
    return dict(out, rope_scaling='llama3', rope_factor=float(scaling['factor']),
                rope_low_freq_factor=float(scaling['low_freq_factor']),
                rope_high_freq_factor=float(scaling['high_freq_factor']),
                rope_original_max_len=int(scaling['original_max_position_embeddings']))
  raise CheckpointError(f"config.json rope_scaling type {kind!r} is not supported (supported: "
                        "'default', 'linear', 'llama3'; 'yarn' and the dynamic kinds are not "
                        'implemented)')


def from_hf_config(hf: dict, max_len: int = 4096) -> Imported:
  """Our model fields and special ids from a config.json dict. Refuses, naming the key, every
  option the backbone does not have. `max_len` caps the default KV-cache length (a 128k
  context would otherwise size every cache)."""
  fam = family_of(hf)
  act = hf.get('hidden_act', hf.get('activation_type', 'silu'))
  _refuse(act not in ('silu', 'swiglu'), f'hidden_act={act!r}: only SiLU-gated MLPs are supported')
  if fam.names == 'llada':
    for key, want in (('block_type', 'llama'), ('layer_norm_type', 'rms'), ('alibi', False),
                      ('include_bias', False), ('attention_layer_norm', False),
                      ('scale_logits', False), ('input_emb_norm', False), ('rope', True)):
      if key in hf and hf[key] != want:
        raise CheckpointError(f'config.json {key}={hf[key]!r}: LLaDA import needs {want!r}')
    d = hf['d_model']
    heads = hf['n_heads']
    ff = hf.get('mlp_hidden_size') or hf.get('mlp_ratio', 4) * d
    model = dict(vocab_size=hf.get('embedding_size') or hf['vocab_size'], d_model=d,
                 n_layers=hf['n_layers'], n_heads=heads, n_kv_heads=hf.get('n_kv_heads') or heads,
                 head_dim=d // heads, d_ff=ff, norm_eps=hf.get('rms_norm_eps', 1e-5),
                 tie_embeddings=bool(hf.get('weight_tying', False)),
                 qkv_bias=bool(hf.get('include_qkv_bias', False)), mask='bidirectional',
                 max_len=min(hf.get('max_sequence_length', max_len), max_len),
                 rope_base=float(hf.get('rope_theta', 10_000.0)))
    mask_id = hf.get('mask_token_id', 126336)
  else:
    _refuse(hf.get('mlp_bias', False), 'mlp_bias=true: MLP biases are not supported')
    bias = fam.name in ('qwen2', 'dream')  # hard-coded on in their modelling code
    if fam.name in ('llama', 'qwen3'):
      _refuse(hf.get('attention_bias', False), 'attention_bias=true puts a bias on o_proj too, '
              'which the backbone does not have')
    window = 0
    if fam.name == 'mistral':
      window = hf.get('sliding_window') or 0
    elif hf.get('use_sliding_window') or 'sliding_attention' in (hf.get('layer_types') or []):
      raise CheckpointError('config.json use_sliding_window=true with per-layer windows '
                            '(max_window_layers / layer_types) is not supported; set '
                            'use_sliding_window=false if the model was trained without it')
    d, heads = hf['hidden_size'], hf['num_attention_heads']
    model = dict(vocab_size=hf['vocab_size'], d_model=d, n_layers=hf['num_hidden_layers'],
                 n_heads=heads, n_kv_heads=hf.get('num_key_value_heads') or heads,
                 head_dim=hf.get('head_dim') or d // heads, d_ff=hf['intermediate_size'],
                 norm_eps=hf.get('rms_norm_eps', 1e-6),
                 tie_embeddings=bool(hf.get('tie_word_embeddings', False)), qkv_bias=bias,
                 qk_norm=fam.name == 'qwen3', sliding_window=int(window),
                 mask='bidirectional' if fam.paradigm == 'masked_diffusion' else 'causal',
                 shift_logits=fam.name == 'dream',
                 max_len=min(hf.get('max_position_embeddings', max_len), max_len), **_rope(hf))
    mask_id = hf.get('mask_token_id') if fam.paradigm == 'masked_diffusion' else None
    _refuse(fam.name == 'dream' and mask_id is None, 'has no mask_token_id (Dream needs it)')
  eos = hf.get('eos_token_id')
  if isinstance(eos, list):
    eos = eos[0] if eos else None
  return Imported(fam, model, mask_id, hf.get('bos_token_id'), eos, hf.get('pad_token_id'))


def to_hf_config(cfg, family: Family, *, mask_id: int | None = None, bos_id=None, eos_id=None,
                 dtype: str = 'float32') -> dict:
  """The config.json of `family` for a TransformerConfig `cfg` (the inverse of from_hf_config)."""
  if cfg.cond_dim or cfg.rope_base <= 0:
    raise ValueError('only token Transformers with RoPE and no conditioning (model.cond_dim=0) '
                     'export to a Hugging Face family')
  if family.names == 'llada':
    out = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
               n_layers=cfg.n_layers, mlp_hidden_size=cfg.ff_size, mlp_ratio=4,
               vocab_size=cfg.vocab_size, embedding_size=cfg.vocab_size, mask_token_id=mask_id,
               rope=True, rope_theta=cfg.rope_base, rms_norm_eps=cfg.norm_eps,
               layer_norm_type='rms', block_type='llama', activation_type='silu',
               include_bias=False, include_qkv_bias=cfg.qkv_bias, weight_tying=cfg.tie_embeddings,
               attention_layer_norm=False, alibi=False, scale_logits=False, input_emb_norm=False,
               max_sequence_length=cfg.max_len, block_group_size=1, multi_query_attention=None,
               eos_token_id=eos_id, pad_token_id=eos_id, use_cache=False,
               auto_map={'AutoConfig': 'configuration_llada.LLaDAConfig',
                         'AutoModel': 'modeling_llada.LLaDAModelLM'})
    if cfg.head_size != cfg.d_model // cfg.n_heads:
      raise ValueError('LLaDA derives head_dim = d_model / n_heads; this model has head_dim='
                       f'{cfg.head_size}')
  else:
    out = dict(hidden_size=cfg.d_model, intermediate_size=cfg.ff_size,
               num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_size, hidden_act='silu',
               max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
               rope_theta=cfg.rope_base, rope_scaling=_rope_scaling_dict(cfg),
               tie_word_embeddings=cfg.tie_embeddings, vocab_size=cfg.vocab_size,
               bos_token_id=bos_id, eos_token_id=eos_id, attention_dropout=0.0,
               initializer_range=0.02, use_cache=True)
    if family.name in ('llama', 'qwen3'):
      out.update(attention_bias=False, mlp_bias=False)
    if family.name in ('qwen2', 'qwen3', 'dream'):
      out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    if family.name == 'mistral':
      out.update(sliding_window=cfg.sliding_window or None)
    if family.name == 'dream':
      out.update(mask_token_id=mask_id, pad_token_id=eos_id,
                 auto_map={'AutoConfig': 'configuration_dream.DreamConfig',
                           'AutoModel': 'modeling_dream.DreamModel'})
  out.update(architectures=[family.architecture], model_type=family.model_type, torch_dtype=dtype)
  return out


def _rope_scaling_dict(cfg):
  if cfg.rope_scaling == 'linear':
    return {'rope_type': 'linear', 'factor': cfg.rope_factor}
  if cfg.rope_scaling == 'llama3':
    return {'rope_type': 'llama3', 'factor': cfg.rope_factor,
            'low_freq_factor': cfg.rope_low_freq_factor,
            'high_freq_factor': cfg.rope_high_freq_factor,
            'original_max_position_embeddings': cfg.rope_original_max_len}
  return None


def export_family(cfg, paradigm: str) -> Family:
  """The Hugging Face family a model born here exports to: the plainest one that holds it."""
  if paradigm == 'masked_diffusion':
    if cfg.qk_norm or cfg.sliding_window:
      raise ValueError('LLaDA and Dream have no q/k norm or sliding window; this masked-diffusion '
                       'model cannot be exported to either')
    if cfg.shift_logits:
      if not cfg.qkv_bias:
        raise ValueError("Dream's q/k/v projections always carry biases; this shifted-logits "
                         'model has none (model.qkv_bias=False)')
      return FAMILIES['DreamModel']
    return FAMILIES['LLaDAModelLM']
  if paradigm != 'autoregressive':
    raise ValueError(f'paradigm {paradigm!r} has no Hugging Face family (autoregressive and '
                     'masked_diffusion runs export)')
  if cfg.qk_norm and cfg.qkv_bias:
    raise ValueError('no Hugging Face family has both q/k norms and q/k/v biases')
  if cfg.sliding_window and (cfg.qk_norm or cfg.qkv_bias):
    raise ValueError('only Mistral has a sliding window here, and it has no q/k norm or biases')
  if cfg.qk_norm:
    return FAMILIES['Qwen3ForCausalLM']
  if cfg.qkv_bias:
    return FAMILIES['Qwen2ForCausalLM']
  if cfg.sliding_window:
    return FAMILIES['MistralForCausalLM']
  return FAMILIES['LlamaForCausalLM']


# --- tensor layouts ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tensor:
  """One of our param leaves <-> HF tensors (one per layer when `layered`).

  The HF tensor has shape [prod(view[g]) for g in groups]; viewed as `view` and permuted by
  `perm` it is our (per-layer) array: ours.shape[j] = view[perm[j]].
  """
  path: tuple[str, ...]  # our param path, e.g. ('layers', 'attn', 'wq')
  hf: str  # HF name; '{i}' marks the layer
  view: tuple[int, ...]
  perm: tuple[int, ...]
  groups: tuple[tuple[int, ...], ...]  # view axes merged into each HF axis, in order
  ours: tuple[int, ...]  # our per-layer shape (may exceed the view on the vocab axis: padding)

  @property
  def layered(self) -> bool:
    return '{i}' in self.hf

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return tuple(math.prod(self.view[a] for a in g) for g in self.groups)

  def name(self, i: int | None = None) -> str:
    return self.hf.format(i=i)

  def read_slice(self, read, index: tuple[slice, ...]) -> np.ndarray:
    """Our per-layer array's `index` slice (concrete start/stop, step 1), read through
    `read(hf_index) -> np.ndarray`, which is asked for only the rows and columns it covers.

    Rows our array has beyond the file (vocabulary padding) come back as zeros."""
    view_index = [None] * len(self.view)
    for j, s in enumerate(index):
      view_index[self.perm[j]] = s
    hf_index, shape, post, pads = [], [], [], []
    for g in self.groups:  # the groups, concatenated, are the view axes in order
      a0, rest = g[0], g[1:]
      inner = math.prod(self.view[a] for a in rest)
      s0 = view_index[a0]
      stop = min(s0.stop, self.view[a0])
      start = min(s0.start, stop)
      hf_index.append(slice(start * inner, stop * inner))
      shape += [stop - start] + [self.view[a] for a in rest]
      post += [slice(None)] + [view_index[a] for a in rest]
      pads += [(0, (s0.stop - s0.start) - (stop - start))] + [(0, 0)] * len(rest)
    block = read(tuple(hf_index)).reshape(shape)[tuple(post)]
    if any(p for _, p in pads):
      block = np.pad(block, pads)
    return np.transpose(block, self.perm)

  def to_hf(self, ours: np.ndarray) -> np.ndarray:
    """Our per-layer array -> the HF tensor (padding rows dropped)."""
    inv = np.argsort(self.perm)
    view = np.transpose(ours, inv)
    view = view[tuple(slice(0, n) for n in self.view)]
    return view.reshape(self.hf_shape)


def layout(cfg, family: Family) -> list[Tensor]:
  """Every param leaf of `Transformer(cfg)` with its HF tensor (the tests check it covers the
  initialised tree exactly)."""
  n = NAMES[family.names]
  D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.ff_size
  V, Vp = cfg.vocab_size, cfg.padded_vocab
  L = n['layer']

  def t(path, hf, view, perm, groups, ours=None):
    return Tensor(path, hf, view, perm, groups, ours or tuple(view[p] for p in perm))

  out = [t(('embed', 'embedding'), n['embed'], (V, D), (0, 1), ((0,), (1,)), (Vp, D)),
         t(('final_norm', 'scale'), n['norm'], (D,), (0,), ((0,),))]
  if not cfg.tie_embeddings:
    out.append(t(('embed', 'head'), n['head'], (V, D), (1, 0), ((0,), (1,)), (D, Vp)))
  lay = lambda *p: ('layers',) + p
  out += [
      t(lay('attn_norm', 'scale'), L + n['attn_norm'], (D,), (0,), ((0,),)),
      t(lay('mlp_norm', 'scale'), L + n['mlp_norm'], (D,), (0,), ((0,),)),
      t(lay('attn', 'wq'), L + n['q'] + '.weight', (H, Dh, D), (2, 0, 1), ((0, 1), (2,))),
      t(lay('attn', 'wk'), L + n['k'] + '.weight', (K, Dh, D), (2, 0, 1), ((0, 1), (2,))),
      t(lay('attn', 'wv'), L + n['v'] + '.weight', (K, Dh, D), (2, 0, 1), ((0, 1), (2,))),
      t(lay('attn', 'wo'), L + n['o'], (D, H, Dh), (1, 2, 0), ((0,), (1, 2))),
      t(lay('mlp', 'w_gate'), L + n['gate'], (F, D), (1, 0), ((0,), (1,))),
      t(lay('mlp', 'w_up'), L + n['up'], (F, D), (1, 0), ((0,), (1,))),
      t(lay('mlp', 'w_out'), L + n['down'], (D, F), (1, 0), ((0,), (1,))),
  ]
  if cfg.qkv_bias:
    out += [t(lay('attn', f'{x}_bias'), L + n[x] + '.bias', (h, Dh), (0, 1), ((0, 1),))
            for x, h in (('q', H), ('k', K), ('v', K))]
  if cfg.qk_norm:
    if n['q_norm'] is None:
      raise ValueError(f'the {family.name} family has no q/k norm tensors')
    out += [t(lay('attn', f'{x}_norm', 'scale'), L + n[f'{x}_norm'], (Dh,), (0,), ((0,),))
            for x in ('q', 'k')]
  return out


def check_folder(folder, specs: list[Tensor], n_layers: int, tied: bool) -> None:
  """Every tensor the layout needs is present with the shape config.json implies and a float
  dtype, and the folder holds no weight the layout would drop. Raises CheckpointError listing
  what is wrong (so nothing is loaded half-way)."""
  problems, used = [], set()
  for spec in specs:
    for i in (range(n_layers) if spec.layered else [None]):
      name = spec.name(i)
      used.add(name)
      if name not in folder:
        problems.append(f'missing tensor {name!r}')
        continue
      shape, dtype = folder.shape(name), folder.dtype(name)
      if shape != spec.hf_shape:
        problems.append(f'{name!r} has shape {list(shape)} but config.json implies '
                        f'{list(spec.hf_shape)}')
      if dtype not in ('F16', 'BF16', 'F32', 'F64'):
        problems.append(f'{name!r} has dtype {dtype}, which cannot stand for a float weight')
  extra = [k for k in folder.names() if k not in used and not k.endswith(IGNORED_SUFFIXES)
           and not (tied and k == NAMES['hf']['head'])]
  if extra:
    problems.append(f'{len(extra)} tensor(s) the config does not explain, e.g. {extra[:3]} '
                    '(a bias or norm the architecture in config.json does not have)')
  if problems:
    shown = '\n  '.join(problems[:8]) + (f'\n  ... and {len(problems) - 8} more'
                                         if len(problems) > 8 else '')
    raise CheckpointError(f'{folder.folder} does not match its config.json:\n  {shown}')
