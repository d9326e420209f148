"""Just enough of ggml through ctypes to build, run and read small graphs in the tests of the
project's llama.cpp patches.

The functions are taken from the library llama-cpp-python loaded (`llama_cpp._lib`, which
honours LLAMA_CPP_LIB_PATH): dlsym on libllama also finds the symbols of the libggml*.so it
links, so the tests exercise exactly the build the product runs on. Tensors live in a ggml
context with its own memory (no_alloc=False) and graphs run on the CPU backend
(ggml_graph_compute_with_ctx), so a BLAS backend in the build does not take the ops the test
means to check. Anything that can hit a GGML_ASSERT (abort) runs in a child process through
`run_isolated`, so a failing patch shows as a failed test with llama.cpp's message, not as a
dead pytest.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from ctypes import c_bool, c_int, c_int64, c_size_t, c_void_p
from pathlib import Path
from typing import Any

import numpy as np

from appliance.llm.opt_abi import GgmlInitParams, GgmlTensor

REPO = Path(__file__).resolve().parents[2]

# enum ggml_type (ggml.h)
TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "q4_k": 12}
# enum ggml_glu_op (ggml.h)
GLU_OPS = {"reglu": 0, "geglu": 1, "swiglu": 2, "geglu_erf": 4, "geglu_quick": 5}

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "ggml_init": ([GgmlInitParams], c_void_p),
    "ggml_free": ([c_void_p], None),
    "ggml_new_tensor_4d": ([c_void_p, c_int, c_int64, c_int64, c_int64, c_int64], c_void_p),
    "ggml_nbytes": ([c_void_p], c_size_t),
    "ggml_row_size": ([c_int, c_int64], c_size_t),
    "ggml_quantize_chunk": (
        [c_int, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_void_p],
        c_size_t,
    ),
    "ggml_transpose": ([c_void_p, c_void_p], c_void_p),
    "ggml_out_prod": ([c_void_p, c_void_p, c_void_p], c_void_p),
    "ggml_sqr": ([c_void_p, c_void_p], c_void_p),
    "ggml_sum": ([c_void_p, c_void_p], c_void_p),
    "ggml_gelu": ([c_void_p, c_void_p], c_void_p),
    "ggml_gelu_erf": ([c_void_p, c_void_p], c_void_p),
    "ggml_gelu_quick": ([c_void_p, c_void_p], c_void_p),
    "ggml_glu": ([c_void_p, c_void_p, c_int, c_bool], c_void_p),
    "ggml_glu_split": ([c_void_p, c_void_p, c_void_p, c_int], c_void_p),
    "ggml_set_param": ([c_void_p], None),
    "ggml_set_loss": ([c_void_p], None),
    "ggml_new_graph_custom": ([c_void_p, c_size_t, c_bool], c_void_p),
    "ggml_build_forward_expand": ([c_void_p, c_void_p], None),
    "ggml_build_backward_expand": ([c_void_p, c_void_p, c_void_p], None),
    "ggml_graph_reset": ([c_void_p], None),
    "ggml_graph_get_grad": ([c_void_p, c_void_p], c_void_p),
    "ggml_graph_compute_with_ctx": ([c_void_p, c_void_p, c_int], c_int),
    "ggml_backend_blas_init": ([], c_void_p),
    "ggml_backend_free": ([c_void_p], None),
    "ggml_backend_supports_op": ([c_void_p, c_void_p], c_bool),
    "ggml_backend_graph_compute": ([c_void_p, c_void_p], c_int),
    "ggml_appliance_out_prod_dequantized": ([], c_int64),
    "ggml_appliance_out_prod_dequantized_reset": ([], None),
}


class Ggml:
    """Typed ggml functions of the loaded llama.cpp build; a missing one raises on first use."""

    def __init__(self) -> None:
        from llama_cpp import llama_cpp

        self.library: ctypes.CDLL = llama_cpp._lib

    def __getattr__(self, name: str) -> Any:
        argtypes, restype = _SIGNATURES[name]
        function = self.library[name]  # AttributeError: the build lacks the symbol
        function.argtypes = argtypes
        function.restype = restype
        setattr(self, name, function)
        return function

    def has(self, name: str) -> bool:
        """Whether the build exports `name` (patches add symbols)."""
        try:
            self.library[name]
        except AttributeError:
            return False
        return True


class Context:
    """A ggml context owning its tensors' memory; free it with `close` (or use `with`)."""

    def __init__(self, ggml: Ggml, mem_bytes: int = 64 << 20) -> None:
        self.ggml = ggml
        self.ctx = ggml.ggml_init(GgmlInitParams(mem_bytes, None, False))
        if not self.ctx:
            raise MemoryError(f"ggml_init could not allocate {mem_bytes} bytes")

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.ctx:
            self.ggml.ggml_free(self.ctx)
            self.ctx = None

    def tensor(self, type_name: str, ne: tuple[int, ...]) -> int:
        """A new tensor of ggml shape `ne` (ne[0] first), up to 4 dimensions."""
        dims = list(ne) + [1] * (4 - len(ne))
        return int(self.ggml.ggml_new_tensor_4d(self.ctx, TYPES[type_name], *dims))

    def f32(self, values: np.ndarray) -> int:
        """An F32 tensor holding `values` (numpy shape is ggml's ne reversed)."""
        data = np.ascontiguousarray(values, dtype=np.float32)
        tensor = self.tensor("f32", tuple(reversed(data.shape)))
        set_bytes(tensor, data.tobytes())
        return tensor

    def quantized(self, type_name: str, values: np.ndarray) -> tuple[int, bytes]:
        """A tensor of `type_name` holding `values` quantized by ggml, and its raw bytes."""
        data = np.ascontiguousarray(values, dtype=np.float32)
        tensor = self.tensor(type_name, tuple(reversed(data.shape)))
        n_per_row = data.shape[-1]
        raw = ctypes.create_string_buffer(self.ggml.ggml_nbytes(tensor))
        written = self.ggml.ggml_quantize_chunk(
            TYPES[type_name], data.ctypes.data, raw, 0, data.size // n_per_row, n_per_row, None
        )
        assert written == len(raw.raw), (written, len(raw.raw))
        set_bytes(tensor, raw.raw)
        return tensor, raw.raw

    def compute(self, tensors: list[int], n_threads: int, grads: bool = False) -> int:
        """Build the forward graph of `tensors` (and its backward when `grads`), run it on the
        CPU backend with `n_threads`, return the graph."""
        graph = self.ggml.ggml_new_graph_custom(self.ctx, 2048, grads)
        for tensor in tensors:
            self.ggml.ggml_build_forward_expand(graph, tensor)
        if grads:
            self.ggml.ggml_build_backward_expand(self.ctx, graph, None)
            self.ggml.ggml_graph_reset(graph)
        status = self.ggml.ggml_graph_compute_with_ctx(self.ctx, graph, n_threads)
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute_with_ctx returned status {status}")
        return int(graph)


