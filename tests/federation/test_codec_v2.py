"""Update format 2: int4, low-rank, shared-basis subspace and residual top-k codecs.

Round trips (what the box credits itself with is what the aggregator decodes, bit for bit),
error feedback with each codec, the compressed header, and every refusal."""

import hashlib
import json
import struct

import numpy as np
import pytest
import zstandard
from pydantic import ValidationError

from appliance.federation.codec import (
    CodecSpec,
    DecodeError,
    ErrorFeedback,
    RoundContext,
    decode_update,
    encode_update,
)
from appliance.federation.codec.quantize import int4_decode, int4_encode, pack_int4, unpack_int4
from appliance.federation.codec.subspace import round_seed, seeded_basis
from appliance.federation.messages import RoundAnnouncement
from appliance.federation.protocol import LocalUpdate, PlainBox, PlainRounds
from appliance.federation.rounds import Round, RoundState
from appliance.federation.strategies import FedAvgFrozenA
from appliance.federation.updates import Delta, GlobalAdapter
from tests.federation.plans import training_plan

CONTEXT = RoundContext("box-1", "r7", "cd" * 32, 2)
LIMIT = 1 << 26
ROWS = (96, 40)  # an attn_q-like and an attn_v-like B


def adapter(rank: int = 8, zero_b: bool = False, seed: int = 0) -> GlobalAdapter:
    rng = np.random.default_rng(seed)
    factors = {
        f"blk.{i}.attn_{'qv'[i % 2]}.weight": (
            rng.normal(size=(rank, 64)).astype(np.float32),
            np.zeros((rows, rank), np.float32)
            if zero_b
            else rng.normal(size=(rows, rank)).astype(np.float32) * 0.05,
        )
        for i, rows in enumerate(ROWS)
    }
    return GlobalAdapter(version=CONTEXT.global_version, factors=factors, alpha=16.0, frozen_a=True)


