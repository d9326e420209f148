"""SecAgg+ (plan version 2) in memory: 10 boxes, dropouts at every phase (1, 3 and the most
the threshold allows succeed; one more fails cleanly, before anything is revealed), neighbour
graphs, the Shamir layer, and the refusals that protect a box against an active aggregator
(substituted keys, tampered shares, split survivor sets, two different globals, a second
commit that would reveal both secrets of one box)."""

from pathlib import Path

import numpy as np
import pytest

from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.privacy.secagg import SecAggError, noise, ring, shamir
from appliance.privacy.secagg.graph import neighbours, threshold_of
from appliance.privacy.secagg.plus_collector import Phase
from appliance.privacy.secagg.plus_messages import (
    AckSet,
    CommitAck,
    PlusCommit,
    unpack_masked_v2,
)
from appliance.privacy.secagg.plus_protocol import plan_for
from tests.privacy.secagg_plus_support import GLOBAL, PHASES, PlusRound, wire
from tests.privacy.secagg_support import AGG, ROUND, world

N = 10
T = 6
"""threshold 0.6 of 10 holders (everyone is everyone's neighbour): n - t = 4 dropouts are the
most a round survives; t - 1 = 5 = n - t + 1 is one too many (t must exceed n / 2, or two
halves could each sign a different survivor set)."""
AFTER_KEYS = PHASES[1:]


def names(count: int, start: int = 1) -> tuple[str, ...]:
    return tuple(f"box{i}" for i in range(start, start + count))


def test_threshold_and_graph_numbers() -> None:
    assert threshold_of(0.6, 10) == T
    assert threshold_of(0.51, 10) == 6  # always more than half
    assert threshold_of(1.0, 3) == 3
    with pytest.raises(ValueError, match="0.5"):
        threshold_of(0.5, 10)
    members = [f"n{i}" for i in range(30)]
    graph = neighbours(members, 8, ROUND)
    assert all(len(peers) == 8 and m not in peers for m, peers in graph.items())
    assert all(m in graph[p] for m, peers in graph.items() for p in peers)  # symmetric
    assert neighbours(members, 8, "r2-other") != graph  # the ring is the round's
    full = neighbours(members, 0, ROUND)
    assert all(len(peers) == 29 for peers in full.values())
    assert neighbours(members[:5], 8, ROUND) == neighbours(members[:5], 0, ROUND)


def test_shamir_any_t_shares_rebuild_fewer_do_not() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 4, [1, 2, 3, 4, 5, 6])
    assert shamir.combine({x: shares[x] for x in (2, 4, 5, 6)}, 4) == secret
    assert shamir.combine({x: shares[x] for x in (1, 3, 5, 6)}, 4) == secret
    with pytest.raises(SecAggError, match="too_few_shares"):
        shamir.combine({x: shares[x] for x in (1, 2, 3)}, 4)
    # a tampered share rebuilds something else (or no 32-byte value at all), never the secret
    forged = dict(shares)
    forged[6] = (int.from_bytes(shares[6], "big") ^ 1).to_bytes(66, "big")
    try:
        assert shamir.combine({x: forged[x] for x in (1, 2, 3, 6)}, 4) != secret
    except SecAggError as exc:
        assert exc.reason == "share_mismatch"
    # two splits of one secret are independent polynomials
    assert shamir.split(secret, 4, [1, 2, 3, 4]) != shamir.split(secret, 4, [1, 2, 3, 4])


def test_no_dropout_sums_exactly_and_masks_hide_each_update(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, N))
    result = r.run()
    assert result.dropped == ()
    assert np.array_equal(result.total, r.plain_sum(r.boxes))
    assert result.total_weight == sum(e.weight for e in r.encoded.values())
    for name, blob in r.blobs.items():
        _, masked = unpack_masked_v2(blob, r.w.layout, 32)
        assert np.mean(masked == r.encoded[name].values) < 0.001


@pytest.mark.parametrize("count", [1, 3, N - T])
@pytest.mark.parametrize("phase", PHASES)
def test_dropouts_at_every_phase_are_recovered(tmp_path: Path, phase: str, count: int) -> None:
    r = PlusRound(world(tmp_path, N))
    gone = names(count, start=2)
    result = r.run({phase: gone})
    # boxes gone before they masked are out of the sum; later ones are in it
    in_sum = [n for n in r.boxes if phase in ("ack", "reveal") or n not in gone]
    assert result.reporting == tuple(sorted(in_sum))
    assert np.array_equal(result.total, r.plain_sum(in_sum))
    if phase in ("shares", "update"):
        assert result.dropped == (() if phase == "shares" else tuple(sorted(gone)))


