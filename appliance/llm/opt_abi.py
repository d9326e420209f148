"""ctypes declarations for llama.cpp's training API (llama_opt_*) and ggml-opt (ggml_opt_*).

llama-cpp-python 0.3.36 declares `llama_opt_params` without its trailing `optimizer_type`
(40 bytes instead of 48: passed by value, C reads garbage) and does not declare the
`ggml_opt_*` functions at all, which live in the bundled `libggml-base.so`. We declare our
own structs and take fresh function pointers (`lib[name]`), so llama-cpp-python's cached
function objects keep their own argtypes.

At import, `check_training_abi()` verifies exported symbols, struct sizes and the layout of
`struct ggml_tensor` (by reading a tensor ggml itself created) and raises ONE
`DependencyError` naming every difference, instead of letting a mismatch segfault later.
"""

import ctypes
from collections.abc import Callable
from ctypes import c_bool, c_char, c_double, c_float, c_int, c_int32, c_int64, c_size_t, c_void_p
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import DependencyError
from appliance.llm.abi import REQUIRED_LLAMA_CPP_PYTHON
from appliance.llm.native import lib as llama_lib
from appliance.llm.native import llama_cpp

GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
GGML_OPT_OPTIMIZER_TYPE_ADAMW = 0
GGML_OPT_OPTIMIZER_TYPE_SGD = 1
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_OBJECT_BYTES = 32
"""sizeof(struct ggml_object) in ggml.c: offs, size, next (3 x 8) + type (4) + padding (4)."""


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h, public): read to find adapter tensors and gradients."""

    _fields_ = [
        ("type", c_int),
        ("buffer", c_void_p),
        ("ne", c_int64 * 4),
        ("nb", c_size_t * 4),
        ("op", c_int),
        ("op_params", c_int32 * 16),
        ("flags", c_int32),
        ("src", c_void_p * GGML_MAX_SRC),
        ("view_src", c_void_p),
        ("view_offs", c_size_t),
        ("data", c_void_p),
        ("name", c_char * GGML_MAX_NAME),
        ("extra", c_void_p),
        ("padding", c_char * 8),
    ]


class AdamWParams(ctypes.Structure):
    """The `adamw` member of struct ggml_opt_optimizer_params."""

    _fields_ = [
        ("alpha", c_float),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("wd", c_float),
    ]


class SgdParams(ctypes.Structure):
    """The `sgd` member of struct ggml_opt_optimizer_params."""

    _fields_ = [("alpha", c_float), ("wd", c_float)]


class OptimizerParams(ctypes.Structure):
    """struct ggml_opt_optimizer_params; ggml reads it again before every optimizer step."""

    _fields_ = [("adamw", AdamWParams), ("sgd", SgdParams)]


class LlamaOptParams(ctypes.Structure):
    """struct llama_opt_params of the vendored llama.h, WITH the trailing optimizer_type."""

    _fields_ = [
        ("n_ctx_train", ctypes.c_uint32),
        ("param_filter", c_void_p),
        ("param_filter_ud", c_void_p),
        ("get_opt_pars", c_void_p),
        ("get_opt_pars_ud", c_void_p),
        ("optimizer_type", c_int),
    ]


class GgmlInitParams(ctypes.Structure):
    """struct ggml_init_params (used only by the layout probe)."""

    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


EXPECTED_SIZES = {
    "struct ggml_tensor": (GgmlTensor, 336),
    "struct ggml_opt_optimizer_params": (OptimizerParams, 28),
    "struct llama_opt_params": (LlamaOptParams, 48),
}

ParamFilter = ctypes.CFUNCTYPE(c_bool, c_void_p, c_void_p)
EvalCallback = llama_cpp.ggml_backend_sched_eval_callback

_GGML_SIGNATURES: dict[str, tuple[list[type], type | None]] = {
    "ggml_opt_dataset_init": ([c_int, c_int, c_int64, c_int64, c_int64, c_int64], c_void_p),
    "ggml_opt_dataset_free": ([c_void_p], None),
    "ggml_opt_dataset_data": ([c_void_p], c_void_p),
    "ggml_opt_dataset_labels": ([c_void_p], c_void_p),
    "ggml_opt_result_init": ([], c_void_p),
    "ggml_opt_result_free": ([c_void_p], None),
    "ggml_opt_result_reset": ([c_void_p], None),
    "ggml_opt_result_loss": ([c_void_p, ctypes.POINTER(c_double), ctypes.POINTER(c_double)], None),
    "ggml_get_data": ([c_void_p], c_void_p),
    "ggml_get_name": ([c_void_p], ctypes.c_char_p),
    "ggml_set_name": ([c_void_p, ctypes.c_char_p], c_void_p),
    "ggml_nbytes": ([c_void_p], c_size_t),
    "ggml_nelements": ([c_void_p], c_int64),
    "ggml_set_param": ([c_void_p], None),
    "ggml_tensor_overhead": ([], c_size_t),
    "ggml_init": ([GgmlInitParams], c_void_p),
    "ggml_free": ([c_void_p], None),
    "ggml_new_tensor_2d": ([c_void_p, c_int, c_int64, c_int64], c_void_p),
    "ggml_backend_tensor_get": ([c_void_p, c_void_p, c_size_t, c_size_t], None),
    "ggml_backend_tensor_set": ([c_void_p, c_void_p, c_size_t, c_size_t], None),
    "ggml_opt_get_constant_optimizer_params": ([c_void_p], OptimizerParams),
}
_LLAMA_SIGNATURES: dict[str, tuple[list[type], type | None]] = {
    "llama_opt_init": ([c_void_p, c_void_p, LlamaOptParams], None),
    "llama_opt_epoch": (
        [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_void_p, c_void_p],
        None,
    ),
}


def _ggml_base_library() -> ctypes.CDLL | None:
    folder = Path(llama_cpp.__file__).parent / "lib"
    path = folder / "libggml-base.so"
    return ctypes.CDLL(str(path)) if path.exists() else None


class TrainingAbi:
    """Typed function pointers of the training API, bound once per process."""

    ggml_opt_dataset_init: Callable[..., Any]
    ggml_opt_dataset_free: Callable[..., Any]
    ggml_opt_dataset_data: Callable[..., Any]
    ggml_opt_dataset_labels: Callable[..., Any]
    ggml_opt_result_init: Callable[..., Any]
    ggml_opt_result_free: Callable[..., Any]
    ggml_opt_result_reset: Callable[..., Any]
    ggml_opt_result_loss: Callable[..., Any]
    ggml_get_data: Callable[..., Any]
    ggml_get_name: Callable[..., Any]
    ggml_set_name: Callable[..., Any]
    ggml_nbytes: Callable[..., Any]
    ggml_nelements: Callable[..., Any]
    ggml_set_param: Callable[..., Any]
    ggml_tensor_overhead: Callable[..., Any]
    ggml_init: Callable[..., Any]
    ggml_free: Callable[..., Any]
    ggml_new_tensor_2d: Callable[..., Any]
    ggml_backend_tensor_get: Callable[..., Any]
    ggml_backend_tensor_set: Callable[..., Any]
    ggml_opt_get_constant_optimizer_params: Callable[..., Any]
    llama_opt_init: Callable[..., Any]
    llama_opt_epoch: Callable[..., Any]

    def __init__(self, ggml: ctypes.CDLL, llama: ctypes.CDLL) -> None:
        for table, library in ((_GGML_SIGNATURES, ggml), (_LLAMA_SIGNATURES, llama)):
            for name, (argtypes, restype) in table.items():
                function = library[name]  # fresh pointer: llama_cpp's cached ones stay as they are
                function.argtypes = argtypes
                function.restype = restype
                setattr(self, name, function)
        self.constant_optimizer_params_address: int = (
            ctypes.cast(ggml["ggml_opt_get_constant_optimizer_params"], c_void_p).value or 0
        )

    def tensor_to_numpy(self, tensor: int) -> np.ndarray:
        """Copy a 2-D F32 tensor into numpy as (ne[1], ne[0]) - rows are ggml's ne[1]."""
        header = GgmlTensor.from_address(tensor)
        rows, cols = int(header.ne[1]), int(header.ne[0])
        out = np.empty((rows, cols), dtype=np.float32)
        self.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, out.nbytes)
        return out

    def numpy_to_tensor(self, tensor: int, array: np.ndarray) -> None:
        """Overwrite a 2-D F32 tensor with `array` of numpy shape (ne[1], ne[0])."""
        header = GgmlTensor.from_address(tensor)
        data = np.ascontiguousarray(array, dtype=np.float32)
        if data.shape != (int(header.ne[1]), int(header.ne[0])):
            raise ValueError(f"shape {data.shape} does not fit tensor ne {tuple(header.ne)}")
        self.ggml_backend_tensor_set(tensor, data.ctypes.data, 0, data.nbytes)

    def result_loss(self, result: int) -> float:
        """Mean loss recorded in a ggml_opt_result."""
        loss, uncertainty = c_double(), c_double()
        self.ggml_opt_result_loss(result, ctypes.byref(loss), ctypes.byref(uncertainty))
        return float(loss.value)


