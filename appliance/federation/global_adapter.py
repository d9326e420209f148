"""The fleet's global adapter as a file, and a box's update as its difference from it.

The global adapter is an ordinary GGUF LoRA adapter (llama.cpp loads it as is) whose
`appliance.*` metadata says which base model, version and round it belongs to. Version 0 is
the starting point every box can rebuild: A derived from the seed, B zero.
"""

from pathlib import Path

import numpy as np

from appliance.config.lora import LoraSpec
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.llm.adapters import BASE_SHA256_KEY, AdapterFile, read_adapter, write_adapter
from appliance.llm.training.lora_init import initial_factors, target_shapes

VERSION_KEY = "appliance.global_version"
FROZEN_A_KEY = "appliance.frozen_a"
ROUND_KEY = "appliance.round_id"


class UpdateShapeError(ValueError):
    """A trained adapter does not line up with the round's global adapter."""


def initial_global_adapter(
    base_shapes: dict[str, tuple[int, ...]], lora: LoraSpec
) -> GlobalAdapter:
    """Version 0: derived A, zero B, for every targeted weight (of the top blocks, if set)."""
    shapes = target_shapes(base_shapes, list(lora.targets), lora.top_layers)
    factors = initial_factors(shapes, lora.rank, lora.seed)
    return GlobalAdapter(0, factors, lora.alpha, lora.freeze_a)


def save_global_adapter(
    path: Path, adapter: GlobalAdapter, architecture: str, base_sha256: str, round_id: str
) -> Path:
    """Write the adapter atomically with its fleet metadata."""
    metadata: dict[str, str | int | float | bool] = {
        BASE_SHA256_KEY: base_sha256,
        VERSION_KEY: adapter.version,
        FROZEN_A_KEY: adapter.frozen_a,
        ROUND_KEY: round_id,
    }
    return write_adapter(path, adapter.factors, adapter.alpha, architecture, metadata)


def load_global_adapter(path: Path) -> GlobalAdapter:
    """Read a global adapter written by `save_global_adapter`."""
    content = read_adapter(path)
    version = content.metadata.get(VERSION_KEY)
    frozen = content.metadata.get(FROZEN_A_KEY)
    if not isinstance(version, int) or not isinstance(frozen, bool):
        raise UpdateShapeError(f"{path}: not a global adapter (no {VERSION_KEY}/{FROZEN_A_KEY})")
    return GlobalAdapter(version, content.factors, content.alpha, frozen)


def deltas_from(trained: AdapterFile, base: GlobalAdapter) -> dict[str, Delta]:
    """What a box changed, factor by factor; only B when A is frozen."""
    if set(trained.factors) != set(base.factors):
        raise UpdateShapeError("the trained adapter adapts other weights than the global one")
    deltas = {}
    for name, (a, b) in base.factors.items():
        new_a, new_b = trained.factors[name]
        if new_a.shape != a.shape or new_b.shape != b.shape:
            raise UpdateShapeError(f"{name}: trained shapes differ from the global adapter")
        if base.frozen_a:
            if not np.array_equal(new_a, a):
                raise UpdateShapeError(f"{name}: A changed although the round freezes it")
            deltas[name] = Delta(None, new_b - b)
        else:
            deltas[name] = Delta(new_a - a, new_b - b)
    return deltas
