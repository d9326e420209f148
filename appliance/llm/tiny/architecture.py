"""What one tiny architecture module provides: its name, its extra metadata, its blocks."""

from collections.abc import Callable
from dataclasses import dataclass

import gguf

from appliance.llm.tiny.weights import TinyShape, Weights


def no_metadata(_writer: gguf.GGUFWriter, _shape: TinyShape) -> None:
    """For architectures that need only the keys every tiny model has."""


@dataclass(frozen=True)
class TinyArchitecture:
    """A llama.cpp architecture as the tiny-model writer builds it."""

    name: str
    """`general.architecture`, as llama.cpp's llama-arch.cpp spells it."""
    special: str
    """What it has that llama does not, in a few words (for docs and `--help`)."""
    add_block: Callable[[Weights, str], None]
    """Adds the tensors of one block; the argument is the name prefix, e.g. 'blk.0.'."""
    add_metadata: Callable[[gguf.GGUFWriter, TinyShape], None] = no_metadata
    """Keys beyond the common ones (sliding window, ...)."""
    model_name: str = ""
    """`general.name`; empty = 'tiny-random-<name>'."""
