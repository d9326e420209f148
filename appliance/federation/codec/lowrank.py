"""Low-rank factoring of one update factor, and the product both sides compute the same way.

A box's change of B (n_out x r) is sent as P (n_out x q) and Q (q x r) with q < r: the
truncated SVD gives P, P is coded first and Q is then fitted by least squares to the coded P,
so Q absorbs P's quantisation error. Error feedback keeps what the q directions miss.

The receiver's reconstruction must be bit for bit what the box credits itself with, on any
machine: `product` therefore avoids BLAS (whose summation order depends on the CPU and the
thread count) and adds the q outer products in float64, one after the other.
"""

from collections.abc import Callable

import numpy as np

Coder = Callable[[np.ndarray], tuple[bytes, np.ndarray]]
"""Flat float32 values -> (segment bytes, what the receiver decodes from them)."""


def product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left (n x k) @ right (k x m) in a fixed order (float64 sum of k outer products)."""
    out = np.zeros((left.shape[0], right.shape[1]), dtype=np.float64)
    wide_left, wide_right = left.astype(np.float64), right.astype(np.float64)
    for j in range(left.shape[1]):
        out += wide_left[:, j : j + 1] * wide_right[j : j + 1, :]
    return out.astype(np.float32)


def factor(array: np.ndarray, rank: int, code: Coder) -> tuple[bytes, np.ndarray]:
    """Code `array` (n x m) as rank-`rank` factors -> (P segment + Q segment, reconstruction)."""
    u, _, _ = np.linalg.svd(array.astype(np.float64), full_matrices=False)
    p_bytes, p_coded = code(u[:, :rank].astype(np.float32).ravel())
    p = p_coded.reshape(array.shape[0], rank)
    q_fit = np.linalg.lstsq(p.astype(np.float64), array.astype(np.float64), rcond=None)[0]
    q_bytes, q_coded = code(q_fit.astype(np.float32).ravel())
    q = q_coded.reshape(rank, array.shape[1])
    return p_bytes + q_bytes, product(p, q)
