"""Lossy value codings: fp16, blockwise int8 and int4, and top-k sparsification.

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
    """Per-value bound on |decode(encode(x)) - x|: half the block's scale, plus rounding. A
    subnormal scale (a block of values near 1e-40) is off by up to half a subnormal step,
    which the largest code (127) multiplies: hence 128 smallest subnormals of slack."""
    _, scales = int8_encode(values, block)
    bound = np.repeat(scales / 2, block)[: np.asarray(values).size]
    finfo = np.finfo(np.float32)
    slack: np.ndarray = (
        bound * (1 + 1e-6)
        + finfo.eps * np.abs(np.ravel(values))
        + 128 * float(finfo.smallest_subnormal)
    )
    return slack


def top_k_count(size: int, fraction: float) -> int:
    """How many values top-k keeps of `size`: ceil(fraction * size), at least 1 (all if over)."""
    return min(size, max(1, int(np.ceil(fraction * size)))) if size else 0


def top_k_indices(values: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted flat indices of the ceil(fraction * n) largest-magnitude values."""
    flat = np.asarray(values).ravel()
    k = top_k_count(flat.size, fraction)
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.uint32)
    chosen = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(chosen).astype(np.uint32)


INT4_LEVELS = 7


def int4_encode(values: np.ndarray, block: int) -> tuple[bytes, np.ndarray]:
    """Flat float values -> (packed int4 codes, float32 scale per block).

    Codes are -7..7 (symmetric, so -8 never occurs and a receiver can refuse it), two per
    byte, the first value in the low nibble; an odd count leaves the last high nibble 0.
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    blocks = -(-flat.size // block)
    padded = np.zeros(blocks * block, dtype=np.float32)
    padded[: flat.size] = flat
    grid = padded.reshape(blocks, block)
    peaks = np.abs(grid).max(axis=1) if blocks else np.zeros(0, np.float32)
    scales = (peaks / INT4_LEVELS).astype(np.float32)
    scales = np.where(peaks > 0, np.maximum(scales, _TINIEST), 0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    codes = np.clip(np.rint(grid / safe), -INT4_LEVELS, INT4_LEVELS).astype(np.int8)
    return pack_int4(codes.ravel()[: flat.size]), scales


def int4_decode(packed: bytes, count: int, scales: np.ndarray, block: int) -> np.ndarray:
    """Inverse of `int4_encode` (flat float32); raises ValueError on a code no encoder writes."""
    codes = unpack_int4(packed, count)
    expanded = np.repeat(scales, block)[:count]
    decoded: np.ndarray = codes.astype(np.float32) * expanded
    return decoded


def pack_int4(codes: np.ndarray) -> bytes:
    """int8 codes in -7..7 -> two's-complement nibbles, two per byte (low nibble first)."""
    nibbles = (codes.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(packed: bytes, count: int) -> np.ndarray:
    """Packed nibbles -> `count` int8 codes; refuses a wrong length, code -8 or a set pad."""
    if len(packed) != -(-count // 2):
        raise ValueError(f"{len(packed)} bytes do not hold {count} int4 codes")
    raw = np.frombuffer(packed, dtype=np.uint8)
    nibbles = np.empty(raw.size * 2, dtype=np.uint8)
    nibbles[0::2] = raw & 0xF
    nibbles[1::2] = raw >> 4
    if nibbles.size > count and nibbles[-1] != 0:
        raise ValueError("int4 padding nibble is not zero")
    nibbles = nibbles[:count]
    if (nibbles == 8).any():
        raise ValueError("int4 code -8 is outside the symmetric range -7..7")
    codes: np.ndarray = np.where(nibbles >= 8, nibbles.astype(np.int8) - 16, nibbles).astype(
        np.int8
    )
    return codes
