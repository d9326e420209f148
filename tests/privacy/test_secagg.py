"""Secure aggregation in memory: exact sums, dropout recovery, uniform-looking masked updates,
refusals with reasons. Messages go through their real JSON schemas (serialised and parsed
again) between the participants and the collector; the broker round trip is in
test_secagg_protocol.py."""

import math
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from appliance.federation.strategies import FedAvgFrozenA
from appliance.federation.updates import ClientUpdate, Delta
from appliance.privacy.secagg import (
    Collector,
    FixedPoint,
    KeySet,
    MaskedHeader,
    MaskKey,
    Participant,
    ReportingSet,
    SecAggError,
    SeedReveal,
    max_participants,
    pack_masked,
    secure_fedavg,
    unpack_masked,
)
from appliance.privacy.secagg.encoding import layout_size
from appliance.privacy.secagg.messages import PeerSeed, b64
from tests.privacy.secagg_support import AGG, FIXED, ROUND, World, deltas, mask_key, world

M = TypeVar("M", bound=BaseModel)


def wire(message: M) -> M:
    """Serialise and parse again, as the transport does."""
    return type(message).model_validate_json(message.model_dump_json())


class Round:
    """One round between `Participant`s and a `Collector`, every message through JSON."""

    def __init__(self, w: World, seed: int = 11, min_reporting: int = 2) -> None:
        rng = np.random.default_rng(seed)
        self.w = w
        self.collector = Collector(
            ROUND,
            tuple(b.node_id for b in w.boxes),
            w.layout,
            FIXED,
            w.trust,
            min_reporting=min_reporting,
        )
        self.boxes = {
            b.node_id: Participant(b, w.trust, AGG, ROUND, min_reporting, mask_key(rng))
            for b in w.boxes
        }
        self.encoded = {
            name: FIXED.encode(deltas(w.base, rng), w.layout, int(rng.integers(50, 3000)))
            for name in self.boxes
        }
        self.blobs: dict[str, bytes] = {}

    def keys(self) -> KeySet:
        for name, box in self.boxes.items():
            self.collector.add_key(wire(box.key_message()), name)
        keyset = wire(self.collector.close_keys())
        for box in self.boxes.values():
            box.accept_key_set(keyset, AGG)
        return keyset

    def send(self, reporting: list[str]) -> None:
        for name in reporting:
            self.blobs[name] = self.boxes[name].mask(self.encoded[name], self.w.layout)
            self.collector.add_masked(self.blobs[name], name)

    def reveal(self) -> ReportingSet:
        commit = wire(self.collector.commit())
        for name in commit.reporting:
            if commit.dropped:
                self.collector.add_reveal(wire(self.boxes[name].reveal(commit, AGG)), name)
        return commit

    def run(self, dropped: tuple[str, ...] = ()):
        self.keys()
        self.send([n for n in self.boxes if n not in dropped])
        self.reveal()
        return self.collector.unmask()

    def plain_sum(self, names) -> np.ndarray:
        return sum(self.encoded[n].values.view(np.int32).astype(np.int64) for n in names)


def test_unmasked_sum_equals_the_plain_sum_exactly(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 4))
    result = r.run()
    assert result.dropped == ()
    assert np.array_equal(result.total, r.plain_sum(r.boxes))
    assert result.total_weight == sum(e.weight for e in r.encoded.values())
    # and every masked vector alone is far from its plain integer vector
    for name, blob in r.blobs.items():
        _, masked = unpack_masked(blob, r.w.layout)
        assert np.mean(masked == r.encoded[name].values) < 0.001


