"""qwen2: llama's block plus biases on the Q, K and V projections (random, so they matter)."""

from appliance.llm.tiny import llama
from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.weights import Weights


def add_block(w: Weights, block: str) -> None:
    """llama's block, then attn_q/attn_k/attn_v.bias."""
    llama.add_block(w, block)
    s = w.shape
    w.bias(block + "attn_q.bias", s.n_embd)
    w.bias(block + "attn_k.bias", s.kv_dim)
    w.bias(block + "attn_v.bias", s.kv_dim)


ARCHITECTURE = TinyArchitecture(name="qwen2", special="Q/K/V biases", add_block=add_block)
