"""Lossy value codings: fp16, blockwise int8 and top-k sparsification.

Blockwise int8 keeps one float32 scale per block of consecutive values (per-tensor int8 costs
far more accuracy: one outlier flattens a whole tensor). The error of each value is at most
half its block's scale.
"""

import numpy as np

INT8_LEVELS = 127
_TINIEST = np.finfo(np.float32).smallest_subnormal


def int8_encode(values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat float values -> (int8 codes, float32 scale per block)."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    blocks = -(-flat.size // block)
    padded = np.zeros(blocks * block, dtype=np.float32)
    padded[: flat.size] = flat
    grid = padded.reshape(blocks, block)
    peaks = np.abs(grid).max(axis=1)
    scales = (peaks / INT8_LEVELS).astype(np.float32)
    # a block of subnormals would get scale 0 and vanish; the tiniest scale keeps it
    scales = np.where(peaks > 0, np.maximum(scales, _TINIEST), 0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    codes = np.clip(np.rint(grid / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes.ravel()[: flat.size], scales


def int8_decode(codes: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """Inverse of `int8_encode` (flat float32)."""
    expanded = np.repeat(scales, block)[: codes.size]
    decoded: np.ndarray = codes.astype(np.float32) * expanded
    return decoded


def int8_error_bound(values: np.ndarray, block: int) -> np.ndarray:
    """Per-value bound on |decode(encode(x)) - x|: half the block's scale (plus rounding)."""
    _, scales = int8_encode(values, block)
    bound = np.repeat(scales / 2, block)[: np.asarray(values).size]
    slack: np.ndarray = bound * (1 + 1e-6) + np.finfo(np.float32).eps * np.abs(np.ravel(values))
    return slack


def top_k_indices(values: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted flat indices of the ceil(fraction * n) largest-magnitude values."""
    flat = np.asarray(values).ravel()
    k = max(1, int(np.ceil(fraction * flat.size))) if flat.size else 0
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.uint32)
    chosen = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(chosen).astype(np.uint32)