def deltas_for(base: GlobalAdapter, seed: int = 1, rank: int | None = None) -> dict[str, Delta]:
    """Random B deltas, of exactly `rank` where given (else full rank)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (_, b) in base.factors.items():
        if rank is None:
            delta = rng.normal(size=b.shape) * 0.01
        else:
            delta = rng.normal(size=(b.shape[0], rank)) @ rng.normal(size=(rank, b.shape[1]))
            delta *= 0.001
        out[name] = Delta(None, delta.astype(np.float32))
    return out


def relative_error(got: dict[str, Delta], want: dict[str, Delta]) -> float:
    num = sum(float(((got[n].b - d.b) ** 2).sum()) for n, d in want.items())
    return (num / sum(float((d.b**2).sum()) for d in want.values())) ** 0.5


SPECS = [
    CodecSpec(values="int4"),
    CodecSpec(values="int4", compression="none", block=256),
    CodecSpec(values="int4", lowrank_rank=1, block=256),
    CodecSpec(values="int8", lowrank_rank=3),
    CodecSpec(values="fp16", lowrank_rank=2, compression="zlib"),
    CodecSpec(values="int4", subspace_dim=12),
    CodecSpec(values="fp32", subspace_dim=8, subspace_basis="global"),
    CodecSpec(values="int8", subspace_dim=20, subspace_basis="global"),
    CodecSpec(values="int4", residual_top_k_fraction=0.05),
    CodecSpec(values="int4", lowrank_rank=1, residual_top_k_fraction=0.02, block=128),
    CodecSpec(values="fp32", residual_top_k_fraction=1.0, compression="none"),
]


def encode(deltas, spec, base, context=CONTEXT):
    return encode_update(deltas, 10, spec, context, base=base)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: str(s.model_dump(exclude_defaults=True)))
@pytest.mark.parametrize("zero_b", [False, True])
def test_credited_is_what_the_aggregator_decodes_bit_for_bit(spec: CodecSpec, zero_b) -> None:
    base = adapter(zero_b=zero_b)
    deltas = deltas_for(base)
    encoded = encode(deltas, spec, base)
    header, update = decode_update(encoded.blob, base, LIMIT)
    assert header.format == 2 and header.codec == spec
    for name in deltas:
        assert update.deltas[name].a is None
        assert update.deltas[name].b.dtype == np.float32
        assert update.deltas[name].b.tobytes() == encoded.sent[name].b.tobytes()
    assert relative_error(update.deltas, deltas) < 1.0


def test_int4_is_within_half_a_block_scale() -> None:
    base = adapter()
    deltas = deltas_for(base)
    encoded = encode(deltas, CodecSpec(values="int4", block=32), base)
    for name, delta in deltas.items():
        flat = delta.b.ravel()
        peaks = np.abs(np.pad(flat, (0, -flat.size % 32)).reshape(-1, 32)).max(axis=1)
        bound = np.repeat(peaks / 7 / 2, 32)[: flat.size] * (1 + 1e-6) + 1e-9
        assert (np.abs(encoded.sent[name].b.ravel() - flat) <= bound).all()
    assert 0.02 < relative_error(encoded.sent, deltas) < 0.2  # int4 is lossy, not broken


def test_low_rank_recovers_a_low_rank_delta() -> None:
    base = adapter()
    deltas = deltas_for(base, rank=2)
    exact = encode(deltas, CodecSpec(values="fp32", lowrank_rank=2, compression="none"), base)
    assert relative_error(exact.sent, deltas) < 1e-5
    coded = encode(deltas, CodecSpec(values="int4", lowrank_rank=2), base)
    assert relative_error(coded.sent, deltas) < 0.25
    short = encode(deltas, CodecSpec(values="fp32", lowrank_rank=1), base)
    assert relative_error(short.sent, deltas) > 0.1  # one direction cannot hold two


def test_global_basis_recovers_a_change_inside_the_global_span() -> None:
    base = adapter()
    rng = np.random.default_rng(5)
    deltas = {
        name: Delta(None, (b @ rng.normal(size=(8, 8)) * 0.1).astype(np.float32))
        for name, (_, b) in base.factors.items()
    }
    spec = CodecSpec(values="fp32", subspace_dim=8, subspace_basis="global", compression="none")
    encoded = encode(deltas, spec, base)
    assert relative_error(encoded.sent, deltas) < 1e-4
    seeded = encode(deltas, CodecSpec(values="fp32", subspace_dim=8), base)
    assert relative_error(seeded.sent, deltas) > 0.5  # a random basis misses it


def test_residual_top_k_sends_the_largest_errors() -> None:
    base = adapter()
    deltas = deltas_for(base)
    plain = encode(deltas, CodecSpec(values="int4", lowrank_rank=1), base)
    topped = encode(
        deltas, CodecSpec(values="int4", lowrank_rank=1, residual_top_k_fraction=0.1), base
    )
    assert relative_error(topped.sent, deltas) < relative_error(plain.sent, deltas)
    assert len(topped.blob) > len(plain.blob)
    everything = encode(deltas, CodecSpec(values="int4", residual_top_k_fraction=1.0), base)
    assert relative_error(everything.sent, deltas) < 1e-3  # fp16 of every error


def test_a_new_round_draws_a_new_basis() -> None:
    first = seeded_basis(round_seed("r1", 0), "blk.0.attn_q.weight.lora_b", 50, 4)
    again = seeded_basis(round_seed("r1", 0), "blk.0.attn_q.weight.lora_b", 50, 4)
    other = seeded_basis(round_seed("r2", 0), "blk.0.attn_q.weight.lora_b", 50, 4)
    tensor = seeded_basis(round_seed("r1", 0), "blk.1.attn_q.weight.lora_b", 50, 4)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes() and first.tobytes() != tensor.tobytes()
    np.testing.assert_allclose(np.linalg.norm(first, axis=0), 1.0, rtol=1e-6)


@pytest.mark.parametrize("spec", SPECS[2:], ids=lambda s: str(s.model_dump(exclude_defaults=True)))
def test_error_feedback_sent_plus_residual_equals_the_true_sum(spec: CodecSpec) -> None:
    base = adapter()
    feedback = ErrorFeedback()
    true_sum = {n: np.zeros(b.shape) for n, (_, b) in base.factors.items()}
    sent_sum = {n: np.zeros(b.shape) for n, (_, b) in base.factors.items()}
    errors = []
    for r in range(6):
        deltas = deltas_for(base, seed=100 + r)
        corrected = feedback.corrected(deltas)
        context = RoundContext("box-1", f"r{r}", CONTEXT.base_sha256, CONTEXT.global_version)
        encoded = encode(corrected, spec, base, context)
        _, update = decode_update(encoded.blob, base, LIMIT)
        feedback.remember(corrected, update.deltas)
        for name, delta in deltas.items():
            true_sum[name] += delta.b
            sent_sum[name] += update.deltas[name].b
        errors.append(
            relative_error(
                {n: Delta(None, s) for n, s in sent_sum.items()},
                {n: Delta(None, t) for n, t in true_sum.items()},
            )
        )
    for name, total in true_sum.items():
        np.testing.assert_allclose(sent_sum[name] + feedback.residual[name].b, total, atol=1e-6)


def test_int4_packing() -> None:
    codes = np.array([-7, 7, 0, -1, 3], dtype=np.int8)
    packed = pack_int4(codes)
    assert len(packed) == 3 and packed[-1] >> 4 == 0
    np.testing.assert_array_equal(unpack_int4(packed, 5), codes)
    with pytest.raises(ValueError, match="do not hold 5 int4 codes"):
        unpack_int4(packed + b"\0", 5)
    with pytest.raises(ValueError, match="padding nibble"):
        unpack_int4(packed[:-1] + bytes([packed[-1] | 0x10]), 5)
    with pytest.raises(ValueError, match="-8"):
        unpack_int4(bytes([0x08]) + packed[1:], 5)
    packed, scales = int4_encode(np.zeros(3, np.float32), 8)
    np.testing.assert_array_equal(int4_decode(packed, 3, scales, 8), np.zeros(3))


# -- v1 stays v1 ----------------------------------------------------------------------------


def test_format_1_codecs_still_write_format_1_without_the_new_fields() -> None:
    base = adapter()
    blob = encode(deltas_for(base), CodecSpec(top_k_fraction=0.1), base).blob
    magic, version, length = struct.unpack_from("<4sHI", blob)
    assert (magic, version) == (b"APUP", 1)
    header = json.loads(blob[10 : 10 + length])
    assert set(header["codec"]) == {"values", "block", "top_k_fraction", "compression"}
    assert "basis_seed" not in header and "privacy" not in header
    decode_update(blob, base, LIMIT)


def test_format_2_header_is_small() -> None:
    base = adapter()
    blob = encode(deltas_for(base), CodecSpec(values="int4", lowrank_rank=1), base).blob
    _, _, length = struct.unpack_from("<4sHI", blob)
    assert length < len(read_header(blob)) / 1.5


# -- refusals -------------------------------------------------------------------------------


def good(spec: CodecSpec | None = None, base: GlobalAdapter | None = None) -> bytes:
    base = base or adapter()
    spec = spec or CodecSpec(values="int4", lowrank_rank=2, compression="none")
    return encode(deltas_for(base), spec, base).blob


def read_header(blob: bytes) -> bytes:
    _, _, length = struct.unpack_from("<4sHI", blob)
    return zstandard.ZstdDecompressor().decompress(blob[10 : 10 + length])


def with_header(blob: bytes, header: dict, body: bytes | None = None) -> bytes:
    _, _, length = struct.unpack_from("<4sHI", blob)
    body = blob[10 + length :] if body is None else body
    if body is not None and "body_sha256" in header:
        header["body_sha256"] = hashlib.sha256(body).hexdigest()
    raw = zstandard.ZstdCompressor().compress(json.dumps(header).encode())
    return struct.pack("<4sHI", b"APUP", 2, len(raw)) + raw + body


def edited(blob: bytes, edit) -> bytes:
    header = json.loads(read_header(blob))
    edit(header)
    return with_header(blob, header)


def refused(blob: bytes, base: GlobalAdapter | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_update(blob, base or adapter(), LIMIT)
    return str(caught.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda h: h["codec"].update(lowrank_rank=8), "lowrank_rank 8 is not below the smaller"),
        (lambda h: h["codec"].update(lowrank_rank=9), "lowrank_rank 9 is not below the smaller"),
        (lambda h: h["codec"].update(lowrank_rank=0), "invalid header: codec.lowrank_rank"),
        (lambda h: h["codec"].update(lowrank_rank=3), "values in"),
        (lambda h: h["codec"].update(block=128), "the codec gives"),
        (lambda h: h["tensors"][0].update(count=7), "7 values in"),
        (lambda h: h["tensors"][0].update(nbytes=h["tensors"][0]["nbytes"] + 1), "add up"),
        (
            lambda h: (
                h["tensors"][0].update(nbytes=h["tensors"][0]["nbytes"] + 1),
                h["tensors"][1].update(nbytes=h["tensors"][1]["nbytes"] - 1),
            ),
            "the codec gives",
        ),
        (lambda h: h["tensors"][0].update(shape=[96, 9]), "shape (96, 9) != global adapter"),
        (
            lambda h: (h["codec"].pop("lowrank_rank"), h["codec"].update(values="int8")),
            "format 2 does not fit the codec (it is written as format 1)",
        ),
        (lambda h: h["codec"].update(top_k_fraction=0.5), "exclude each other"),
        (lambda h: h.update(basis_seed="00" * 8), "basis_seed goes with subspace_dim"),
        (lambda h: h.update(format=1), "format 1 does not fit the codec"),
        (
            lambda h: (h.update(format=1), h.update(codec={"values": "int8"})),
            "header says format 1, the prefix 2",
        ),
    ],
)
def test_header_problems(edit, expected: str) -> None:
    assert expected in refused(edited(good(), edit))


def test_subspace_header_problems() -> None:
    blob = good(CodecSpec(values="int4", subspace_dim=4, compression="none"))
    assert "does not follow from round 'r7'" in refused(
        edited(blob, lambda h: h.update(basis_seed="0" * 16))
    )
    assert "invalid header: basis_seed" in refused(
        edited(blob, lambda h: h.update(basis_seed="xyz"))
    )
    assert "basis_seed goes with" in refused(edited(blob, lambda h: h.pop("basis_seed")))
    assert "subspace_dim 96 is not below its 96 rows" in refused(
        edited(blob, lambda h: h["codec"].update(subspace_dim=96))
    )
    other_round = edited(blob, lambda h: h.update(round_id="r8"))
    assert "does not follow from round 'r8'" in refused(other_round)


@pytest.mark.parametrize("cut", [10, 12, 30, -1, -7])
def test_truncated_blob(cut: int) -> None:
    message = refused(good()[:cut])
    assert any(w in message for w in ("out of bounds", "inflates", "corrupt", "not JSON", "sha256"))


def test_header_bomb_is_stopped() -> None:
    bomb = zstandard.ZstdCompressor().compress(b" " * (2 << 20) + b"{}")
    blob = struct.pack("<4sHI", b"APUP", 2, len(bomb)) + bomb
    assert refused(blob) == "compressed header: inflates to more than 1048576 bytes"


def test_corrupt_compressed_header() -> None:
    blob = bytearray(good())
    blob[12:16] = b"\xff\xff\xff\xff"
    assert "compressed header" in refused(bytes(blob)) or "not JSON" in refused(bytes(blob))


def test_body_bomb_is_stopped_at_the_declared_size() -> None:
    blob = good(CodecSpec(values="int4", lowrank_rank=2, compression="zstd"))
    _, _, length = struct.unpack_from("<4sHI", blob)
    bomb = blob[: 10 + length] + zstandard.ZstdCompressor().compress(b"\0" * 20_000_000)
    assert "inflates to more than" in refused(bomb)


def body(blob: bytes) -> bytearray:
    _, _, length = struct.unpack_from("<4sHI", blob)
    return bytearray(blob[10 + length :])


def rebodied(blob: bytes, new_body: bytes) -> bytes:
    return with_header(blob, json.loads(read_header(blob)), bytes(new_body))


def test_nan_and_negative_int4_scales_are_refused() -> None:
    blob = good()
    data = body(blob)
    data[0:4] = struct.pack("<f", float("nan"))
    assert "int4 scales are negative, NaN or infinite" in refused(rebodied(blob, data))
    data[0:4] = struct.pack("<f", -1.0)
    assert "int4 scales are negative" in refused(rebodied(blob, data))


def test_int4_code_minus_8_and_odd_padding_are_refused() -> None:
    base = GlobalAdapter(
        3,
        {"blk.0.attn_q.weight": (np.ones((3, 8), np.float32), np.zeros((5, 3), np.float32))},
        16.0,
        True,
    )
    deltas = {"blk.0.attn_q.weight": Delta(None, np.arange(15, dtype=np.float32).reshape(5, 3))}
    spec = CodecSpec(values="int4", block=16, compression="none")
    blob = encode(deltas, spec, base, RoundContext("box-1", "r7", "cd" * 32, 3))
    decode_update(blob.blob, base, LIMIT)
    data = body(blob.blob)
    assert len(data) == 4 + 8  # one scale, 15 codes in 8 bytes
    minus_eight = data.copy()
    minus_eight[4] = (minus_eight[4] & 0xF0) | 0x8
    assert "code -8" in refused(rebodied(blob.blob, minus_eight), base)
    padded = data.copy()
    padded[-1] |= 0x70
    assert "padding nibble is not zero" in refused(rebodied(blob.blob, padded), base)


def test_bad_residual_indices_and_values_are_refused() -> None:
    spec = CodecSpec(
        values="fp32", lowrank_rank=1, residual_top_k_fraction=0.05, compression="none"
    )
    base = adapter()
    blob = good(spec, base)
    data = body(blob)
    rows, rank = ROWS[0], 8
    start = 4 * (rows * 1 + 1 * rank)  # P and Q in fp32
    kept = int(np.ceil(0.05 * rows * rank))
    index = np.frombuffer(bytes(data[start : start + 2 * kept]), dtype="<u2").copy()
    swapped = data.copy()
    swapped[start : start + 4] = index[[1, 0]].astype("<u2").tobytes()
    assert "residual indices are out of range or not increasing" in refused(rebodied(blob, swapped))
    past = data.copy()
    past[start + 2 * (kept - 1) : start + 2 * kept] = struct.pack("<H", rows * rank)
    assert "out of range" in refused(rebodied(blob, past))
    nan = data.copy()
    nan[start + 2 * kept : start + 2 * kept + 2] = np.array([np.nan], "<f2").tobytes()
    assert "residual values are NaN or infinite" in refused(rebodied(blob, nan))


def test_nan_low_rank_values_are_refused() -> None:
    spec = CodecSpec(values="fp32", lowrank_rank=1, compression="none")
    blob = good(spec)
    data = body(blob)
    data[0:4] = struct.pack("<f", float("inf"))
    assert "values are NaN or infinite" in refused(rebodied(blob, data))


# -- what the box refuses to encode -----------------------------------------------------------


def test_the_encoder_refuses_what_cannot_work() -> None:
    base = adapter()
    deltas = deltas_for(base)
    with pytest.raises(ValueError, match="lowrank_rank 8 is not below the smaller side"):
        encode(deltas, CodecSpec(lowrank_rank=8), base)
    with pytest.raises(ValueError, match="subspace_dim 40 is not below its 40 rows"):
        encode(deltas, CodecSpec(subspace_dim=40), base)
    with pytest.raises(ValueError, match="needs the round's global adapter"):
        encode_update(deltas, 1, CodecSpec(subspace_dim=4, subspace_basis="global"), CONTEXT)
    bad = dict(deltas)
    name = next(iter(bad))
    bad[name] = Delta(None, np.full_like(bad[name].b, np.nan))
    with pytest.raises(ValueError, match="NaN"):
        encode(bad, CodecSpec(values="int4", lowrank_rank=1), base)
    big = {n: Delta(None, d.b * 1e7) for n, d in deltas.items()}
    with pytest.raises(ValueError, match="fp16 range"):
        encode(big, CodecSpec(values="fp32", lowrank_rank=1, residual_top_k_fraction=0.5), base)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lowrank_rank": 2, "subspace_dim": 4}, "exclude each other"),
        ({"lowrank_rank": 2, "top_k_fraction": 0.1}, "exclude each other"),
        ({"top_k_fraction": 0.1, "residual_top_k_fraction": 0.1}, "does not combine"),
        ({"subspace_basis": "global"}, "needs subspace_dim"),
        ({"lowrank_rank": 0}, "greater than or equal to 1"),
        ({"residual_top_k_fraction": 0.0}, "greater than 0"),
        ({"subspace_basis": "learned"}, "subspace_basis"),
        ({"values": "int3"}, "values"),
    ],
)
def test_codec_spec_validation(fields: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        CodecSpec(**fields)


def test_a_plain_box_encodes_on_the_round_s_global_basis_and_the_aggregator_admits_it() -> None:
    """PlainBox hands the round's base to the codec (the global-B core needs it), and
    PlainRounds decodes the update against the same base."""
    base = adapter()
    rng = np.random.default_rng(5)
    deltas = {
        name: Delta(None, (b @ rng.normal(size=(8, 8)) * 0.1).astype(np.float32))
        for name, (_, b) in base.factors.items()
    }
    spec = CodecSpec(values="fp32", subspace_dim=8, subspace_basis="global")
    plan = training_plan(rank=8).model_copy(update={"codec": spec})
    announcement = RoundAnnouncement(
        round_id=CONTEXT.round_id,
        base_sha256=CONTEXT.base_sha256,
        global_version=base.version,
        plan=plan,
        participants=("box-1",),
        min_updates=1,
        deadline=1e10,
    )
    prepared = PlainBox("box-1").prepare(announcement, LocalUpdate(deltas, 7, base))
    assert prepared.blob is not None
    assert relative_error(prepared.credited, deltas) < 1e-4
    round_ = Round(
        CONTEXT.round_id,
        1,
        base.version,
        plan,
        ("box-1",),
        1,
        1,
        60.0,
        0.0,
        1e10,
        False,
        RoundState.OPEN,
        None,
    )
    aggregator = PlainRounds(FedAvgFrozenA, CONTEXT.base_sha256, LIMIT)
    assert aggregator.admit(prepared.blob, "box-1", round_, base) == 7
