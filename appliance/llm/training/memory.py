"""Up-front estimate of the trainer worker's peak memory, to refuse a run that will not fit.

Training keeps the activations of a whole window for the backward pass; they grow with the
window (and quadratically in attention), the width of the model and its vocabulary. The
coefficients are deliberately on the high side of what was measured (docs/benchmarks.md):
refusing a run that would just fit costs less than a box swapping or being OOM-killed.
"""

from dataclasses import dataclass

from appliance.llm.gguf_file import ModelInfo

PROCESS_OVERHEAD_MB = 160.0
"""Python, numpy, llama.cpp libraries and thread stacks of the worker."""

_MB = 1024.0 * 1024.0
_F32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak resident memory of a training run, by part (MiB)."""

    weights_mb: float
    activations_mb: float
    adapter_mb: float
    overhead_mb: float = PROCESS_OVERHEAD_MB

    @property
    def total_mb(self) -> float:
        """Sum of the parts."""
        return self.weights_mb + self.activations_mb + self.adapter_mb + self.overhead_mb

    def describe(self) -> str:
        """One line an operator can act on."""
        return (
            f"{self.total_mb:.0f} MiB (weights {self.weights_mb:.0f}, activations "
            f"{self.activations_mb:.0f}, adapter and optimizer {self.adapter_mb:.0f}, "
            f"process {self.overhead_mb:.0f})"
        )


def estimate_training_memory(
    info: ModelInfo,
    *,
    adapted_layers: int,
    train_file_bytes: int,
    window_tokens: int,
    adapter_parameters: int,
    adamw: bool,
) -> MemoryEstimate:
    """Estimate for training `info`'s architecture from a file of `train_file_bytes`.

    Activations are kept for the backward pass only from the lowest adapted block up.
    """
    per_layer = (
        12 * info.embedding_length
        + 4 * info.feed_forward_length
        + 2 * info.head_count * window_tokens
    )
    activations = window_tokens * _F32 * (adapted_layers * per_layer + 3 * info.vocab_size)
    copies = 4 if adamw else 2  # value, gradient (+ two AdamW moments)
    return MemoryEstimate(
        weights_mb=train_file_bytes / _MB,
        activations_mb=activations / _MB,
        adapter_mb=adapter_parameters * _F32 * copies / _MB,
    )
