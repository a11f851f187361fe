"""Jitted samplers, one free function per algorithm: arrays, params and functions in, arrays out
(no paths, no configs, no datasets). Token samplers take `logits_fn(params, tokens, cache) ->
(logits, cache)`, image samplers a denoiser `D(params, x, sigma, cond)`; see docs/design.md.
`python -m sample` (sample/__main__.py) is the command line over trained runs."""
