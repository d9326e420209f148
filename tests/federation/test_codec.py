"""Update codec: round trips within the stated bounds, error feedback, and every refusal."""

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from appliance.federation.codec import (
    CodecSpec,
    DecodeError,
    ErrorFeedback,
    RoundContext,
    decode_update,
    encode_update,
)
from appliance.federation.codec.quantize import int8_error_bound
from appliance.federation.updates import Delta, GlobalAdapter

CONTEXT = RoundContext("box-1", "r1", "ab" * 32, 3)
LIMIT = 1 << 26


def adapter(frozen: bool = True, rank: int = 4, seed: int = 0) -> GlobalAdapter:
    rng = np.random.default_rng(seed)
    factors = {
        f"blk.{i}.attn_q.weight": (
            rng.normal(size=(rank, 64)).astype(np.float32),
            rng.normal(size=(48, rank)).astype(np.float32),
        )
        for i in range(2)
    }
    return GlobalAdapter(version=3, factors=factors, alpha=8.0, frozen_a=frozen)


def deltas_for(base: GlobalAdapter, seed: int = 1, scale: float = 0.01) -> dict[str, Delta]:
    rng = np.random.default_rng(seed)
    return {
        name: Delta(
            None if base.frozen_a else (rng.normal(size=a.shape) * scale).astype(np.float32),
            (rng.normal(size=b.shape) * scale).astype(np.float32),
        )
        for name, (a, b) in base.factors.items()
    }


def roundtrip(base: GlobalAdapter, deltas: dict[str, Delta], spec: CodecSpec):
    encoded = encode_update(deltas, 100, spec, CONTEXT)
    header, update = decode_update(encoded.blob, base, LIMIT)
    return encoded, header, update


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
@pytest.mark.parametrize("frozen", [True, False])
def test_fp32_round_trip_is_exact(compression: str, frozen: bool) -> None:
    base = adapter(frozen)
    deltas = deltas_for(base)
    encoded, header, update = roundtrip(
        base, deltas, CodecSpec(values="fp32", compression=compression)
    )
    assert header.sample_count == 100 and header.node_id == "box-1" and header.frozen_a == frozen
    for name, delta in deltas.items():
        np.testing.assert_array_equal(update.deltas[name].b, delta.b)
        if frozen:
            assert update.deltas[name].a is None
        else:
            np.testing.assert_array_equal(update.deltas[name].a, delta.a)
        np.testing.assert_array_equal(encoded.sent[name].b, update.deltas[name].b)


def test_frozen_a_sends_only_b() -> None:
    frozen = encode_update(
        deltas_for(adapter(True)), 1, CodecSpec(values="fp32", compression="none"), CONTEXT
    )
    trained = encode_update(
        deltas_for(adapter(False)), 1, CodecSpec(values="fp32", compression="none"), CONTEXT
    )
    assert frozen.dense_fp32_bytes == 2 * 48 * 4 * 4
    assert trained.dense_fp32_bytes == 2 * (48 * 4 + 4 * 64) * 4
    assert len(frozen.blob) < len(trained.blob)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    block=st.sampled_from([8, 16, 64, 256]),
)
@example(values=np.array([[5.2e-42, -3.1e-43], [1e-44, 0.0]], np.float32), block=8)  # subnormal
def test_int8_round_trip_is_within_half_a_block_scale(values: np.ndarray, block: int) -> None:
    rank = values.shape[1]
    base = GlobalAdapter(
        1,
        {
            "blk.0.attn_v.weight": (
                np.zeros((rank, 3), np.float32),
                np.zeros(values.shape, np.float32),
            )
        },
        1.0,
        True,
    )
    deltas = {"blk.0.attn_v.weight": Delta(None, values)}
    _, _, update = roundtrip(base, deltas, CodecSpec(values="int8", block=block))
    error = np.abs(update.deltas["blk.0.attn_v.weight"].b - values).ravel()
    assert (error <= int8_error_bound(values, block)).all()


@settings(max_examples=40, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 30), st.integers(1, 8)),
        elements=st.floats(-100, 100, width=32),
    )
)
def test_fp16_round_trip_is_within_half_precision(values: np.ndarray) -> None:
    base = GlobalAdapter(
        1,
        {"w": (np.zeros((values.shape[1], 2), np.float32), np.zeros(values.shape, np.float32))},
        1.0,
        True,
    )
    _, _, update = roundtrip(base, {"w": Delta(None, values)}, CodecSpec(values="fp16"))
    np.testing.assert_allclose(update.deltas["w"].b, values, rtol=2**-10, atol=2**-24)


