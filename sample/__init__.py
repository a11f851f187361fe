"""Jitted samplers, one free function per algorithm. Token samplers take
`logits_fn(params, tokens, cache) -> (logits, cache)`; see ARCHITECTURE.md."""
