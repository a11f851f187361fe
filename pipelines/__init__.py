"""Data: corpora, tokenizers, glyph rendering, image folders and grain pipelines.

The layer above the samplers and below the trainer. `sources.open_data(config.data)` is the one
seam the trainer reads data through; text.py holds the byte-level corpora (the CPython standard
library's source by default), glyphs.py the procedural glyph set, images.py the image sources.
Nothing here downloads.
"""
