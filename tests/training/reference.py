"""An independent reference for the trainer: losses from llama.cpp forward passes, finite-
difference gradients, and a small numpy SGD / AdamW (the update rules of ggml's CPU ops)."""

from collections.abc import Callable

import numpy as np

from appliance.llm.adapters import LoraFactors
from appliance.llm.native import lib
from appliance.llm.opt_abi import abi
from appliance.llm.training.engine import AdapterContext

LORA_PARTS = (".lora_a", ".lora_b")


def window_loss(context: AdapterContext, data: np.ndarray, labels: np.ndarray) -> float:
    """Mean next-token cross-entropy of one window, from the logits of a plain decode."""
    count = len(data)
    batch = lib.llama_batch_init(count, 0, 1)
    try:
        for i, token in enumerate(data.tolist()):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = count
        assert lib.llama_decode(context.handle, batch) == 0
        vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(context.model.handle))
        logits = np.ctypeslib.as_array(lib.llama_get_logits(context.handle), shape=(count, vocab))
        logits = logits.astype(np.float64)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_memory_clear(lib.llama_get_memory(context.handle), True)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(count), labels]))


def set_factors(context: AdapterContext, factors: LoraFactors) -> None:
    """Write A and B into the adapter tensors the context computes with."""
    for base, (a, b) in factors.items():
        abi.numpy_to_tensor(context.tensors[base + ".lora_a"], a)
        abi.numpy_to_tensor(context.tensors[base + ".lora_b"], b)


def fd_gradient(
    loss: Callable[[], float],
    context: AdapterContext,
    factors: LoraFactors,
    entries: list[tuple[str, int, tuple[int, int]]],
    step: float,
) -> np.ndarray:
    """Central differences of `loss` for each (base, 0=A/1=B, index) entry."""
    grads = []
    for base, part, index in entries:
        values = [np.array(factors[base][0]), np.array(factors[base][1])]
        tensor = context.tensors[base + LORA_PARTS[part]]
        original = values[part][index]
        values[part][index] = original + step
        abi.numpy_to_tensor(tensor, values[part])
        up = loss()
        values[part][index] = original - step
        abi.numpy_to_tensor(tensor, values[part])
        down = loss()
        values[part][index] = original
        abi.numpy_to_tensor(tensor, values[part])
        grads.append((up - down) / (2 * step))
    return np.array(grads)


def all_entries(
    factors: LoraFactors, parts: tuple[int, ...]
) -> list[tuple[str, int, tuple[int, int]]]:
    """Every entry of the given parts (0 = A, 1 = B) of every factor pair."""
    return [
        (base, part, tuple(int(i) for i in index))
        for base, pair in sorted(factors.items())
        for part in parts
        for index in np.ndindex(pair[part].shape)
    ]


class NumpyAdamW:
    """ggml_compute_forward_opt_step_adamw_f32, one step at a time, in float64."""

    def __init__(self, size: int, alpha: float, beta1: float, beta2: float, eps: float) -> None:
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.alpha, self.beta1, self.beta2, self.eps = alpha, beta1, beta2, eps
        self.iteration = 0

    def update(self, grad: np.ndarray) -> np.ndarray:
        self.iteration += 1
        self.m = self.m * self.beta1 + grad * (1 - self.beta1)
        self.v = self.v * self.beta2 + grad * grad * (1 - self.beta2)
        m_hat = self.m / (1 - self.beta1**self.iteration)
        v_hat = self.v / (1 - self.beta2**self.iteration)
        return -self.alpha * m_hat / (np.sqrt(v_hat) + self.eps)
