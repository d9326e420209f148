"""Random LoRA adapters shaped for a given model, for runtime tests."""

from pathlib import Path

import numpy as np

from appliance.llm.adapters import LoraFactors, write_adapter


def random_factors(
    shapes: dict[str, tuple[int, int]], rank: int = 4, seed: int = 0, b_scale: float = 0.5
) -> LoraFactors:
    """A and B for each named base weight (numpy (n_out, n_in)); B nonzero unless b_scale=0."""
    rng = np.random.default_rng(seed)
    factors: LoraFactors = {}
    for name, (n_out, n_in) in shapes.items():
        a = rng.normal(0.0, 0.5, size=(rank, n_in)).astype(np.float32)
        b = (rng.normal(0.0, 1.0, size=(n_out, rank)) * b_scale).astype(np.float32)
        factors[name] = (a, b)
    return factors


def attention_shapes(n_embd: int, kv_dim: int, layers: int) -> dict[str, tuple[int, int]]:
    """Shapes of attn_q and attn_v in every block."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(layers):
        shapes[f"blk.{layer}.attn_q.weight"] = (n_embd, n_embd)
        shapes[f"blk.{layer}.attn_v.weight"] = (kv_dim, n_embd)
    return shapes


def write_random_adapter(path: Path, shapes: dict[str, tuple[int, int]], **kwargs: float) -> Path:
    """Write a random adapter with alpha 8 for the llama architecture."""
    return write_adapter(path, random_factors(shapes, **kwargs), alpha=8.0, architecture="llama")  # type: ignore[arg-type]
