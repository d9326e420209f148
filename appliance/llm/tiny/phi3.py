"""phi3: one fused Q/K/V matrix (attn_qkv) and one fused gate/up matrix (ffn_up, twice n_ff
rows: gate first), so LoRA adapts attn_qkv, not attn_q/attn_v, and the feed-forward is a
single-tensor SwiGLU (ggml_swiglu on the fused output)."""

from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.weights import Weights


def add_block(w: Weights, block: str) -> None:
    """attn_norm, attn_qkv, attn_output, ffn_norm, fused ffn_up, ffn_down."""
    s = w.shape
    w.norm(block + "attn_norm.weight", s.n_embd)
    w.matrix(block + "attn_qkv.weight", s.n_embd + 2 * s.kv_dim, s.n_embd)
    w.matrix(block + "attn_output.weight", s.n_embd, s.n_embd)
    w.norm(block + "ffn_norm.weight", s.n_embd)
    w.matrix(block + "ffn_up.weight", 2 * s.n_ff, s.n_embd)
    w.matrix(block + "ffn_down.weight", s.n_embd, s.n_ff)


ARCHITECTURE = TinyArchitecture(
    name="phi3",
    special="fused QKV (attn_qkv), fused gate/up",
    add_block=add_block,
    # llama.cpp's vocabulary loader treats a model *named* phi3/phi-3 specially and then
    # needs Phi-3's <|endoftext|> token, which the shared tiny vocabulary does not have
    model_name="tiny-random-phi",
)
