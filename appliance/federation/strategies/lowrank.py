"""Running sums of low-rank products, in two exact-as-possible forms with bounded memory.

`LowRankSum` never forms the dense matrix: sum_j P_j Q_j is held as [P_1 ... P_n]
[Q_1; ...; Q_n]. Its SVD comes from QR of both stacks and an SVD of the small core (research
note: cost O((d + k) m^2) for stacked rank m). When the stack grows past `max_rank` it is
compressed to its best rank max_rank/2, so memory stays bounded however many products are
added; the norm of everything dropped that way is tracked.

`DenseSum` is for when the dense d x k matrix is affordable (a 1B-class model's 2048 x 2048
projections: 32 MB each): products are stacked the same way, but a full stack is folded into
the dense sum with one matrix product instead of being truncated, so nothing is lost before
the final rank-r truncation, and folding 16 rank-16 products costs one GEMM (measured on 2
cores: ~15x cheaper per update than re-factorising the stack, see docs/benchmarks.md).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Truncated:
    """Best rank-r factors of the sum and how much of it they miss."""

    left: np.ndarray
    right: np.ndarray
    relative_error: float
    streaming_error_bound: float


class LowRankSum:
    """Running sum of products P (d, r_j) @ Q (r_j, k)."""

    def __init__(self, rows: int, cols: int, max_rank: int) -> None:
        if max_rank < 2:
            raise ValueError("max_rank must be at least 2")
        self.max_rank = max_rank
        self._left = np.zeros((rows, max_rank), np.float64)
        self._right = np.zeros((max_rank, cols), np.float64)
        self._used = 0
        self._dropped_norm = 0.0

    def add(self, left: np.ndarray, right: np.ndarray) -> None:
        """Add left @ right (compressing first if the stack would overflow)."""
        rank = left.shape[1]
        if rank > self.max_rank // 2:
            raise ValueError(f"a product of rank {rank} exceeds max_rank/2 = {self.max_rank // 2}")
        if self._used + rank > self.max_rank:
            self._compress(self.max_rank // 2)
        self.append(left, right)

    @property
    def used(self) -> int:
        """Stacked rank held now."""
        return self._used

    def append(self, left: np.ndarray, right: np.ndarray) -> None:
        """Stack a product that fits in the free rank."""
        rank = left.shape[1]
        self._left[:, self._used : self._used + rank] = left
        self._right[self._used : self._used + rank] = right
        self._used += rank

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The stacked factors (views): their product is the sum."""
        return self._left[:, : self._used], self._right[: self._used]

    def clear(self) -> None:
        """Forget everything added (the dropped-norm bound included)."""
        self._used = 0
        self._dropped_norm = 0.0

    def _svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        left, right = self.factors()
        q1, r1 = np.linalg.qr(left)
        q2, r2 = np.linalg.qr(right.T)
        u, s, vt = np.linalg.svd(r1 @ r2.T)
        return q1 @ u, s, vt @ q2.T

    def _compress(self, keep: int) -> None:
        u, s, vt = self._svd()
        self._dropped_norm += float(np.sqrt(np.sum(s[keep:] ** 2)))
        kept = min(keep, len(s))
        self._left[:] = 0
        self._right[:] = 0
        self._left[:, :kept] = u[:, :kept] * s[:kept]
        self._right[:kept] = vt[:kept]
        self._used = kept

    def truncate(self, rank: int, scale: float = 1.0) -> Truncated:
        """Best rank-`rank` factors of scale * sum, split evenly between B and A."""
        u, s, vt = self._svd()
        s = s * abs(scale)
        u = u * np.sign(scale)
        total = float(np.sqrt(np.sum(s**2)))
        bound = self._dropped_norm * abs(scale) / total if total > 0 else 0.0
        return _split(u, s, vt, rank, bound)


class DenseSum:
    """Running sum of products kept exactly as a dense (d, k) matrix, folded in batches."""

    def __init__(self, rows: int, cols: int, batch_rank: int) -> None:
        self._dense = np.zeros((rows, cols), np.float64)
        self._stack = LowRankSum(rows, cols, max_rank=max(2, batch_rank))

    def add(self, left: np.ndarray, right: np.ndarray) -> None:
        """Add left @ right (folding the batch into the dense sum when it is full)."""
        rank = left.shape[1]
        if rank > self._stack.max_rank:
            self._dense += left @ right
            return
        if self._stack.used + rank > self._stack.max_rank:
            self._fold()
        self._stack.append(left, right)

    def _fold(self) -> None:
        left, right = self._stack.factors()
        self._dense += left @ right
        self._stack.clear()

    def truncate(self, rank: int, scale: float = 1.0) -> Truncated:
        """Best rank-`rank` factors of scale * sum (exact: dense SVD, nothing dropped earlier)."""
        self._fold()
        return truncate_dense(self._dense * scale, rank)


def truncate_dense(matrix: np.ndarray, rank: int) -> Truncated:
    """Best rank-`rank` factors of a dense matrix (for statistics that need the dense value)."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return _split(u, s, vt, rank, 0.0)


def _split(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int, bound: float) -> Truncated:
    """Keep the top `rank` singular triplets as B = U sqrt(S), A = sqrt(S) V^T (zero-padded)."""
    total = float(np.sqrt(np.sum(s**2)))
    tail = float(np.sqrt(np.sum(s[rank:] ** 2)))
    root = np.sqrt(s[:rank])
    left = np.zeros((u.shape[0], rank))
    right = np.zeros((rank, vt.shape[1]))
    left[:, : len(root)] = u[:, :rank] * root
    right[: len(root)] = root[:, None] * vt[:rank]
    return Truncated(left, right, tail / total if total > 0 else 0.0, bound)
