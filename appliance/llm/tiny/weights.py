"""Where a tiny architecture puts its tensors: shapes, random values, storage types.

An architecture module only says which tensors a block has; this module draws their values
from one seeded generator (so the same seed gives the same file, byte for byte) and stores
block matrices in the requested type. Norm weights, biases, token embeddings and the output
head stay F32, as in real quantized GGUFs.
"""

from dataclasses import dataclass

import gguf
import numpy as np
from gguf import GGMLQuantizationType

MATRIX_STD, EMBEDDING_STD = 0.1, 0.5
BIAS_STD, NORM_JITTER = 0.1, 0.1


@dataclass(frozen=True)
class TinyShape:
    """Sizes of a tiny model."""

    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_layer: int
    n_ctx: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def kv_dim(self) -> int:
        """Width of K (and V): fewer heads than Q (grouped-query attention)."""
        return self.n_head_kv * self.head_dim


SMALL = TinyShape(n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_layer=2, n_ctx=1024)
"""The default: every matrix row a multiple of 32, the block of Q8_0 and Q4_0."""
WIDE = TinyShape(n_embd=256, n_head=4, n_head_kv=2, n_ff=256, n_layer=2, n_ctx=1024)
"""For K-quants: their blocks are 256 wide, and llama.cpp stores a narrower row in another
type (Q5_0/Q8_0), which would leave the K-quant kernels untested."""


class Weights:
    """Adds tensors to a GGUF writer with seeded random values."""

    def __init__(
        self,
        writer: gguf.GGUFWriter,
        shape: TinyShape,
        qtype: GGMLQuantizationType | None,
        seed: int,
    ) -> None:
        self.writer = writer
        self.shape = shape
        self._qtype = qtype
        self._rng = np.random.default_rng(seed)

    def _normal(self, size: tuple[int, ...], std: float) -> np.ndarray:
        return self._rng.normal(0.0, std, size=size).astype(np.float32)

    def dense(self, name: str, rows: int, cols: int, std: float = EMBEDDING_STD) -> None:
        """An F32 matrix whatever the quantisation (embeddings, output head)."""
        self.writer.add_tensor(name, self._normal((rows, cols), std))

    def matrix(self, name: str, rows: int, cols: int) -> None:
        """A block matrix (numpy rows = outputs) in the model's type."""
        array = self._normal((rows, cols), MATRIX_STD)
        if self._qtype is None:
            self.writer.add_tensor(name, array)
        else:
            quantized = gguf.quants.quantize(array, self._qtype)
            self.writer.add_tensor(name, quantized, raw_dtype=self._qtype)

    def norm(self, name: str, size: int) -> None:
        """An RMS norm weight of ones."""
        self.writer.add_tensor(name, np.ones(size, dtype=np.float32))

    def jittered_norm(self, name: str, size: int) -> None:
        """A norm weight near one, so a wrong norm in a graph shows in its output."""
        self.writer.add_tensor(name, 1.0 + self._normal((size,), NORM_JITTER))

    def bias(self, name: str, size: int) -> None:
        """A random F32 bias vector."""
        self.writer.add_tensor(name, self._normal((size,), BIAS_STD))