def header(tensor: int) -> GgmlTensor:
    return GgmlTensor.from_address(tensor)


def set_bytes(tensor: int, raw: bytes) -> None:
    h = header(tensor)
    ctypes.memmove(h.data, raw, len(raw))


def read_f32(tensor: int) -> np.ndarray:
    """An F32 tensor's values in numpy order (ne reversed), following its strides."""
    h = header(tensor)
    if h.type != TYPES["f32"]:
        raise TypeError(f"tensor type {h.type} is not F32")
    shape = tuple(int(n) for n in reversed(h.ne))
    strides = tuple(int(s) for s in reversed(h.nb))
    span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 4
    buffer = (ctypes.c_char * span).from_address(h.data)
    view = np.ndarray(shape, dtype=np.float32, buffer=buffer, strides=strides)
    return np.array(view)


def run_isolated(function: str, out: Path, **kwargs: Any) -> dict[str, np.ndarray]:
    """Run `module:function(out=..., **kwargs)` in a child Python (same interpreter and
    environment, so the same llama.cpp build) and return the arrays it saved to `out` (.npz).

    A GGML_ASSERT in the child aborts only the child; the caller gets an AssertionError that
    quotes the child's last stderr lines (llama.cpp's assert message)."""
    module, name = function.split(":")
    code = (
        "import json, sys\n"
        f"from {module} import {name} as run\n"
        "run(out=sys.argv[1], **json.loads(sys.argv[2]))\n"
    )
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(kwargs)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise AssertionError(f"{function} exited with {done.returncode}:\n{tail}")
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


__all__ = ["GLU_OPS", "TYPES", "Context", "Ggml", "header", "read_f32", "run_isolated", "set_bytes"]