@pytest.mark.parametrize("phase", AFTER_KEYS)
def test_one_dropout_too_many_fails_cleanly_before_any_reveal(tmp_path: Path, phase: str) -> None:
    r = PlusRound(world(tmp_path, N))
    gone = names(N - T + 1, start=2)
    if phase == "reveal":
        # every secret lacks shares: the round waits (and times out), nothing is unmasked
        r.keys({})
        r.relay({})
        r.send({})
        r.acks({})
        r.reveal({"reveal": gone})
        assert r.collector.phase is Phase.REVEALS
        assert set(r.collector.missing_shares()) == set(r.boxes)
        with pytest.raises(SecAggError, match="wrong_phase"):
            r.collector.unmask()
        return
    with pytest.raises(SecAggError, match="too_many_dropouts"):
        r.run({phase: gone})
    assert r.state.seed_shares == {} and r.state.key_shares == {}  # nothing revealed
    assert all(not s.revealed for s in r.saved.values())


def test_dropouts_before_the_key_set_shrink_the_round(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, N))
    gone = names(N - 3, start=1)  # 3 boxes left: t = 2 of 3
    result = r.run({"keys": gone})
    assert result.reporting == ("box10", "box8", "box9")
    assert np.array_equal(result.total, r.plain_sum(result.reporting))


def test_dropouts_at_several_phases_in_one_round(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, N))
    dropped = {"shares": ("box2",), "update": ("box3", "box4"), "reveal": ("box5",)}
    result = r.run(dropped)
    assert result.dropped == ("box3", "box4")
    survivors = [n for n in r.boxes if n not in ("box2", "box3", "box4")]
    assert np.array_equal(result.total, r.plain_sum(survivors))


@pytest.mark.parametrize("boxes, degree", [(30, 8), (30, 12)])
def test_neighbour_graphs_with_dropouts(tmp_path: Path, boxes: int, degree: int) -> None:
    r = PlusRound(world(tmp_path, boxes), degree=degree)
    gone = ("box17", "box3")
    result = r.run({"update": gone, "reveal": ("box20",)})
    assert result.dropped == gone
    assert np.array_equal(result.total, r.plain_sum([n for n in r.boxes if n not in gone]))
    bundle = r.boxes["box1"].state.bundle
    assert bundle is not None and len(bundle.shares) == degree  # shares go to neighbours only


def test_sixteen_bit_ring_sums_exactly_at_half_the_bytes(tmp_path: Path) -> None:
    wide = PlusRound(world(tmp_path / "a", 4), max_weight=8)
    narrow = PlusRound(world(tmp_path / "b", 4), max_weight=8, ring_bits=16)
    assert np.array_equal(
        wide.run({"update": ("box2",)}).total, wide.plain_sum(["box1", "box3", "box4"])
    )
    result = narrow.run({"update": ("box2",)})
    assert np.array_equal(result.total, narrow.plain_sum(["box1", "box3", "box4"]))
    size = sum(c * r for _, c, r in narrow.w.layout)
    assert len(wide.blobs["box1"]) - len(narrow.blobs["box1"]) == 2 * size
    assert ring.ring_bits_for(4 * 127 * 8) == 16 and ring.ring_bits_for(300 * 127) == 32


# -- what a box enforces against an active aggregator -------------------------------------------


def test_a_second_commit_cannot_reveal_both_secrets_of_a_box(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, N))
    r.keys({})
    r.relay({})
    r.send({})
    r.acks({})
    assert r.commit is not None and r.ackset is not None
    first = r.boxes["box1"].reveal(r.ackset, AGG)
    assert "box2" in [s.owner for s in first.self_mask]  # box2 reported: its b share
    # the aggregator now claims box2 dropped, to get its mask-key shares as well
    other = PlusCommit(
        round_id=ROUND,
        keyset_sha256=r.commit.keyset_sha256,
        shared=r.commit.shared,
        reporting=tuple(n for n in r.commit.reporting if n != "box2"),
        dropped=("box2",),
    )
    with pytest.raises(SecAggError, match="conflicting_commit"):
        r.boxes["box1"].accept_commit(other, AGG)
    # and even a box whose state was forced to that commit keeps to the kind it revealed
    state = r.boxes["box1"].state
    state.commit = other
    state.ack = CommitAck.create(r.w.boxes[0], ROUND, other.sha256, GLOBAL)
    forged_acks = AckSet(
        round_id=ROUND,
        commit_sha256=other.sha256,
        acks=tuple(
            sorted(
                (
                    CommitAck.create(k, ROUND, other.sha256, GLOBAL)
                    for k in r.w.boxes
                    if k.node_id != "box2"
                ),
                key=lambda a: a.node_id,
            )
        ),
    )
    with pytest.raises(SecAggError, match="both_secrets"):
        r.boxes["box1"].reveal(forged_acks, AGG)


