"""The one paradigm-agnostic trainer: mesh + sharding rules, train state, jitted step, optax,
orbax checkpoints, grain data, metrics and the CLI (`python -m train`)."""
