"""gemma3: GEGLU feed-forward, Q/K norms, norms after attention and feed-forward as well as
before, token embeddings scaled by sqrt(n_embd) (in llama.cpp's graph, not in the file), and
sliding-window attention on some layers.

The sliding window (128 tokens) is shorter than a training window (256), and the pattern
makes block 0 local and block 1 global, so both attention kinds are in every test.
"""

import gguf

from appliance.llm.tiny import llama
from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.weights import TinyShape, Weights

SLIDING_WINDOW = 128
SLIDING_WINDOW_PATTERN = (True, False)
"""Per block: True = sliding-window (local) attention; real Gemma 3 has 5 local, 1 global."""


def add_block(w: Weights, block: str) -> None:
    """Pre- and post-norms around attention and feed-forward, per-head Q/K norms."""
    s = w.shape
    w.norm(block + "attn_norm.weight", s.n_embd)
    llama.attention(w, block)
    w.jittered_norm(block + "attn_q_norm.weight", s.head_dim)
    w.jittered_norm(block + "attn_k_norm.weight", s.head_dim)
    w.jittered_norm(block + "post_attention_norm.weight", s.n_embd)
    w.norm(block + "ffn_norm.weight", s.n_embd)
    llama.gated_ffn(w, block)
    w.jittered_norm(block + "post_ffw_norm.weight", s.n_embd)


def add_metadata(writer: gguf.GGUFWriter, shape: TinyShape) -> None:
    """The sliding window and which blocks use it."""
    writer.add_sliding_window(SLIDING_WINDOW)
    writer.add_array(
        f"{writer.arch}.attention.sliding_window_pattern",
        list(SLIDING_WINDOW_PATTERN[: shape.n_layer]),
    )


ARCHITECTURE = TinyArchitecture(
    name="gemma3",
    special="GEGLU, sliding window, post-norms, Q/K norms, scaled embeddings",
    add_block=add_block,
    add_metadata=add_metadata,
)