def test_split_survivor_sets_fail_the_consistency_check(tmp_path: Path) -> None:
    """The aggregator tells half the boxes that box10 reported and the other half that it
    dropped: each half holds fewer than t acks, so no box reveals."""
    r = PlusRound(world(tmp_path, N))
    r.keys({})
    r.relay({})
    r.send({})
    commit = r.collector.commit()
    half = ("box1", "box2", "box3", "box4", "box5")
    other = PlusCommit(
        round_id=ROUND,
        keyset_sha256=commit.keyset_sha256,
        shared=commit.shared,
        reporting=tuple(n for n in commit.reporting if n != "box10"),
        dropped=("box10",),
    )
    views = {name: (commit if name in half else other) for name in r.boxes if name != "box10"}
    acks = {name: r.boxes[name].accept_commit(c, AGG) for name, c in views.items()}
    for name, c in views.items():
        group = sorted((a for n, a in acks.items() if views[n] is c), key=lambda a: a.node_id)
        ackset = AckSet(round_id=ROUND, commit_sha256=c.sha256, acks=tuple(group))
        with pytest.raises(SecAggError, match="too_few_acks"):
            r.boxes[name].reveal(ackset, AGG)
    assert all(not b.state.revealed for b in r.boxes.values())


def test_a_box_that_got_another_global_is_caught_before_any_reveal(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, 4))
    r.keys({})
    r.relay({})
    for name in r.boxes:
        enc = r.encoded[name]
        sha = GLOBAL if name != "box3" else "cd" * 32  # box3 was sent another adapter
        r.collector.add_masked(r.boxes[name].mask(enc.values, r.w.layout, enc.weight, sha), name)
    commit = r.collector.commit()
    for name in r.boxes:
        r.collector.add_ack(r.boxes[name].accept_commit(commit, AGG), name)
    ackset = r.collector.close_acks()
    for name in r.boxes:
        with pytest.raises(SecAggError, match="global_mismatch"):
            r.boxes[name].reveal(ackset, AGG)


def test_forged_acks_and_tampered_shares_are_refused(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, 4))
    r.keys({})
    relays = r.collector.close_shares()
    relay = relays["box1"]
    sealed = relay.shares[0].sealed
    flipped = sealed[:40] + ("A" if sealed[40] != "A" else "B") + sealed[41:]
    first = relay.shares[0].model_copy(update={"sealed": flipped})
    tampered = relay.model_copy(update={"shares": (first, *relay.shares[1:])})
    with pytest.raises(SecAggError, match="bad_seal"):
        r.boxes["box1"].accept_relay(tampered, AGG)
    # a relay that leaves out a neighbour's shares, or comes from someone else
    short = relay.model_copy(update={"shares": relay.shares[1:]})
    with pytest.raises(SecAggError, match="missing_share"):
        r.boxes["box1"].accept_relay(short, AGG)
    with pytest.raises(SecAggError, match="sender_mismatch"):
        r.boxes["box1"].accept_relay(relay, "box2")
    for name, relay in relays.items():
        r.boxes[name].accept_relay(wire(relay), AGG)
    r.send({})
    commit = r.collector.commit()
    for name in r.boxes:
        r.collector.add_ack(r.boxes[name].accept_commit(commit, AGG), name)
    # an ack re-signed by the aggregator itself (not by the box) is refused by the collector
    # and by every box
    box2 = r.collector.state.acks["box2"]
    forged = CommitAck.create(r.w.agg, ROUND, commit.sha256, GLOBAL).model_copy(
        update={"node_id": "box2"}
    )
    with pytest.raises(SecAggError, match="duplicate"):
        r.collector.add_ack(forged, "box2")
    ackset = r.collector.close_acks()
    bad = ackset.model_copy(update={"acks": tuple(forged if a == box2 else a for a in ackset.acks)})
    with pytest.raises(SecAggError, match="bad_signature"):
        r.boxes["box1"].reveal(bad, AGG)
    assert not r.boxes["box1"].state.revealed