def test_top_k_keeps_the_largest_values_and_zeroes_the_rest() -> None:
    base = adapter(True)
    deltas = deltas_for(base)
    _, header, update = roundtrip(base, deltas, CodecSpec(values="fp32", top_k_fraction=0.1))
    for name, delta in deltas.items():
        got, want = update.deltas[name].b.ravel(), delta.b.ravel()
        kept = np.flatnonzero(got)
        assert len(kept) == int(np.ceil(0.1 * want.size))
        np.testing.assert_array_equal(got[kept], want[kept])
        assert np.abs(want[kept]).min() >= np.abs(np.delete(want, kept)).max()
    assert all(t.count == 20 for t in header.tensors)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rounds=st.integers(1, 6),
    fraction=st.sampled_from([0.01, 0.1, 0.5]),
)
def test_error_feedback_sent_plus_residual_equals_the_true_sum(
    seed: int, rounds: int, fraction: float
) -> None:
    base = adapter(False)
    feedback = ErrorFeedback()
    spec = CodecSpec(values="int8", top_k_fraction=fraction)
    true_sum = {n: np.zeros_like(b, dtype=np.float64) for n, (_, b) in base.factors.items()}
    sent_sum = {n: np.zeros_like(b, dtype=np.float64) for n, (_, b) in base.factors.items()}
    true_a = {n: np.zeros_like(a, dtype=np.float64) for n, (a, _) in base.factors.items()}
    sent_a = {n: np.zeros_like(a, dtype=np.float64) for n, (a, _) in base.factors.items()}
    for r in range(rounds):
        deltas = deltas_for(base, seed=seed * 10 + r)
        corrected = feedback.corrected(deltas)
        encoded = encode_update(corrected, 1, spec, CONTEXT)
        _, update = decode_update(encoded.blob, base, LIMIT)
        feedback.remember(corrected, update.deltas)
        for name, delta in deltas.items():
            true_sum[name] += delta.b
            sent_sum[name] += update.deltas[name].b
            true_a[name] += delta.a
            sent_a[name] += update.deltas[name].a
    for name, total in true_sum.items():
        np.testing.assert_allclose(sent_sum[name] + feedback.residual[name].b, total, atol=1e-5)
        np.testing.assert_allclose(
            sent_a[name] + feedback.residual[name].a, true_a[name], atol=1e-5
        )


def test_error_feedback_survives_a_restart(tmp_path) -> None:
    base = adapter(False)
    feedback = ErrorFeedback()
    corrected = feedback.corrected(deltas_for(base))
    encoded = encode_update(corrected, 1, CodecSpec(top_k_fraction=0.1), CONTEXT)
    feedback.remember(corrected, encoded.sent)
    feedback.save(tmp_path / "residual.npz")
    again = ErrorFeedback.load(tmp_path / "residual.npz")
    for name, delta in feedback.residual.items():
        np.testing.assert_array_equal(again.residual[name].b, delta.b)
        np.testing.assert_array_equal(again.residual[name].a, delta.a)
    assert ErrorFeedback.load(tmp_path / "absent.npz").residual == {}


def test_compression_ratio_is_reported() -> None:
    base = adapter(True, rank=8)
    deltas = deltas_for(base)
    dense = encode_update(deltas, 1, CodecSpec(values="fp32", compression="none"), CONTEXT)
    sparse = encode_update(deltas, 1, CodecSpec(values="int8", top_k_fraction=0.01), CONTEXT)
    assert dense.ratio < 1.0  # the header costs something on a tiny update
    assert sparse.ratio > 3 * dense.ratio
    assert sparse.dense_fp32_bytes == dense.dense_fp32_bytes


# -- refusals -------------------------------------------------------------------------------------


def good_blob(spec: CodecSpec | None = None, frozen: bool = True) -> bytes:
    base = adapter(frozen)
    return encode_update(
        deltas_for(base), 10, spec or CodecSpec(values="fp32", compression="none"), CONTEXT
    ).blob


def rebuild(blob: bytes, edit) -> bytes:
    """Change the header of a blob, keeping the body."""
    _, _, length = struct.unpack_from("<4sHI", blob)
    header = json.loads(blob[10 : 10 + length])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<4sHI", b"APUP", 1, len(raw)) + raw + blob[10 + length :]


def refused(blob: bytes, frozen: bool = True, limit: int = LIMIT) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_update(blob, adapter(frozen), limit)
    return str(caught.value)


@pytest.mark.parametrize("cut", [0, 3, 9, 11, 200, -1])
def test_truncated_blob(cut: int) -> None:
    blob = good_blob()
    message = refused(blob[:cut])
    assert any(word in message for word in ("truncated", "out of bounds", "inflates", "not JSON"))


def test_oversized_blob() -> None:
    blob = good_blob()
    assert (
        refused(blob, limit=len(blob) - 1)
        == f"update is {len(blob)} bytes, over the limit of {len(blob) - 1}"
    )


def test_wrong_magic_and_version() -> None:
    blob = good_blob()
    assert refused(b"XXXX" + blob[4:]) == "not an update (magic b'XXXX')"
    assert (
        refused(blob[:4] + struct.pack("<H", 9) + blob[6:])
        == "update format version 9 is not supported (this reads 1, 2)"
    )


