"""Shared neural-network blocks: attention (masks, RoPE, GQA, KV cache), MLP, norms, adaLN,
embeddings and the scanned Transformer backbone."""
from paradigms.nn.attention import EMPTY, KVCache, Attention, mask_from_ids
from paradigms.nn.layers import AdaLN, Embed, RMSNorm, SwiGLU, modulate, rope
from paradigms.nn.transformer import REMAT_POLICIES, Block, Transformer, TransformerConfig
