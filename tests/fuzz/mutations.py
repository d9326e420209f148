"""Hypothesis strategies for hostile bytes: random blobs and mutations of a valid input.

Mutations are what a flaky link or an attacker produces from a real message: bit flips, byte
overwrites, truncation, inserted or deleted runs, duplicated slices, and splices of random
bytes, alone or stacked. Starting from a valid input reaches the deep checks that random
bytes never get past (a parser's magic and length fields).
"""

import os

from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
"""Examples per property (CI: 200; `FUZZ_EXAMPLES=5000 pytest tests/fuzz` digs deeper)."""


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, max_steps: int = 4) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, max_steps))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup", "splice"]))
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord("{"), ord('"'), 0x30]))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "dup" and n:
            end = min(n, pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
        elif op == "splice" and n:
            chunk = draw(st.binary(min_size=1, max_size=32))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def hostile(valid: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of `valid`, or random bytes (of any length up to twice its size)."""
    return st.one_of(mutated(valid), st.binary(max_size=max(64, 2 * len(valid))))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
"""Any JSON value, including NaN/Infinity (which Python's json writes and must be refused)."""
