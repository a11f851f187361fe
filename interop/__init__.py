"""Checkpoint interop (layer 3, beside pipelines/ and evaluators/): Hugging Face-format folders
(config.json + safetensors) in and out. `hf.py` maps config keys, tensor names and layouts;
`safetensors_io.py` reads folders lazily and writes them shard by shard; `load.py` places
tensors straight into (sharded) params. No torch: safetensors' numpy API only."""
