"""The in-process LoRA training engine: one model, one training context, one adapter.

Upstream llama.cpp never marks LoRA tensors trainable, so we do: the adapter is loaded from
a GGUF, attached to a training context, and its device tensors - found by a probe decode whose
scheduler callback sees them as sources of the graph's nodes - are marked with
`ggml_set_param`. Each optimizer step is one `llama_opt_epoch` over a one-row dataset, which
gives Python a step boundary for progress, learning-rate changes and stopping.

Gradients are reset between steps by ggml-opt itself on the project's build (patch
0003-ggml-opt-zero-gradients-after-step): stock llama.cpp accumulates them across steps in
this mode, so step k would apply the sum of all gradients so far.

Any GGML_ASSERT here aborts the process: run this only inside the trainer worker.
"""

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from appliance.errors import TrainingError
from appliance.llm.adapters import LORA_A_SUFFIX, LORA_B_SUFFIX, LoraFactors
from appliance.llm.native import bridge, lib
from appliance.llm.opt_abi import (
    GGML_OPT_OPTIMIZER_TYPE_ADAMW,
    GGML_OPT_OPTIMIZER_TYPE_SGD,
    GGML_TYPE_I32,
    EvalCallback,
    GgmlTensor,
    LlamaOptParams,
    OptimizerParams,
    ParamFilter,
    abi,
)

log = logging.getLogger(__name__)

Optimizer = Literal["adamw", "sgd"]
GGML_TYPE_F32_KV = 0
ADAMW_BETA1, ADAMW_BETA2, ADAMW_EPS = 0.9, 0.999, 1e-8
_backend_ready = False


def _reasons(mark: int) -> str:
    reasons = bridge.problems_since(mark)
    return f": {' / '.join(reasons[-3:])}" if reasons else ""


def training_model_params(gpu_layers: int) -> lib.llama_model_params:
    """llama_model_params for training: no repacked buffers, and `gpu_layers` offloaded
    (llama.cpp's default of -1 would put every layer on a GPU build's device)."""
    params: lib.llama_model_params = lib.llama_model_default_params()
    params.use_extra_bufts = False
    params.n_gpu_layers = gpu_layers
    return params


class TrainingModel:
    """A base model loaded for training (read-only mmap, no repacked CPU buffers).

    Repacked buffers (the default for Q4_0 on AVX2) abort in the backward pass
    (ggml-backend.cpp:1294), so training always loads without them.
    """

    def __init__(self, path: Path, gpu_layers: int = 0) -> None:
        global _backend_ready  # noqa: PLW0603 (llama_backend_init once per process)
        if not _backend_ready:
            lib.llama_backend_init()
            _backend_ready = True
        params = training_model_params(gpu_layers)
        mark = bridge.mark()
        self.handle = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.handle:
            raise TrainingError(f"{path}: llama.cpp could not load the model{_reasons(mark)}")
        self.path = path

    def load_adapter(self, path: Path) -> ctypes.c_void_p:
        """Load a LoRA adapter next to this model (freed with the model)."""
        mark = bridge.mark()
        handle: ctypes.c_void_p = lib.llama_adapter_lora_init(self.handle, str(path).encode())
        if not handle:
            raise TrainingError(f"{path}: llama.cpp refused the adapter{_reasons(mark)}")
        return handle

    def close(self) -> None:
        """Free the model and its adapters."""
        if self.handle:
            lib.llama_model_free(self.handle)
            self.handle = None


class AdapterContext:
    """A context with one adapter attached and a scheduler callback that sees every node.

    `probe(tokens)` decodes once so the callback can collect the adapter's device tensors
    by name (`<base>.lora_a` / `.lora_b`): only the public `struct ggml_tensor` layout is
    read, never llama.cpp's C++ objects. K/V are F32 and flash attention is off: ggml has
    no backward for F16 OUT_PROD nor for FLASH_ATTN_EXT, and the forward must match.
    """

    def __init__(
        self, model: TrainingModel, adapter: ctypes.c_void_p, n_ctx: int, threads: int
    ) -> None:
        self.tensors: dict[str, int] = {}
        self.scan_done = False
        """Set once everything is found: the callback then returns at once (it runs per node)."""
        self._eval_callback = EvalCallback(self._on_node)
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = 0
        params.type_k = params.type_v = GGML_TYPE_F32_KV
        params.cb_eval = self._eval_callback
        params.cb_eval_user_data = None
        mark = bridge.mark()
        self.handle = lib.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise TrainingError(f"llama.cpp could not create a training context{_reasons(mark)}")
        self.model = model
        self.n_ctx = int(lib.llama_n_ctx(self.handle))
        handles = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)  # type: ignore[misc]
        if lib.llama_set_adapters_lora(self.handle, handles, 1, (ctypes.c_float * 1)(1.0)) != 0:
            raise TrainingError("llama.cpp could not attach the adapter to the training context")

    def _on_node(self, tensor: int, ask: bool, _user_data: object) -> bool:
        if ask and not self.scan_done:
            for source in GgmlTensor.from_address(tensor).src:
                if source:
                    name = GgmlTensor.from_address(source).name
                    if name.endswith((b".lora_a", b".lora_b")):
                        self.tensors[name.decode()] = source
        return False

    def probe(self, tokens: Sequence[int]) -> None:
        """Decode `tokens` (exactly n_ctx of them once training is set up), then forget them."""
        if len(tokens) != self.n_ctx:
            raise ValueError(f"the probe needs {self.n_ctx} tokens, got {len(tokens)}")
        array = (lib.llama_token * len(tokens))(*tokens)
        mark = bridge.mark()
        if lib.llama_decode(self.handle, lib.llama_batch_get_one(array, len(tokens))) != 0:
            raise TrainingError(f"llama.cpp could not decode the probe window{_reasons(mark)}")
        lib.llama_memory_clear(lib.llama_get_memory(self.handle), True)

    def factors(self) -> LoraFactors:
        """The adapter's current A and B, copied out (numpy orientation, see adapters.py)."""
        bases = sorted({n.removesuffix(LORA_A_SUFFIX) for n in self.tensors if n.endswith("_a")})
        return {
            base: (
                abi.tensor_to_numpy(self.tensors[base + LORA_A_SUFFIX]),
                abi.tensor_to_numpy(self.tensors[base + LORA_B_SUFFIX]),
            )
            for base in bases
        }

    def close(self) -> None:
        """Free the context."""
        if self.handle:
            lib.llama_free(self.handle)
            self.handle = None