def test_header_that_is_not_json() -> None:
    raw = b"{not json"
    assert refused(struct.pack("<4sHI", b"APUP", 1, len(raw)) + raw).startswith(
        "header is not JSON"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda h: h.update(sample_count=0), "invalid header: sample_count"),
        (lambda h: h.update(sample_count="10"), "invalid header: sample_count"),
        (lambda h: h.update(extra=1), "invalid header: extra"),
        (
            lambda h: h["tensors"][0].update(shape=[48, 5]),
            "shape (48, 5) != global adapter (48, 4)",
        ),
        (
            lambda h: h.update(body_bytes=h["body_bytes"] - h["tensors"].pop()["nbytes"]),
            "tensors do not match the global adapter; missing",
        ),
        (
            lambda h: h["tensors"].append(
                dict(h["tensors"][0], name="blk.7.attn_q.weight.lora_b", nbytes=0)
            ),
            "unexpected",
        ),
        (lambda h: h.update(frozen_a=False), "update has frozen_a=False"),
        (lambda h: h["tensors"][0].update(count=10), "10 values for a (48, 4) tensor"),
        (lambda h: h.update(body_bytes=h["body_bytes"] + 1), "do not add up"),
        (lambda h: h["codec"].update(values="int2"), "invalid header: codec.values"),
        (lambda h: h["codec"].update(values="int4"), "format 1 does not fit the codec"),
        (lambda h: h["codec"].update(lowrank_rank=2), "format 1 does not fit the codec"),
        (lambda h: h.update(base_sha256="x"), "invalid header: base_sha256"),
    ],
)
def test_header_problems(edit, expected: str) -> None:
    assert expected in refused(rebuild(good_blob(), edit))


def test_body_tampering_is_detected() -> None:
    blob = bytearray(good_blob())
    blob[-5] ^= 0xFF
    assert refused(bytes(blob)) == "body sha256 does not match the header"


def test_corrupt_compressed_body() -> None:
    blob = bytearray(good_blob(CodecSpec(values="fp32", compression="zlib")))
    blob[-20] ^= 0xFF
    assert "zlib body is corrupt" in refused(bytes(blob)) or "sha256" in refused(bytes(blob))


def test_decompression_bomb_is_stopped_at_the_declared_size() -> None:
    blob = good_blob(CodecSpec(values="fp32", compression="zlib"))
    _, _, length = struct.unpack_from("<4sHI", blob)
    bomb = blob[: 10 + length] + zlib.compress(b"\0" * 50_000_000)
    assert "inflates to more than" in refused(bomb)


def with_body(blob: bytes, body: bytes) -> bytes:
    """Replace an uncompressed body, fixing its hash so only the values are wrong."""
    import hashlib

    _, _, length = struct.unpack_from("<4sHI", blob)
    header = json.loads(blob[10 : 10 + length])
    header["body_sha256"] = hashlib.sha256(body).hexdigest()
    raw = json.dumps(header).encode()
    return struct.pack("<4sHI", b"APUP", 1, len(raw)) + raw + body


def body_of(blob: bytes) -> bytearray:
    _, _, length = struct.unpack_from("<4sHI", blob)
    return bytearray(blob[10 + length :])


def test_nan_values_are_refused() -> None:
    blob = good_blob(CodecSpec(values="fp32", compression="none"))
    body = body_of(blob)
    body[0:4] = struct.pack("<f", float("nan"))
    assert (
        refused(with_body(blob, bytes(body)))
        == "blk.0.attn_q.weight.lora_b: values are NaN or infinite"
    )


def test_nan_int8_scale_is_refused() -> None:
    blob = good_blob(CodecSpec(values="int8", compression="none"))
    body = body_of(blob)
    body[0:4] = struct.pack("<f", float("inf"))
    assert "int8 scales are negative, NaN or infinite" in refused(with_body(blob, bytes(body)))


def test_the_encoder_refuses_to_send_nan_or_fp16_overflow() -> None:
    base = adapter(True)
    deltas = deltas_for(base)
    deltas[next(iter(deltas))].b[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_update(deltas, 1, CodecSpec(), CONTEXT)
    deltas = deltas_for(base, scale=1e6)
    with pytest.raises(ValueError, match="fp16 range"):
        encode_update(deltas, 1, CodecSpec(values="fp16"), CONTEXT)


def test_unsorted_sparse_indices_are_refused() -> None:
    blob = good_blob(CodecSpec(values="fp32", compression="none", top_k_fraction=0.5))
    body = body_of(blob)
    body[0:8] = struct.pack("<II", 5, 2)
    assert "sparse indices are out of range or not increasing" in refused(
        with_body(blob, bytes(body))
    )


def test_sparse_index_past_the_end_is_refused() -> None:
    blob = good_blob(CodecSpec(values="fp32", compression="none", top_k_fraction=0.5))
    body = body_of(blob)
    count = 96
    body[4 * (count - 1) : 4 * count] = struct.pack("<I", 48 * 4)
    assert "sparse indices are out of range" in refused(with_body(blob, bytes(body)))
