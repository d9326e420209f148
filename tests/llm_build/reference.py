"""numpy references for the llama.cpp patch tests: ggml's OUT_PROD on dequantized weights.

Dequantization uses the `gguf` package's own numpy code (gguf.quants), not ggml's, so a wrong
block offset in a kernel cannot hide behind the same wrong offset in the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

_GGUF_TYPES = {
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_k": GGMLQuantizationType.Q4_K,
}


def weights(type_name: str, raw: np.ndarray, case: dict[str, Any]) -> np.ndarray:
    """src0 as float64 in numpy shape (ne03, ne02, ne01, ne00) from its raw ggml bytes."""
    shape = (case["ne03"], case["ne02"], case["ne01"], case["ne00"])
    if type_name == "f32":
        values = np.frombuffer(raw.tobytes(), dtype=np.float32)
    else:
        rows = raw.reshape(-1, raw.size // int(np.prod(shape[:-1])))
        values = dequantize(rows, _GGUF_TYPES[type_name])
    return np.asarray(values, dtype=np.float64).reshape(shape)


def out_prod(w: np.ndarray, src1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml_out_prod(w, src1) in float64 and the same sum over absolute values (the scale of
    the fp32 rounding error): dst[i3, i2, i1, i0] = sum_k w[i03, i02, k, i0] src1[i3, i2, k, i1],
    w broadcast over dims 2 and 3 as ggml does (i02 = i2 / (ne2 / ne02))."""
    s = np.asarray(src1, dtype=np.float64)
    w = np.repeat(np.repeat(w, s.shape[0] // w.shape[0], axis=0), s.shape[1] // w.shape[1], axis=1)
    exact = np.einsum("abki,abkj->abji", w, s)
    scale = np.einsum("abki,abkj->abji", np.abs(w), np.abs(s))
    return exact, scale


def assert_fp32_close(actual: np.ndarray, exact: np.ndarray, scale: np.ndarray, terms: int) -> None:
    """Equal within fp32 rounding: the worst case of a `terms`-long fp32 sum in any order
    (terms/2 ulps of the sum of absolute values) plus a few ulps for the products and for
    dequantization done in another order than numpy's."""
    assert actual.shape == exact.shape, (actual.shape, exact.shape)
    bound = (terms + 4) * np.finfo(np.float32).eps * scale + 1e-30
    error = np.abs(actual.astype(np.float64) - exact)
    worst = np.unravel_index(np.argmax(error / bound), error.shape)
    assert np.all(error <= bound), (
        f"max error {error[worst]:.3g} at {worst} exceeds fp32 rounding {bound[worst]:.3g} "
        f"(value {exact[worst]:.6g})"
    )
