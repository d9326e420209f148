"""The tiny models' vocabulary: SPM with byte fallback, as llama-family models have.

Every tiny architecture uses it (llama.cpp's loader does not tie a tokenizer to an
architecture), so text tokenizes the same way on all of them and tests can compare them.
"""

SPM_SPACE = "\u2581"
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte tokens, the SPM space, a-z and '▁a'..'▁z' (312 tokens)."""
    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(TOKEN_BYTE)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for piece in [SPM_SPACE, *letters, *(SPM_SPACE + c for c in letters)]:
        tokens.append(piece)
        scores.append(-float(len(piece)))
        types.append(TOKEN_NORMAL)
    return tokens, scores, types
