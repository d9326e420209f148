"""Tiny random GGUF models of several llama.cpp architectures, for tests and demos.

Each has what a real model of its architecture has (the tensor names and metadata keys
llama.cpp's loader wants, an SPM vocabulary with byte fallback) at a few hundred KB, so
every llama.cpp code path we use, training included, runs on it in milliseconds. Same
arguments, same bytes. One module per architecture says which tensors a block has.

    make_tiny_model(out, quant="q4_k", arch="phi3")
"""

import tempfile
from pathlib import Path
from typing import Literal

import gguf
from gguf import GGMLQuantizationType, LlamaFileType

from appliance.llm.tiny import gemma3, llama, phi3, qwen2, qwen3
from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.kquant import quantize_q4_k_m
from appliance.llm.tiny.vocab import vocabulary
from appliance.llm.tiny.weights import SMALL, WIDE, TinyShape, Weights

TinyQuant = Literal["f32", "q8_0", "q4_0", "q4_k"]
TINY_QUANTS: tuple[TinyQuant, ...] = ("f32", "q8_0", "q4_0")
"""Written directly by the `gguf` package (the set most tests run on)."""
ALL_TINY_QUANTS: tuple[TinyQuant, ...] = (*TINY_QUANTS, "q4_k")
"""Also q4_k (Q4_K_M), which llama.cpp's quantizer makes from the F32 model."""

ARCHITECTURES: dict[str, TinyArchitecture] = {
    module.ARCHITECTURE.name: module.ARCHITECTURE for module in (llama, qwen2, qwen3, gemma3, phi3)
}
TINY_ARCHS: tuple[str, ...] = tuple(ARCHITECTURES)

_QUANT_TYPES: dict[str, tuple[LlamaFileType, GGMLQuantizationType | None]] = {
    "f32": (LlamaFileType.ALL_F32, None),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    "q4_0": (LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0),
}


def make_tiny_model(
    out: Path,
    quant: TinyQuant = "f32",
    seed: int = 0,
    license_name: str | None = "apache-2.0",
    arch: str | TinyArchitecture = "llama",
) -> Path:
    """Write a tiny `arch` model with block matrices in `quant` to `out`; return the path.

    `arch` names one of ARCHITECTURES, or is a TinyArchitecture of the caller's (tests use
    one to make a model of an architecture the trainer does not support).
    """
    if quant not in ALL_TINY_QUANTS:
        raise ValueError(f"quant must be one of {', '.join(ALL_TINY_QUANTS)} (got {quant!r})")
    if isinstance(arch, str) and arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(TINY_ARCHS)} (got {arch!r})")
    architecture = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    if quant != "q4_k":
        return _write(out, architecture, SMALL, quant=quant, seed=seed, license=license_name)
    with tempfile.TemporaryDirectory(prefix="appliance-tiny-") as work:
        f32 = Path(work) / "f32.gguf"
        _write(f32, architecture, WIDE, quant="f32", seed=seed, license=license_name)
        return quantize_q4_k_m(f32, out)


def _write(
    out: Path,
    architecture: TinyArchitecture,
    shape: TinyShape,
    *,
    quant: str,
    seed: int,
    license: str | None,
) -> Path:
    file_type, qtype = _QUANT_TYPES[quant]
    tokens, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(out), architecture.name)
    name = architecture.model_name or f"tiny-random-{architecture.name}"
    _write_metadata(
        writer,
        name=name,
        shape=shape,
        file_type=file_type,
        vocab=(tokens, scores, types),
        license_name=license,
    )
    architecture.add_metadata(writer, shape)
    weights = Weights(writer, shape, qtype, seed)
    weights.dense("token_embd.weight", len(tokens), shape.n_embd)
    weights.norm("output_norm.weight", shape.n_embd)
    weights.dense("output.weight", len(tokens), shape.n_embd, std=0.1)
    for layer in range(shape.n_layer):
        architecture.add_block(weights, f"blk.{layer}.")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _write_metadata(
    writer: gguf.GGUFWriter,
    *,
    name: str,
    shape: TinyShape,
    file_type: LlamaFileType,
    vocab: tuple[list[str], list[float], list[int]],
    license_name: str | None,
) -> None:
    tokens, scores, types = vocab
    writer.add_name(name)
    if license_name is not None:
        writer.add_license(license_name)
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(int(file_type))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