class LoraTrainer(AdapterContext):
    """Trains the attached adapter one window per optimizer step."""

    def __init__(
        self,
        model: TrainingModel,
        adapter: ctypes.c_void_p,
        *,
        n_ctx: int,
        threads: int,
        optimizer: Optimizer,
        freeze_a: bool,
        expected_pairs: int,
        probe_tokens: Sequence[int],
    ) -> None:
        super().__init__(model, adapter, n_ctx, threads)
        self.optimizer = optimizer
        self.steps = 0
        self._optimizer_params = OptimizerParams()
        self._set_learning_rate(1e-3)
        self._base_filter = ParamFilter(lambda _tensor, _user_data: False)
        options = LlamaOptParams(
            0,
            ctypes.cast(self._base_filter, ctypes.c_void_p).value,
            None,
            abi.constant_optimizer_params_address,
            ctypes.addressof(self._optimizer_params),
            GGML_OPT_OPTIMIZER_TYPE_SGD if optimizer == "sgd" else GGML_OPT_OPTIMIZER_TYPE_ADAMW,
        )
        abi.llama_opt_init(self.handle, model.handle, options)
        # opt_init re-creates the scheduler; llama installs cb_eval on it on the next decode
        self.probe(probe_tokens)
        if len(self.tensors) != 2 * expected_pairs:
            raise TrainingError(
                f"found {len(self.tensors)} adapter tensors in the graph, expected "
                f"{2 * expected_pairs}: this llama.cpp build attaches adapters differently"
            )
        self.scan_done = True  # the tensors are found: the per-node callback returns at once
        self.trainable = sorted(n for n in self.tensors if not (freeze_a and n.endswith("_a")))
        for name in self.trainable:
            abi.ggml_set_param(self.tensors[name])
        self._row = abi.ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, n_ctx, n_ctx, 1, 1)
        self._row_data = _dataset_view(abi.ggml_opt_dataset_data(self._row), 1, n_ctx)
        self._row_labels = _dataset_view(abi.ggml_opt_dataset_labels(self._row), 1, n_ctx)
        self._train_result = abi.ggml_opt_result_init()
        self._eval_result = abi.ggml_opt_result_init()

    def _set_learning_rate(self, rate: float) -> None:
        params = self._optimizer_params
        params.adamw.alpha, params.adamw.beta1, params.adamw.beta2 = rate, ADAMW_BETA1, ADAMW_BETA2
        params.adamw.eps, params.adamw.wd = ADAMW_EPS, 0.0
        params.sgd.alpha, params.sgd.wd = rate, 0.0

    def step(self, data: np.ndarray, labels: np.ndarray, learning_rate: float) -> float:
        """One optimizer step on one window; returns its mean training loss (nats/token).

        The rate comes from validated settings; ggml-opt asserts (aborts) on one <= 0.
        """
        self._row_data[0] = data
        self._row_labels[0] = labels
        self._set_learning_rate(learning_rate)
        abi.ggml_opt_result_reset(self._train_result)
        abi.llama_opt_epoch(
            self.handle, self._row, self._train_result, self._eval_result, 1, None, None
        )
        self.steps += 1
        loss = abi.result_loss(self._train_result)
        if not np.isfinite(loss):
            raise TrainingError(f"training loss became {loss} at step {self.steps}")
        return loss

    def evaluate(self, data: np.ndarray, labels: np.ndarray) -> float:
        """Mean loss over windows, forward only (after at least one step: ggml-opt allocates
        its static buffers on the first training step)."""
        if self.steps == 0:
            raise RuntimeError("evaluate() needs one training step first")
        rows = int(data.shape[0])
        dataset = abi.ggml_opt_dataset_init(
            GGML_TYPE_I32, GGML_TYPE_I32, self.n_ctx, self.n_ctx, rows, 1
        )
        try:
            _dataset_view(abi.ggml_opt_dataset_data(dataset), rows, self.n_ctx)[:] = data
            _dataset_view(abi.ggml_opt_dataset_labels(dataset), rows, self.n_ctx)[:] = labels
            abi.ggml_opt_result_reset(self._eval_result)
            abi.llama_opt_epoch(
                self.handle, dataset, self._train_result, self._eval_result, 0, None, None
            )
            return abi.result_loss(self._eval_result)
        finally:
            abi.ggml_opt_dataset_free(dataset)

    def close(self) -> None:
        """Free the dataset, results and context."""
        if self.handle:
            abi.ggml_opt_dataset_free(self._row)
            abi.ggml_opt_result_free(self._train_result)
            abi.ggml_opt_result_free(self._eval_result)
        super().close()


def _dataset_view(tensor: int, rows: int, columns: int) -> np.ndarray:
    pointer = ctypes.cast(abi.ggml_get_data(tensor), ctypes.POINTER(ctypes.c_int32))
    return np.ctypeslib.as_array(pointer, shape=(rows, columns))
