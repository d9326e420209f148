"""K-quant tiny models, made by llama.cpp's own quantizer from an F32 tiny model.

The `gguf` package cannot write Q4_K, so the F32 file goes through `llama_model_quantize`
with Q4_K_M, the mix most published GGUFs use (Q4_K, with Q6_K for some attn_v/ffn_down
and the output head), exactly as a user's downloaded model was made.
"""

from pathlib import Path

from appliance.errors import ModelError

LLAMA_FTYPE_MOSTLY_Q4_K_M = 15
QUANTIZE_THREADS = 1
"""One thread: the rows are tiny, and every thread count gives the same bytes anyway."""


def quantize_q4_k_m(source: Path, out: Path) -> Path:
    """Write `source` (an F32 GGUF) to `out` as Q4_K_M."""
    from appliance.llm.native import lib  # noqa: PLC0415 (llama.cpp only when asked for)

    params = lib.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = QUANTIZE_THREADS
    status = lib.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0:
        raise ModelError(f"{out}: llama.cpp could not quantize {source} to Q4_K_M ({status})")
    return out
