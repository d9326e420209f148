"""Starting factors of a LoRA adapter: which base weights get one, and their initial A and B.

A is derived from (seed, tensor name, shape) alone, so every box with the same seed builds
the same A without it ever being sent: with A frozen, boxes train only B and their updates
add up exactly. The values come from SHA-256 in counter mode turned into a uniform
distribution with variance 1/n_in (PEFT's Kaiming-uniform scale) using only exact integer
and power-of-two arithmetic - bit-identical on every machine and numpy version.
B starts at zero, so a new adapter leaves the model's output unchanged.
"""

import hashlib
import re

import numpy as np

from appliance.errors import TrainingError
from appliance.llm.adapters import AdapterFile, LoraFactors
from appliance.llm.architectures import fused_hint, resolve_targets

_BLOCK_WEIGHT = re.compile(r"blk\.(\d+)\.([a-z0-9_]+)\.weight")


def block_weights(base_shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """The names of the linear weights inside blocks ('attn_q', 'attn_qkv', ...)."""
    return {
        match.group(2)
        for name, shape in base_shapes.items()
        if len(shape) == 2 and (match := _BLOCK_WEIGHT.fullmatch(name))
    }


def target_shapes(
    base_shapes: dict[str, tuple[int, ...]], targets: list[str], top_layers: int = 0
) -> dict[str, tuple[int, int]]:
    """Base weights named `blk.N.<target>.weight`, with their numpy (n_out, n_in) shape;
    only in the top `top_layers` blocks when it is not 0. The default targets mean the fused
    matrix on a model that fuses them (architectures.resolve_targets)."""
    present = block_weights(base_shapes)
    targets = resolve_targets(targets, present)
    missing = [t for t in targets if t not in present]
    if missing:
        raise TrainingError(
            f"the model has no block weight named {', '.join(missing)}; "
            f"its linear weights are {', '.join(sorted(present))}{fused_hint(missing, present)}"
        )
    found = {
        name: (int(match.group(1)), int(shape[0]), int(shape[1]))
        for name, shape in base_shapes.items()
        if len(shape) == 2
        and (match := _BLOCK_WEIGHT.fullmatch(name))
        and match.group(2) in targets
    }
    lowest = max(layer for layer, _, _ in found.values()) + 1 - top_layers if top_layers else 0
    return {
        name: (n_out, n_in)
        for name, (layer, n_out, n_in) in sorted(found.items(), key=lambda i: (i[1][0], i[0]))
        if layer >= lowest
    }


def derived_a(seed: int, name: str, rank: int, n_in: int) -> np.ndarray:
    """A (rank, n_in) from SHA-256(seed, name, shape): same inputs, same bits everywhere."""
    count = rank * n_in
    key = f"appliance-lora-a/v1/{seed}/{name}/{rank}x{n_in}".encode()
    blocks = (count * 8 + 31) // 32
    stream = b"".join(hashlib.sha256(key + i.to_bytes(8, "little")).digest() for i in range(blocks))
    words = np.frombuffer(stream[: count * 8], dtype="<u8") >> np.uint64(11)
    unit = words.astype(np.float64) * 2.0**-53  # exact: 53-bit integers
    bound = np.sqrt(3.0 / n_in)
    values: np.ndarray = ((2.0 * unit - 1.0) * bound).astype(np.float32)
    return values.reshape(rank, n_in)


def initial_factors(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> LoraFactors:
    """Derived A and zero B for every target weight."""
    return {
        name: (derived_a(seed, name, rank, n_in), np.zeros((n_out, rank), dtype=np.float32))
        for name, (n_out, n_in) in shapes.items()
    }


def factors_from_adapter(
    adapter: AdapterFile, shapes: dict[str, tuple[int, int]], rank: int, alpha: float
) -> LoraFactors:
    """Continue from an existing adapter (e.g. the current global one): it must be the one
    these settings would build - same weights, rank and alpha."""
    if set(adapter.factors) != set(shapes):
        raise TrainingError(
            "the starting adapter adapts other weights than the training targets "
            f"({len(adapter.factors)} in the adapter, {len(shapes)} targeted)"
        )
    if adapter.rank != rank or adapter.alpha != alpha:
        raise TrainingError(
            f"the starting adapter has rank {adapter.rank} and alpha {adapter.alpha}, "
            f"the settings ask for rank {rank} and alpha {alpha}"
        )
    return {name: adapter.factors[name] for name in shapes}
