"""Judges: the Python parser's score of code, the glyph reader and its classifier Frechet
distance, bits per byte; and images.py, the bridge from a saved run's config to the samplers
that the judges score. Imports data (pipelines/), samplers and paradigms; never the trainer.
"""