def test_replayed_late_and_misdirected_messages_are_refused(tmp_path: Path) -> None:
    r = PlusRound(world(tmp_path, 4))
    r.keys({})
    r.relay({})
    values, weight = r.encoded["box1"].values, r.encoded["box1"].weight
    blob = r.boxes["box1"].mask(values, r.w.layout, weight, GLOBAL)
    with pytest.raises(SecAggError, match="sender_mismatch"):
        r.collector.add_masked(blob, "box2")  # box2 relays box1's update as its own
    r.collector.add_masked(blob, "box1")
    with pytest.raises(SecAggError, match="replay"):
        r.collector.add_masked(blob, "box1")
    for name in ("box2", "box3"):
        enc = r.encoded[name]
        r.collector.add_masked(r.boxes[name].mask(enc.values, r.w.layout, enc.weight, GLOBAL), name)
    commit = r.collector.commit()
    late = r.boxes["box4"]
    with pytest.raises(SecAggError, match="not_reporting"):
        late.accept_commit(commit, AGG)  # and it will never mask again
    with pytest.raises(SecAggError, match="already_masked|late"):
        late.mask(r.encoded["box4"].values, r.w.layout, 5, GLOBAL)
    with pytest.raises(SecAggError, match="late"):
        r.collector.add_masked(b"APSM", "box4")
    for name in ("box1", "box2", "box3"):
        ack = r.boxes[name].accept_commit(commit, AGG)
        assert r.boxes[name].accept_commit(commit, AGG) == ack  # the same commit again
        r.collector.add_ack(ack, name)
        assert r.collector.add_ack(ack, name) is True  # replayed ack: same, no effect
    ackset = r.collector.close_acks()
    reveal = r.boxes["box1"].reveal(ackset, AGG)
    r.collector.add_reveal(reveal, "box1")
    with pytest.raises(SecAggError, match="replay"):
        r.collector.add_reveal(reveal, "box1")
    with pytest.raises(SecAggError, match="sender_mismatch"):
        r.collector.add_reveal(r.boxes["box2"].reveal(ackset, AGG), "box3")


def test_the_ring_is_sixteen_bits_only_where_the_sum_cannot_wrap() -> None:
    settings = SecureAggregationSettings(enabled=True, max_weight=1)
    assert plan_for(settings, 100, 184_320).ring_bits == 16  # 100 x 127 < 2^15
    assert plan_for(settings, 300, 184_320).ring_bits == 32  # 300 x 127 > 2^15
    weighted = SecureAggregationSettings(enabled=True, max_weight=8)
    assert plan_for(weighted, 32, 1000).ring_bits == 16
    assert plan_for(weighted, 33, 1000).ring_bits == 32
    assert plan_for(SecureAggregationSettings(enabled=True), 3, 1000).ring_bits == 32
    noisy = settings.model_copy(update={"noise_multiplier": 1.0})
    # each share is cut at 6 std = 606 code units here: 3 boxes fit 16 bits, 100 do not
    assert plan_for(noisy, 3, 1000).ring_bits == 16
    assert plan_for(noisy, 100, 1000).ring_bits == 32
    with pytest.raises(ValueError, match="could wrap"):
        plan_for(settings.model_copy(update={"ring_bits": 16}), 300, 1000)


def test_noise_shares_sum_to_the_central_noise_and_stay_within_their_margin() -> None:
    rng = np.random.default_rng(4)
    std = noise.share_std(1.5, 1000.0, 9)
    assert std == pytest.approx(1.5 * 1000.0 / 3)
    shares = [noise.noise_share(50_000, std, rng) for _ in range(9)]
    assert max(int(np.abs(s).max()) for s in shares) <= noise.per_box_margin(std)
    assert np.std(sum(shares)) == pytest.approx(1.5 * 1000.0, rel=0.02)
    assert noise.effective_multiplier(1.5, 36, 9) == pytest.approx(3.0)
    assert not noise.noise_share(10, 0.0, rng).any()
