"""A tiny random llama-architecture GGUF for tests and demos (a few hundred KB).

It has what a real llama model has (SPM vocabulary with byte fallback, GQA attention, SwiGLU
feed-forward, RMS norms), so every llama.cpp code path we use runs on it in milliseconds.
Norm weights stay F32 and token embeddings and the output head stay F32, as in real
quantized GGUFs; the block matrices take the requested type.
"""

from pathlib import Path
from typing import Literal

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

TinyQuant = Literal["f32", "q8_0", "q4_0"]
TINY_QUANTS: tuple[TinyQuant, ...] = ("f32", "q8_0", "q4_0")

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX = 64, 4, 2, 128, 2, 1024
HEAD_DIM = N_EMBD // N_HEAD
_QUANT_TYPES: dict[TinyQuant, tuple[LlamaFileType, GGMLQuantizationType | None]] = {
    "f32": (LlamaFileType.ALL_F32, None),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    "q4_0": (LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0),
}


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte tokens, the SPM space, a-z and '▁a'..'▁z'."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(6)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for piece in ["\u2581", *letters, *("\u2581" + c for c in letters)]:
        tokens.append(piece)
        scores.append(-float(len(piece)))
        types.append(1)
    return tokens, scores, types


def make_tiny_model(
    out: Path, quant: TinyQuant = "f32", seed: int = 0, license_name: str | None = "apache-2.0"
) -> Path:
    """Write the tiny model to `out` and return the path."""
    if quant not in _QUANT_TYPES:
        raise ValueError(f"quant must be one of {', '.join(TINY_QUANTS)} (got {quant!r})")
    file_type, qtype = _QUANT_TYPES[quant]
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    writer = gguf.GGUFWriter(str(out), "llama")
    _write_metadata(
        writer,
        file_type=file_type,
        tokens=tokens,
        scores=scores,
        types=types,
        license_name=license_name,
    )

    def matrix(rows: int, cols: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=(rows, cols)).astype(np.float32)

    def add_matrix(name: str, array: np.ndarray) -> None:
        if qtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", matrix(len(tokens), N_EMBD, 0.5))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", matrix(len(tokens), N_EMBD, 0.1))
    kv_dim = N_HEAD_KV * HEAD_DIM
    for layer in range(N_LAYER):
        block = f"blk.{layer}."
        writer.add_tensor(block + "attn_norm.weight", ones)
        add_matrix(block + "attn_q.weight", matrix(N_EMBD, N_EMBD, 0.1))
        add_matrix(block + "attn_k.weight", matrix(kv_dim, N_EMBD, 0.1))
        add_matrix(block + "attn_v.weight", matrix(kv_dim, N_EMBD, 0.1))
        add_matrix(block + "attn_output.weight", matrix(N_EMBD, N_EMBD, 0.1))
        writer.add_tensor(block + "ffn_norm.weight", ones)
        add_matrix(block + "ffn_gate.weight", matrix(N_FF, N_EMBD, 0.1))
        add_matrix(block + "ffn_up.weight", matrix(N_FF, N_EMBD, 0.1))
        add_matrix(block + "ffn_down.weight", matrix(N_EMBD, N_FF, 0.1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _write_metadata(
    writer: gguf.GGUFWriter,
    *,
    file_type: LlamaFileType,
    tokens: list[str],
    scores: list[float],
    types: list[int],
    license_name: str | None,
) -> None:
    writer.add_name("tiny-random-llama")
    if license_name is not None:
        writer.add_license(license_name)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
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
