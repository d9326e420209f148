"""Update blobs: every mutation or random blob is decoded to finite, well-shaped deltas or
refused with `DecodeError`; nothing else escapes `decode_update`."""

import json
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.federation.codec import (
    CodecSpec,
    DecodeError,
    RoundContext,
    decode_update,
    encode_update,
)
from appliance.federation.privacy_claim import DpReport
from appliance.federation.updates import Delta, GlobalAdapter
from tests.fuzz.mutations import EXAMPLES, hostile, json_values

RNG = np.random.default_rng(0)
BASE = GlobalAdapter(
    1,
    {
        f"blk.{i}.attn_q.weight": (
            RNG.normal(size=(4, 32)).astype(np.float32),
            RNG.normal(size=(16, 4)).astype(np.float32),
        )
        for i in range(2)
    },
    8.0,
    frozen_a=True,
)
CONTEXT = RoundContext("box-1", "r1", "a" * 64, 1)
LIMIT = 1 << 20


def blob(spec: CodecSpec, privacy: DpReport | None = None) -> bytes:
    deltas = {
        name: Delta(None, RNG.normal(size=b.shape).astype(np.float32))
        for name, (_a, b) in BASE.factors.items()
    }
    return encode_update(deltas, 10, spec, CONTEXT, privacy).blob


VALID = [
    blob(CodecSpec()),
    blob(CodecSpec(values="fp16", compression="none")),
    blob(CodecSpec(values="fp32", top_k_fraction=0.25, compression="none")),
    blob(CodecSpec(values="int8", top_k_fraction=0.5, compression="zstd")),
    blob(CodecSpec(), DpReport(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, epsilon=4.7,
                               releases=1)),
]


def check(data: bytes) -> None:
    try:
        header, update = decode_update(data, BASE, LIMIT)
    except DecodeError as exc:
        assert str(exc)  # a reason, never an empty message
        return
    assert set(update.deltas) == set(BASE.factors)
    for name, delta in update.deltas.items():
        assert delta.a is None
        assert delta.b.shape == BASE.factors[name][1].shape
        assert np.isfinite(delta.b).all()
    assert header.sample_count >= 1


def test_the_valid_blobs_decode() -> None:
    for data in VALID:
        decode_update(data, BASE, LIMIT)


@given(st.sampled_from(range(len(VALID))).flatmap(lambda i: hostile(VALID[i])))
@settings(max_examples=EXAMPLES * 3, deadline=None)
def test_mutated_or_random_update_blobs(data: bytes) -> None:
    check(data)


@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "format": json_values, "node_id": json_values, "tensors": json_values,
    "codec": json_values, "privacy": json_values, "body_bytes": json_values,
})), st.binary(max_size=200))
@settings(max_examples=EXAMPLES, deadline=None)
def test_arbitrary_json_headers(header: object, body: bytes) -> None:
    raw = json.dumps(header).encode()
    check(struct.pack("<4sHI", b"APUP", 1, len(raw)) + raw + body)


@given(st.integers(0, len(VALID[0])))
@settings(max_examples=EXAMPLES, deadline=None)
def test_every_truncation(cut: int) -> None:
    check(VALID[0][:cut])
