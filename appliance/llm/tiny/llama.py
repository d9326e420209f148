"""llama: grouped-query attention, SwiGLU feed-forward with separate gate and up, RMS norms.

The blocks of the other tiny architectures are built from these pieces plus what they add.
"""

from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.weights import Weights


def attention(w: Weights, block: str) -> None:
    """attn_q, attn_k, attn_v (fewer K/V heads than Q) and attn_output."""
    s = w.shape
    w.matrix(block + "attn_q.weight", s.n_embd, s.n_embd)
    w.matrix(block + "attn_k.weight", s.kv_dim, s.n_embd)
    w.matrix(block + "attn_v.weight", s.kv_dim, s.n_embd)
    w.matrix(block + "attn_output.weight", s.n_embd, s.n_embd)


def gated_ffn(w: Weights, block: str) -> None:
    """ffn_gate, ffn_up and ffn_down: GLU feed-forward with separate gate and up matrices."""
    s = w.shape
    w.matrix(block + "ffn_gate.weight", s.n_ff, s.n_embd)
    w.matrix(block + "ffn_up.weight", s.n_ff, s.n_embd)
    w.matrix(block + "ffn_down.weight", s.n_embd, s.n_ff)


def add_block(w: Weights, block: str) -> None:
    """The order (and so the random draws) of the original tiny llama: same seed, same file."""
    w.norm(block + "attn_norm.weight", w.shape.n_embd)
    attention(w, block)
    w.norm(block + "ffn_norm.weight", w.shape.n_embd)
    gated_ffn(w, block)


ARCHITECTURE = TinyArchitecture(
    name="llama", special="grouped-query attention, SwiGLU", add_block=add_block
)