def test_secure_fedavg_equals_plain_fedavg_of_the_same_codes(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    result = r.run()
    secure = secure_fedavg(r.w.base, result)
    plain = FedAvgFrozenA()
    plain.begin(r.w.base)
    for name, enc in r.encoded.items():
        values = FIXED.reconstruct(enc, r.w.layout)
        plain.accept(ClientUpdate(name, enc.weight, {k: Delta(None, v) for k, v in values.items()}))
    expected = plain.finish()
    for name, (a, b) in expected.factors.items():
        assert np.array_equal(secure.factors[name][0], a)  # A stays frozen
        np.testing.assert_allclose(secure.factors[name][1], b, rtol=0, atol=1e-7)
    assert secure.report["samples"] == expected.report["samples"]
    assert secure.report["updates"] == 3


@pytest.mark.parametrize("dropped", [("box2",), ("box1", "box4")])
def test_dropouts_are_recovered(tmp_path: Path, dropped: tuple[str, ...]) -> None:
    r = Round(world(tmp_path, 5))
    result = r.run(dropped)
    survivors = [n for n in r.boxes if n not in dropped]
    assert result.dropped == dropped
    assert result.reporting == tuple(survivors)
    assert np.array_equal(result.total, r.plain_sum(survivors))
    assert result.total_weight == sum(r.encoded[n].weight for n in survivors)


def test_a_dropout_without_its_reveals_cannot_be_unmasked(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    r.keys()
    r.send(["box1", "box2"])
    commit = wire(r.collector.commit())
    r.collector.add_reveal(wire(r.boxes["box1"].reveal(commit, AGG)), "box1")
    with pytest.raises(SecAggError) as err:
        r.collector.unmask()
    assert err.value.reason == "wrong_phase" and "box2" in err.value.detail


def test_a_wrong_revealed_seed_is_detected_not_decoded(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    r.keys()
    r.send(["box1", "box2"])
    commit = wire(r.collector.commit())
    r.collector.add_reveal(wire(r.boxes["box1"].reveal(commit, AGG)), "box1")
    forged = SeedReveal(
        round_id=ROUND,
        node_id="box2",
        commit_sha256=commit.sha256,
        seeds=(PeerSeed(peer="box3", seed=b64(bytes(range(32)))),),
    )
    r.collector.add_reveal(forged, "box2")
    with pytest.raises(SecAggError) as err:
        r.collector.unmask()
    assert err.value.reason == "unmask_failed"


def chi_square_p_value(data: bytes) -> float:
    """Chi-square test of byte uniformity (255 degrees of freedom); upper-tail p-value by the
    Wilson-Hilferty normal approximation (accurate to ~1e-3 relative at 255 dof)."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    stat = float(((counts - expected) ** 2 / expected).sum())
    k = 255
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


P_THRESHOLD = 0.01
"""A masked update must not be distinguishable from uniform at the 1% level (fixed seeds, so
the outcome is deterministic; a uniform source passes 99% of seeds)."""


def test_a_single_masked_update_looks_uniform(tmp_path: Path) -> None:
    w = world(tmp_path, 3, seed=2026)
    r = Round(w, seed=2026)
    r.keys()
    r.send(["box1"])
    _, masked = unpack_masked(r.blobs["box1"], w.layout)
    body = masked.astype("<u4").tobytes()
    assert len(body) == 4 * layout_size(w.layout) == 1536
    plain = r.encoded["box1"].values.astype("<u4").tobytes()
    # the test has power: the plain integer update fails it outright
    assert chi_square_p_value(plain) < 1e-12
    assert chi_square_p_value(body) > P_THRESHOLD


def test_a_large_masked_update_looks_uniform(tmp_path: Path) -> None:
    """65,536 coordinates (256 KiB): enough bytes that a biased keystream would show."""
    w = world(tmp_path, 3, seed=99)
    rng = np.random.default_rng(99)
    layout = (("blk.0.attn_q.weight", 1024, 64),)
    participants = [Participant(b, w.trust, AGG, ROUND, 2, mask_key(rng)) for b in w.boxes]
    collector = Collector(ROUND, tuple(b.node_id for b in w.boxes), layout, FIXED, w.trust)
    for p in participants:
        collector.add_key(wire(p.key_message()), p.node_id)
    keyset = wire(collector.close_keys())
    for p in participants:
        p.accept_key_set(keyset, AGG)
    values = rng.normal(scale=0.01, size=(1024, 64)).astype(np.float32)
    encoded = FIXED.encode({"blk.0.attn_q.weight": Delta(None, values)}, layout, 100)
    _, masked = unpack_masked(participants[1].mask(encoded, layout), layout)
    assert chi_square_p_value(encoded.values.tobytes()) < 1e-12
    assert chi_square_p_value(masked.astype("<u4").tobytes()) > P_THRESHOLD


def test_replayed_duplicate_and_late_updates_are_refused(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 4))
    r.keys()
    r.send(["box1", "box2", "box3"])
    with pytest.raises(SecAggError) as err:
        r.collector.add_masked(r.blobs["box1"], "box1")
    assert err.value.reason == "replay"
    other = pack_masked(
        unpack_masked(r.blobs["box1"], r.w.layout)[0],
        np.zeros(layout_size(r.w.layout), np.uint32),
    )
    with pytest.raises(SecAggError) as err:
        r.collector.add_masked(other, "box1")
    assert err.value.reason == "duplicate"
    r.reveal()  # commits box4 as dropped
    late = r.boxes["box4"].mask(r.encoded["box4"], r.w.layout)
    with pytest.raises(SecAggError) as err:
        r.collector.add_masked(late, "box4")
    assert err.value.reason == "late" and "box4" in err.value.detail
    with pytest.raises(SecAggError) as err:
        r.collector.add_masked(r.blobs["box2"], "box2")
    assert err.value.reason == "replay"
    # the refused traffic changed nothing
    assert np.array_equal(r.collector.unmask().total, r.plain_sum(["box1", "box2", "box3"]))


def test_a_late_key_and_a_replayed_reveal_are_refused(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    r.keys()
    with pytest.raises(SecAggError) as err:
        r.collector.add_key(r.boxes["box1"].key_message(), "box1")
    assert err.value.reason == "late"
    r.send(["box1", "box2"])
    commit = wire(r.collector.commit())
    reveal = wire(r.boxes["box1"].reveal(commit, AGG))
    r.collector.add_reveal(reveal, "box1")
    with pytest.raises(SecAggError) as err:
        r.collector.add_reveal(reveal, "box1")
    assert err.value.reason == "replay"


def test_a_box_refuses_to_reveal_a_seed_for_a_reporting_peer(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 4))
    r.keys()
    r.send(["box1", "box2", "box3"])
    commit = wire(r.collector.commit())
    box1 = r.boxes["box1"]
    with pytest.raises(SecAggError) as err:
        box1.seed_for("box2", commit)
    assert err.value.reason == "not_dropped"
    # a second commit that declares reporting box2 dropped, to get its seeds, is refused
    assert [s.peer for s in box1.reveal(commit, AGG).seeds] == ["box4"]
    greedy = ReportingSet(
        round_id=ROUND,
        keyset_sha256=commit.keyset_sha256,
        reporting=("box1", "box3"),
        dropped=("box2", "box4"),
    )
    with pytest.raises(SecAggError) as err:
        box1.reveal(greedy, AGG)
    assert err.value.reason == "conflicting_commit"
    # box3 never saw the first commit, but the same trick on it fails too once it has
    r.boxes["box3"].reveal(commit, AGG)
    with pytest.raises(SecAggError) as err:
        r.boxes["box3"].reveal(greedy, AGG)
    assert err.value.reason == "conflicting_commit"
    # a commit listing a node as both reporting and dropped does not even parse
    with pytest.raises(ValidationError, match="both reporting and dropped"):
        ReportingSet.model_validate_json(
            greedy.model_dump_json().replace(
                '"reporting":["box1","box3"]', '"reporting":["box1","box2"]'
            )
        )


def test_a_box_reveals_nothing_for_a_sum_of_one_or_a_foreign_commit(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    keyset = r.keys()
    r.send(["box1"])
    lonely = ReportingSet(
        round_id=ROUND, keyset_sha256=keyset.sha256, reporting=("box1",), dropped=("box2", "box3")
    )
    box1 = r.boxes["box1"]
    cases = {
        "too_few_reporting": (lonely, AGG),
        "sender_mismatch": (lonely, "box2"),
        "wrong_round": (lonely.model_copy(update={"round_id": "r2-zzz"}), AGG),
        "stale_keyset": (lonely.model_copy(update={"keyset_sha256": "0" * 64}), AGG),
        "wrong_members": (lonely.model_copy(update={"dropped": ("box2",)}), AGG),
    }
    for reason, (commit, signer) in cases.items():
        with pytest.raises(SecAggError) as err:
            box1.reveal(commit, signer)
        assert err.value.reason == reason
    with pytest.raises(SecAggError) as err:
        r.collector.commit()
    assert err.value.reason == "too_few_reporting"
    not_sent = ReportingSet(
        round_id=ROUND, keyset_sha256=keyset.sha256, reporting=("box1", "box2"), dropped=("box3",)
    )
    with pytest.raises(SecAggError) as err:
        r.boxes["box2"].reveal(not_sent, AGG)
    assert err.value.reason == "not_reporting"
    # box3, committed as dropped, will not mask an update any more: it would be readable
    with pytest.raises(SecAggError) as err:
        r.boxes["box3"].reveal(not_sent, AGG)
    assert err.value.reason == "not_reporting"
    with pytest.raises(SecAggError) as err:
        r.boxes["box3"].mask(r.encoded["box3"], r.w.layout)
    assert err.value.reason == "late"


def test_a_box_masks_only_once_per_round(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    r.keys()
    r.send(["box1"])
    with pytest.raises(SecAggError) as err:
        r.boxes["box1"].mask(r.encoded["box1"], r.w.layout)
    assert err.value.reason == "already_masked"


def test_bad_mask_keys_are_refused_with_a_reason(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    box1, box2 = r.boxes["box1"], r.boxes["box2"]
    good = box1.key_message()
    tampered = good.model_copy(update={"public_key": box2.key_message().public_key})
    foreign_round = MaskKey.create(box1.key, "r9-other", b"\x09" * 32)
    cases = {
        "bad_signature": (tampered, "box1"),
        "wrong_round": (foreign_round, "box1"),
        "sender_mismatch": (good, "box2"),
    }
    for reason, (key, signer) in cases.items():
        with pytest.raises(SecAggError) as err:
            r.collector.add_key(key, signer)
        assert err.value.reason == reason
    outsider = MaskKey.create(r.w.agg, ROUND, b"\x09" * 32)
    with pytest.raises(SecAggError) as err:
        r.collector.add_key(outsider, AGG)
    assert err.value.reason == "not_participant"
    r.collector.add_key(good, "box1")
    r.collector.add_key(good, "box1")  # the same message again is idempotent
    second = MaskKey.create(box1.key, ROUND, b"\x07" * 32)
    with pytest.raises(SecAggError) as err:
        r.collector.add_key(second, "box1")
    assert err.value.reason == "duplicate_key"
    # box2 re-signs box1's public key as its own: refused
    copied = MaskKey.create(box2.key, ROUND, box1.mask_key.public_key().public_bytes_raw())
    with pytest.raises(SecAggError) as err:
        r.collector.add_key(copied, "box2")
    assert err.value.reason == "duplicate_key"
    # malformed JSON never becomes a MaskKey
    raw = good.model_dump_json()
    for bad in (raw[:-5], raw.replace('"v":1', '"v":2'), raw.replace(good.signature, "!!")):
        with pytest.raises(ValidationError):
            MaskKey.model_validate_json(bad)


def test_a_box_refuses_a_key_set_with_a_substituted_or_duplicated_key(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    for name, box in r.boxes.items():
        r.collector.add_key(box.key_message(), name)
    keyset = r.collector.close_keys()
    box1 = r.boxes["box1"]
    # the aggregator swaps box2's key for one of its own (a man in the middle): signature fails
    mitm = keyset.model_copy(
        update={
            "keys": tuple(
                k.model_copy(update={"public_key": b64(b"\x05" * 32)}) if k.node_id == "box2" else k
                for k in keyset.keys
            )
        }
    )
    with pytest.raises(SecAggError) as err:
        box1.accept_key_set(mitm, AGG)
    assert err.value.reason == "bad_signature"
    with pytest.raises(SecAggError) as err:
        box1.accept_key_set(keyset, "box2")
    assert err.value.reason == "sender_mismatch"
    without = KeySet(round_id=ROUND, keys=tuple(k for k in keyset.keys if k.node_id != "box1"))
    with pytest.raises(SecAggError) as err:
        box1.accept_key_set(without, AGG)
    assert err.value.reason == "not_participant"
    # a set that names a node twice or shares a key does not parse
    doubled = keyset.model_dump_json().replace('"node_id":"box3"', '"node_id":"box2"')
    with pytest.raises(ValidationError, match="twice"):
        KeySet.model_validate_json(doubled)
    k2, k3 = keyset.keys[1].public_key, keyset.keys[2].public_key
    shared = keyset.model_dump_json().replace(k3, k2)
    with pytest.raises(ValidationError, match="share one public key"):
        KeySet.model_validate_json(shared)
    box1.accept_key_set(keyset, AGG)
    box1.accept_key_set(keyset, AGG)  # relayed again: fine
    other = KeySet(round_id=ROUND, keys=keyset.keys[:2])
    with pytest.raises(SecAggError) as err:
        box1.accept_key_set(other, AGG)
    assert err.value.reason == "conflicting_keyset"


def test_bad_masked_updates_are_refused_with_a_reason(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 3))
    r.keys()
    blob = r.boxes["box1"].mask(r.encoded["box1"], r.w.layout)
    header, values = unpack_masked(blob, r.w.layout)

    def repack(**changes: object) -> bytes:
        return pack_masked(header.model_copy(update=changes), values)

    cases = {
        "truncated": [blob[:7], blob[:-1], blob[:100]],
        "wrong_length": [blob + b"\0\0\0\0"],
        "malformed": [b"XXXX" + blob[4:], blob.replace(b'"format":1', b'"format":7', 1)],
        "wrong_layout": [repack(layout=(("blk.0.attn_q.weight", 64, 4),))],
        "wrong_round": [repack(round_id="r2-other")],
        "stale_keyset": [repack(keyset_sha256="f" * 64)],
        "sender_mismatch": [repack(node_id="box2")],
        "weight_out_of_range": [repack(weight=FIXED.max_weight + 1)],
    }
    for reason, blobs in cases.items():
        for bad in blobs:
            with pytest.raises(SecAggError) as err:
                r.collector.add_masked(bad, "box1")
            assert err.value.reason == reason, (reason, err.value)
    lying_count = MaskedHeader.model_validate(header.model_dump() | {"count": 5})
    raw = lying_count.model_dump_json().encode()
    with pytest.raises(SecAggError) as err:
        unpack_masked(blob[:6] + len(raw).to_bytes(4, "little") + raw, r.w.layout)
    assert err.value.reason == "wrong_length"
    r.collector.add_masked(blob, "box1")  # the good one still goes in after all that


def test_bad_reveals_are_refused_with_a_reason(tmp_path: Path) -> None:
    r = Round(world(tmp_path, 4))
    r.keys()
    r.send(["box1", "box2", "box3"])
    commit = wire(r.collector.commit())
    good = r.boxes["box1"].reveal(commit, AGG)
    extra = good.model_copy(
        update={"seeds": (*good.seeds, PeerSeed(peer="box2", seed=b64(bytes(32))))}
    )
    cases = {
        "sender_mismatch": (good, "box2"),
        "wrong_round": (good.model_copy(update={"round_id": "r5-x"}), "box1"),
        "stale_commit": (good.model_copy(update={"commit_sha256": "a" * 64}), "box1"),
        "missing_seed": (good.model_copy(update={"seeds": ()}), "box1"),
        "not_reporting": (good.model_copy(update={"node_id": "box4"}), "box4"),
    }
    cases["missing_seed_extra"] = (extra, "box1")
    for reason, (reveal, signer) in cases.items():
        with pytest.raises(SecAggError) as err:
            r.collector.add_reveal(reveal, signer)
        assert err.value.reason == reason.removesuffix("_extra")
    with pytest.raises(ValidationError):
        SeedReveal.model_validate_json(good.model_dump_json().replace(good.seeds[0].seed, "AAAA"))


def test_the_participant_bound_keeps_the_sum_from_wrapping() -> None:
    fixed = FixedPoint(value_bound=1.0, max_weight=1024)
    n = max_participants(1024)
    assert n == 16_513
    layout = (("t", 1, 2),)
    one = fixed.encode({"t": Delta(None, np.array([[5.0, -5.0]]))}, layout, 10**6)
    assert one.clipped == 2 and one.weight == 1024
    total = (one.values.astype(np.uint64) * n % (1 << 32)).astype(np.uint32)
    mean = fixed.decode_sum(total, n * 1024, layout)["t"]
    np.testing.assert_array_equal(mean, [[1.0, -1.0]])
    fixed.check_participants(n)
    with pytest.raises(ValueError, match="wrap"):
        fixed.check_participants(n + 1)
    with pytest.raises(ValueError, match="NaN"):
        fixed.encode({"t": Delta(None, np.array([[np.nan, 0.0]]))}, layout, 1)
    with pytest.raises(ValueError):
        FixedPoint(value_bound=float("nan"), max_weight=1)
