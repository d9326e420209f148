"""The model architectures the trainer supports, and the check made before a run starts.

Inference runs every architecture llama.cpp loads; training does not. ggml builds the
backward pass op by op and aborts (GGML_ABORT, the whole process) at an op it has no backward
for - Gemma 3's GEGLU on stock llama.cpp, Phi-3's fused SwiGLU - and an architecture nobody
has trained here may learn nothing or the wrong thing without any error. So the supervisor
reads `general.architecture` from the GGUF and refuses, with a reason, any architecture that
is not in this table or whose backward needs a patch this build lacks, before a worker starts.

The table is the one in docs/architectures.md; tests/training/test_architectures.py trains
every entry on a tiny model of each quantisation.
"""

from dataclasses import dataclass

from appliance.config.lora import DEFAULT_TARGETS
from appliance.errors import TrainingError
from appliance.llm.abi import HOW_TO_BUILD, REQUIRED_LLAMA_PATCHES


@dataclass(frozen=True)
class Architecture:
    """One architecture the trainer has been tested on."""

    name: str
    """`general.architecture` as llama.cpp spells it."""
    special: str
    """What its graph has that llama's does not."""
    needs_patches: tuple[str, ...] = ()
    """Numbers of patches/llama.cpp/ patches its backward pass needs (e.g. '0007')."""

    def missing_patches(self, applied: tuple[str, ...] = REQUIRED_LLAMA_PATCHES) -> list[str]:
        """The needed patch numbers that `applied` (patch names) lacks.

        The default is right for the running build: appliance.llm.native refuses any
        llama.cpp whose patch series differs from REQUIRED_LLAMA_PATCHES.
        """
        return [n for n in self.needs_patches if not any(a.startswith(n + "-") for a in applied)]


SUPPORTED: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("llama", "grouped-query attention, SwiGLU (also SmolLM2, Mistral-style)"),
        Architecture("qwen2", "biases on Q, K and V"),
        Architecture("qwen3", "RMS norm on every Q and K head"),
        Architecture(
            "gemma3",
            "GEGLU, sliding-window attention, post-norms, scaled embeddings",
            needs_patches=("0007",),
        ),
        Architecture(
            "phi3", "fused QKV (attn_qkv), fused gate/up SwiGLU", needs_patches=("0006", "0008")
        ),
    )
}

PATCH_PURPOSE = {
    "0007": "GELU/GEGLU backward",
    "0006": "backward of the fused (single-tensor) SwiGLU",
    "0008": "backward of a view of a fused matrix",
}

FUSED = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "ffn_gate": "ffn_up"}
"""Where a model fuses matrices, the matrix that holds each of them."""


def check_trainable(
    architecture: str, applied: tuple[str, ...] = REQUIRED_LLAMA_PATCHES
) -> Architecture:
    """The table entry for `architecture`, or `TrainingError` saying why it cannot be trained."""
    entry = SUPPORTED.get(architecture)
    if entry is None:
        raise TrainingError(
            f"training a {architecture!r} model is not supported: the trainer is tested on "
            f"{', '.join(SUPPORTED)} (docs/architectures.md says how to add one); "
            "the model can still be served"
        )
    missing = entry.missing_patches(applied)
    if missing:
        needed = ", ".join(f"{n} ({PATCH_PURPOSE.get(n, 'backward pass')})" for n in missing)
        raise TrainingError(
            f"training a {architecture!r} model needs llama.cpp patch {needed}, which this "
            f"build lacks (llama.cpp would abort in the backward pass); {HOW_TO_BUILD}"
        )
    return entry


def resolve_targets(targets: list[str], present: set[str]) -> list[str]:
    """The block weights to adapt: `targets`, except that the default (attn_q, attn_v) on a
    model with fused Q/K/V means the fused matrix (attn_qkv, as on phi3).

    Explicit targets are kept as they are, so a name the model lacks is refused by the caller
    with the names it has.
    """
    if tuple(targets) != DEFAULT_TARGETS or present.issuperset(targets):
        return targets
    fused = list(dict.fromkeys(FUSED.get(t, t) for t in targets))
    return fused if present.issuperset(fused) else targets


def fused_hint(missing: list[str], present: set[str]) -> str:
    """' (this model fuses attn_q into attn_qkv)'-style hint for names held by a fused matrix."""
    held = [f"{m} into {FUSED[m]}" for m in missing if m in FUSED and FUSED[m] in present]
    return f" (this model fuses {', '.join(held)})" if held else ""
