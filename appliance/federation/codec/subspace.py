"""Shared-basis coding: only the coefficients of an update on a basis both sides derive travel.

`seed`: a random +-1/sqrt(n) basis (n x k) drawn from a seed that follows from the round, the
global version and the tensor name, so a new basis every round and nothing but k x m
coefficients on the wire. `global` (in the style of Fed-SB's r x r core): the basis is the
round's global factor itself (B: n_out x r, so the core R is r x r and the result
B + B R = B (I + R) stays an ordinary B), completed by seeded columns up to k; at global
version 0 B is zero, so the basis is all seeded.

The box fits the coefficients by least squares (its own LAPACK); the reconstruction
basis @ coefficients is `lowrank.product`, identical on both sides.
"""

import hashlib

import numpy as np

from appliance.federation.codec.lowrank import Coder, product

SEED_HEX_CHARS = 16


def round_seed(round_id: str, global_version: int) -> str:
    """The round's basis seed (hex), written in the header so a mismatch is caught by name."""
    digest = hashlib.sha256(f"apup-basis\0{round_id}\0{global_version}".encode()).hexdigest()
    return digest[:SEED_HEX_CHARS]


def seeded_basis(seed: str, tensor: str, rows: int, columns: int) -> np.ndarray:
    """A rows x columns +-1/sqrt(rows) matrix from the round seed and the tensor name (PCG64:
    the same numbers on every machine and numpy version that keeps its stream stable)."""
    digest = hashlib.sha256(f"{seed}\0{tensor}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little")))
    signs = rng.integers(0, 2, size=(rows, columns), dtype=np.int8) * 2 - 1
    basis: np.ndarray = (signs / np.sqrt(rows)).astype(np.float32)
    return basis


def basis_for(
    kind: str,
    *,
    seed: str,
    tensor: str,
    dim: int,
    rows: int,
    global_factor: np.ndarray | None,
) -> np.ndarray:
    """The rows x dim basis of one tensor (see the module docstring)."""
    if kind == "seed" or global_factor is None or not np.any(global_factor):
        return seeded_basis(seed, tensor, rows, dim)
    own = np.asarray(global_factor, dtype=np.float32)[:, :dim]
    if own.shape[1] == dim:
        return own
    extra = seeded_basis(seed, tensor, rows, dim - own.shape[1])
    return np.concatenate([own, extra], axis=1)


def project(array: np.ndarray, basis: np.ndarray, code: Coder) -> tuple[bytes, np.ndarray]:
    """Code `array` (n x m) as coefficients (k x m) on `basis` -> (segment, reconstruction)."""
    fit = np.linalg.lstsq(basis.astype(np.float64), array.astype(np.float64), rcond=None)[0]
    segment, coded = code(fit.astype(np.float32).ravel())
    return segment, product(basis, coded.reshape(basis.shape[1], array.shape[1]))
