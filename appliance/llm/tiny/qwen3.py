"""qwen3: llama's block plus an RMS norm on every Q and K head before RoPE (attn_q_norm,
attn_k_norm), which puts RMS_NORM on 3-d views into the backward pass."""

from appliance.llm.tiny import llama
from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.weights import Weights


def add_block(w: Weights, block: str) -> None:
    """llama's block, then the per-head Q/K norms (near one, so a misplaced norm shows)."""
    llama.add_block(w, block)
    w.jittered_norm(block + "attn_q_norm.weight", w.shape.head_dim)
    w.jittered_norm(block + "attn_k_norm.weight", w.shape.head_dim)


ARCHITECTURE = TinyArchitecture(name="qwen3", special="Q/K norms", add_block=add_block)
