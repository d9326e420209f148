"""Held-out split of records and fixed-length token windows for llama.cpp training.

llama.cpp trains on rows of exactly `n_ctx` tokens (a wrong row length aborts the process),
and its loss has no padding mask, so every window is cut from one continuous token stream:
the records' tokens one after the other. A stream shorter than one window is repeated to
fill it - training on little data repeats it anyway - and the caller is told so.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")


def split_heldout(
    items: Sequence[Item], validation_fraction: float, seed: int
) -> tuple[list[Item], list[Item]]:
    """(train, held-out): the same seed and items always give the same split.

    With at least two items and a positive fraction, one item at least is held out and one
    at least is kept for training.
    """
    count = len(items)
    if validation_fraction <= 0 or count < 2:
        return list(items), []
    held = min(count - 1, max(1, round(count * validation_fraction)))
    order = np.random.default_rng(seed).permutation(count)
    held_set = set(order[:held].tolist())
    train = [item for i, item in enumerate(items) if i not in held_set]
    heldout = [item for i, item in enumerate(items) if i in held_set]
    return train, heldout


@dataclass(frozen=True)
class Windows:
    """Training rows: `data[i]` are the inputs, `labels[i]` the next tokens (both int32)."""

    data: np.ndarray
    labels: np.ndarray
    stream_tokens: int
    repeated: bool

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def window_tokens(self) -> int:
        """Tokens per row."""
        return int(self.data.shape[1])


def token_windows(stream: Sequence[int], window_tokens: int, stride_tokens: int) -> Windows:
    """Cut `stream` into rows of `window_tokens` starting every `stride_tokens` tokens."""
    if window_tokens <= 0 or not 0 < stride_tokens <= window_tokens:
        raise ValueError(f"bad window {window_tokens} / stride {stride_tokens}")
    if not stream:
        raise ValueError("no tokens to cut windows from")
    tokens = np.asarray(stream, dtype=np.int32)
    repeated = len(tokens) < window_tokens + 1
    if repeated:
        tokens = np.resize(tokens, window_tokens + 1)
    count = 1 + (len(tokens) - window_tokens - 1) // stride_tokens
    starts = np.arange(count) * stride_tokens
    offsets = np.arange(window_tokens)
    data = tokens[starts[:, None] + offsets]
    labels = tokens[starts[:, None] + offsets + 1]
    return Windows(data, labels, len(stream), repeated)