def _layout_problems(abi: TrainingAbi) -> list[str]:
    """Let ggml create a tensor and read it back through our struct."""
    problems = []
    overhead = int(abi.ggml_tensor_overhead())
    if overhead != GGML_OBJECT_BYTES + ctypes.sizeof(GgmlTensor):
        problems.append(
            f"ggml_tensor_overhead() is {overhead}, expected "
            f"{GGML_OBJECT_BYTES + ctypes.sizeof(GgmlTensor)} (struct ggml_tensor changed)"
        )
        return problems
    context = abi.ggml_init(GgmlInitParams(4 * overhead, None, True))
    try:
        tensor = abi.ggml_new_tensor_2d(context, GGML_TYPE_F32, 3, 5)
        abi.ggml_set_name(tensor, b"appliance-abi-probe")
        seen = GgmlTensor.from_address(tensor)
        if (seen.type, tuple(seen.ne), seen.name) != (
            GGML_TYPE_F32,
            (3, 5, 1, 1),
            b"appliance-abi-probe",
        ) or tuple(seen.nb[:2]) != (4, 12):
            problems.append("struct ggml_tensor fields are not where this code expects them")
    finally:
        abi.ggml_free(context)
    return problems


def check_training_abi() -> TrainingAbi:
    """Bind the training API, or raise one `DependencyError` listing every difference."""
    problems = []
    for label, (struct, size) in EXPECTED_SIZES.items():
        if ctypes.sizeof(struct) != size:
            problems.append(f"sizeof({label}) is {ctypes.sizeof(struct)} here, expected {size}")
    ggml = _ggml_base_library()
    if ggml is None:
        problems.append("llama_cpp/lib/libggml-base.so is missing")
    else:
        problems += [f"libggml-base lacks {n}" for n in _GGML_SIGNATURES if not hasattr(ggml, n)]
    problems += [f"libllama lacks {n}" for n in _LLAMA_SIGNATURES if not hasattr(llama_lib._lib, n)]
    abi = None
    if not problems and ggml is not None:
        abi = TrainingAbi(ggml, llama_lib._lib)
        problems += _layout_problems(abi)
    if problems or abi is None:
        raise DependencyError(
            "the llama.cpp training ABI differs from the one appliance was written for "
            f"(llama-cpp-python {REQUIRED_LLAMA_CPP_PYTHON}, llama.cpp 0c1e57098): "
            + "; ".join(problems)
        )
    return abi


abi = check_training_abi()

__all__ = [
    "GGML_OPT_OPTIMIZER_TYPE_ADAMW",
    "GGML_OPT_OPTIMIZER_TYPE_SGD",
    "EvalCallback",
    "GgmlTensor",
    "LlamaOptParams",
    "OptimizerParams",
    "ParamFilter",
    "TrainingAbi",
    "abi",
    "check_training_abi",
]
