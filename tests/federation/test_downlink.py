"""The global delta: the aggregator's defined global is exactly what a receiver rebuilds, the
bytes are a small share of the whole file, and a bad delta is refused with its reason."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from appliance.config.lora import LoraSpec
from appliance.federation.downlink import (
    DeltaError,
    GlobalStep,
    apply_delta,
    can_step,
    encode_delta,
    factors_digest,
    quantized_step,
)
from appliance.federation.global_adapter import initial_global_adapter, save_global_adapter
from appliance.federation.updates import Factors, GlobalAdapter
from appliance.llm.gguf_file import file_sha256

SHAPES: dict[str, tuple[int, ...]] = {
    f"blk.{i}.attn_{t}.weight": (576, 576 if t == "q" else 192) for i in range(2) for t in "qv"
}
LORA = LoraSpec(rank=8, alpha=16.0, targets=["attn_q", "attn_v"])
MODEL_SHA = "ab" * 32
BLOCK = 64


def trained(base: GlobalAdapter, seed: int, scale: float = 0.01) -> Factors:
    """What an aggregation could give: base A, B moved by random steps."""
    rng = np.random.default_rng(seed)
    return {
        name: (a, (b + rng.normal(0, scale, b.shape)).astype(np.float32))
        for name, (a, b) in base.factors.items()
    }


def v0() -> GlobalAdapter:
    return initial_global_adapter(SHAPES, LORA)


def delta_blob(step: GlobalStep, version: int, to_sha256: str = "cd" * 32) -> bytes:
    return encode_delta(
        step,
        model_sha256=MODEL_SHA,
        round_id="r1-test",
        to_version=version,
        to_sha256=to_sha256,
        lora=LORA,
        block=BLOCK,
    )


def defined(base: GlobalAdapter, version: int, seed: int) -> tuple[GlobalStep, GlobalAdapter]:
    """The step and the new global as the aggregator defines it: base + the quantized step."""
    step = quantized_step(base, trained(base, seed), BLOCK)
    return step, GlobalAdapter(version, step.rebuilt, base.alpha, base.frozen_a)


def test_the_rebuilt_global_is_the_defined_one_bit_for_bit_and_writes_the_same_file(
    tmp_path: Path,
) -> None:
    step, new = defined(v0(), 1, seed=1)
    rebuilt = apply_delta(delta_blob(step, 1), v0(), 1 << 20)
    assert rebuilt.version == 1
    for name, (a, b) in new.factors.items():
        assert np.array_equal(rebuilt.factors[name][0], a)
        assert np.array_equal(rebuilt.factors[name][1], b)
    one = save_global_adapter(tmp_path / "one.gguf", new, "llama", MODEL_SHA, "r1-test")
    two = save_global_adapter(tmp_path / "two.gguf", rebuilt, "llama", MODEL_SHA, "r1-test")
    assert file_sha256(one) == file_sha256(two)


def test_the_defined_global_is_close_to_the_aggregated_one() -> None:
    base = v0()
    target = trained(base, seed=2)
    rebuilt = quantized_step(base, target, BLOCK).rebuilt
    for name in target:
        error = np.abs(rebuilt[name][1] - target[name][1]).max()
        peak = np.abs(target[name][1] - base.factors[name][1]).max()
        assert 0 < error <= peak / 127  # int8: at most half a step of the largest block


def test_a_delta_carries_only_b_at_about_a_byte_a_value() -> None:
    """No A (frozen, rebuilt from the seed) and one int8 code per value of B plus a scale per
    block; how much smaller than the whole file that is depends on the model's shapes (the
    benchmark measures it on the built-in model)."""
    _step, base = defined(v0(), 1, seed=3)
    step, new = defined(base, 2, seed=4)
    blob = delta_blob(step, 2)
    header, _body = split(blob)
    b_values = sum(b.size for _a, b in new.factors.values())
    header_bytes = len(json.dumps(header))
    assert len(blob) <= b_values * (1 + 4 / BLOCK) + header_bytes + 64
    assert len(blob) * 3 < b_values * 4


def test_a_delta_to_another_base_is_refused_before_decoding() -> None:
    _step, base = defined(v0(), 1, seed=6)
    blob = delta_blob(defined(base, 2, seed=7)[0], 2)
    other = defined(v0(), 1, seed=8)[1]  # also "v1", other content
    assert factors_digest(other) != factors_digest(base)
    with pytest.raises(DeltaError, match="differs"):
        apply_delta(blob, other, 1 << 20)
    with pytest.raises(DeltaError, match="differs"):
        apply_delta(blob, v0(), 1 << 20)  # another version


def split(blob: bytes) -> tuple[dict[str, object], bytes]:
    _magic, _version, length = struct.unpack_from("<4sHI", blob)
    return json.loads(blob[10 : 10 + length]), blob[10 + length :]


def join(header: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<4sHI", b"APGD", 1, len(raw)) + raw + body


def bad_blobs() -> dict[str, tuple[bytes, str]]:
    blob = delta_blob(defined(v0(), 1, seed=9)[0], 1)
    header, body = split(blob)
    tensors = header["tensors"]
    assert isinstance(tensors, list)
    raw = zstandard.ZstdDecompressor().decompress(body)
    nan_scales = struct.pack("<f", float("nan")) + raw[4:]
    nan_header = {**header, "body_sha256": hashlib.sha256(nan_scales).hexdigest()}
    return {
        "truncated prefix": (blob[:6], "truncated"),
        "bad magic": (b"XXXX" + blob[4:], "magic"),
        "newer format": (blob[:4] + struct.pack("<H", 2) + blob[6:], "format 2"),
        "header cut short": (blob[:40], "out of bounds"),
        "header not json": (join({}, b"")[:6] + struct.pack("<I", 5) + b"{oops", "invalid"),
        "wrong type": (join({**header, "to_version": "2"}, body), "to_version"),
        "unknown field": (join({**header, "extra": 1}, body), "extra"),
        "body truncated": (blob[:-7], "zstd|inflates|corrupt"),
        "body flipped": (blob[:-3] + bytes([blob[-3] ^ 0xFF]) + blob[-2:], "zstd|sha256|corrupt"),
        "sizes disagree": (
            join({**header, "tensors": [{**tensors[0], "nbytes": 3}, *tensors[1:]]}, body),
            "do not hold",
        ),
        "tensor missing": (join({**header, "tensors": tensors[1:]}, body), "do not match"),
        "NaN scale": (join(nan_header, zstandard.ZstdCompressor().compress(nan_scales)), "NaN"),
        "oversized": (blob + b"\0" * (1 << 20), "over the limit"),
    }


@pytest.mark.parametrize("case", sorted(bad_blobs()))
def test_a_bad_delta_is_refused_with_its_reason(case: str) -> None:
    blob, reason = bad_blobs()[case]
    with pytest.raises(DeltaError, match=reason):
        apply_delta(blob, v0(), 1 << 20)


def test_only_a_frozen_unchanged_a_and_the_same_tensors_make_a_step() -> None:
    base = v0()
    assert can_step(base, trained(base, seed=5))
    moved_a = {n: (a + 1.0, b) for n, (a, b) in base.factors.items()}
    assert not can_step(base, moved_a)  # exact-product with trained A: whole files
    fewer = dict(list(trained(base, seed=5).items())[1:])
    assert not can_step(base, fewer)
    unfrozen = GlobalAdapter(0, base.factors, base.alpha, frozen_a=False)
    assert not can_step(unfrozen, trained(base, seed=5))
