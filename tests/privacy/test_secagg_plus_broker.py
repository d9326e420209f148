"""SecAgg+ through a real Mosquitto at the round-protocol seam: the aggregator's `PlusRounds`
and ten boxes' `SecureBox` (which runs `PlusBox` for version-2 plans), each on its own
transport node (own outbox, signed envelopes, chunked artifacts), driven the way the
services drive them (configure, tick, admit, finish; join, prepare, tick). Boxes drop at
every phase in one round; a box and the aggregator are restarted mid-round (new processes'
worth of objects on the same state directories) and the round completes; forged, replayed
and inconsistent messages are refused."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.federation.messages import RoundAnnouncement
from appliance.federation.protocol import (
    Aggregated,
    Failed,
    LocalUpdate,
    RefusedUpdateError,
    Waiting,
)
from appliance.federation.rounds import Round, RoundState, StoredUpdate
from appliance.identity import NodeKey
from appliance.privacy.accountant import PrivacyLedger, Release, epsilon
from appliance.privacy.secagg import noise
from appliance.privacy.secagg.encoding import FixedPoint
from appliance.privacy.secagg.plus_collector import Phase
from appliance.privacy.secagg.plus_messages import AckSet, PlusKey
from appliance.privacy.secagg.plus_protocol import PlusRounds
from appliance.privacy.secagg.plus_session import ACKS, KEY
from appliance.privacy.secagg.protocol import SecureBox
from appliance.privacy.secagg.session import MASKED_UPDATE
from appliance.transport.events import ArtifactArrived
from appliance.transport.node import NodeSettings, TransportNode
from tests.federation.plans import training_plan
from tests.privacy.secagg_support import AGG, World, deltas, world
from tests.support.mosquitto import Mosquitto
from tests.transport.conftest import mqtt_settings
from tests.transport.waiting import wait_for

PLANT = "plant1"
ROUND_ID = "r1-plus"
SETTINGS = SecureAggregationSettings(
    enabled=True, version=2, threshold=0.6, key_wait_s=600, reveal_wait_s=600, value_bound=0.05
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.kill()


class Fleet:
    """The aggregator's and the boxes' nodes and protocols, and the aggregator's round store
    as far as the protocol needs one (the admitted blobs)."""

    def __init__(
        self,
        w: World,
        broker: Mosquitto,
        tmp_path: Path,
        settings: SecureAggregationSettings = SETTINGS,
    ) -> None:
        self.w, self.broker, self.tmp_path, self.settings = w, broker, tmp_path, settings
        self.rng = np.random.default_rng(3)
        self.stored: dict[str, StoredUpdate] = {}
        self.refused: list[str] = []
        self.boxes: dict[str, SecureBox] = {}
        self.box_nodes: dict[str, TransportNode] = {}
        self._start_aggregator()
        for key in w.boxes:
            self.start_box(key)
        self.round: Round | None = None
        self.announcement: RoundAnnouncement | None = None

    def node(self, key: NodeKey) -> TransportNode:
        settings = NodeSettings(
            PLANT,
            mqtt_settings(self.broker),
            OutboxSettings(),
            TransferSettings(),
            self.tmp_path / f"state-{key.node_id}",
        )
        return TransportNode(key, self.w.trust, settings)

    def _start_aggregator(self) -> None:
        self.agg_node = self.node(self.w.agg)
        self.agg = PlusRounds(self.agg_node, self.w.trust, self.settings)
        self.agg_node.start()
        self.agg_node.client.wait_connected(60)
        self._stopping = threading.Event()
        self._consumer = threading.Thread(target=self._take_updates, daemon=True)
        self._consumer.start()

    def restart_aggregator(self) -> None:
        """Stop the aggregator's node and protocol; bring up new ones on the same state."""
        self._stopping.set()
        self._consumer.join(timeout=5)
        self.agg_node.stop()
        self._start_aggregator()

    def start_box(self, key: NodeKey) -> None:
        node = self.node(key)
        self.boxes[key.node_id] = SecureBox(node, AGG)
        self.box_nodes[key.node_id] = node
        node.start()
        node.client.wait_connected(60)

    def stop_box(self, name: str) -> None:
        self.box_nodes[name].stop()

    def restart_box(self, name: str) -> None:
        self.stop_box(name)
        self.start_box(next(k for k in self.w.boxes if k.node_id == name))
        self.boxes[name].tick()  # the service's first step: the box says it is back

    def _take_updates(self) -> None:
        """The aggregator service's artifact path: admit, then store (or refuse)."""
        while not self._stopping.is_set():
            event = self.agg_node.next_event(timeout_s=0.05)
            if not isinstance(event, ArtifactArrived):
                continue
            if event.manifest.kind == MASKED_UPDATE and self.round is not None:
                blob = event.path.read_bytes()
                sender = event.manifest.sender
                try:
                    weight = self.agg.admit(blob, sender, self.round, self.w.base)
                    self.stored[sender] = StoredUpdate(sender, "0" * 64, weight, blob)
                except RefusedUpdateError as exc:
                    self.refused.append(f"{sender}: {exc}")
            self.agg_node.acknowledge(event)

    def open(self) -> RoundAnnouncement:
        names = tuple(b.node_id for b in self.w.boxes)
        now = time.time()
        plan = self.agg.configure(training_plan(), ROUND_ID, names, self.w.base, now)
        self.round = Round(
            ROUND_ID, 1, 3, plan, names, 2, 2, 600.0, now, now + 600, False, RoundState.OPEN, None
        )
        self.announcement = RoundAnnouncement(
            round_id=ROUND_ID,
            base_sha256="0" * 64,
            global_version=3,
            plan=plan,
            participants=names,
            min_updates=2,
            deadline=now + 600,
        )
        return self.announcement

    def tick_until(self, phase: Phase, what: str) -> None:
        def ticked() -> bool:
            self.agg.tick(time.time())
            for box in self.boxes.values():
                box.tick()
            collector = self.agg.session.collector
            return collector is not None and collector.phase is phase

        wait_for(ticked, what)

    def wait_ticking(self, condition: Callable[[], object], what: str) -> None:
        """Wait as the box services do: each polls its protocol in its loop, which sends a
        prepared update once its share relay has arrived (it may land after `prepare`)."""

        def ticked() -> object:
            for box in self.boxes.values():
                box.tick()
            return condition()

        wait_for(ticked, what)

    def relay_shares(self, sharing: set[str], what: str) -> None:
        """Let every box in `sharing` share before the aggregator is ticked again, then tick
        until the shares are relayed: only the boxes left out miss a short `share_wait_s`
        (on a loaded machine sharing can take longer than it)."""
        collector = self.agg.session.collector
        assert collector is not None
        self.wait_ticking(lambda: set(collector.shares_received) == sharing, what)
        self.tick_until(Phase.UPDATES, "the share relays")

    def prepare(self, name: str) -> tuple[np.ndarray, int]:
        """Train (here: draw) and prepare one box's update; its weighted codes and weight."""
        assert self.announcement is not None
        local = LocalUpdate(
            deltas(self.w.base, self.rng), int(self.rng.integers(10, 900)), self.w.base
        )
        self.boxes[name].prepare(self.announcement, local)
        fixed = FixedPoint(SETTINGS.value_bound, SETTINGS.max_weight)
        encoded = fixed.encode(local.deltas, self.w.layout, local.sample_count)
        return encoded.values.view(np.int32).astype(np.int64), encoded.weight

    def finish(self, *, advance_s: float = 0.0) -> Aggregated | Failed:
        assert self.round is not None
        outcome: list[Aggregated | Failed] = []

        def stepped() -> bool:
            for box in self.boxes.values():
                box.tick()
            result = self.agg.finish(
                self.round, self.w.base, self.stored.values(), time.time() + advance_s
            )
            if isinstance(result, Waiting):
                return False
            outcome.append(result)
            return True

        wait_for(stepped, "the round to finish")
        return outcome[0]

    def rejected(self, node: TransportNode, reason: str) -> int:
        return node.client.counters.get(f"rejected.{reason}")

    def stop(self) -> None:
        self._stopping.set()
        self._consumer.join(timeout=5)
        for node in [self.agg_node, *self.box_nodes.values()]:
            node.stop()


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto) -> Iterator[Fleet]:
    made = Fleet(world(tmp_path, 10, seed=5), broker, tmp_path)
    yield made
    made.stop()


def assert_mean_of(
    fleet: Fleet, outcome: Aggregated, codes: dict[str, tuple[np.ndarray, int]]
) -> None:
    """The new global B is the base B plus the exact weighted mean of the reporting codes."""
    step = SETTINGS.value_bound / 127
    total = sum(c for c, _ in codes.values())
    weight = sum(w for _, w in codes.values())
    flat = np.asarray(total, np.float64) * step / weight
    offset = 0
    for name, rows, cols in fleet.w.layout:
        mean = flat[offset : offset + rows * cols].reshape(rows, cols)
        offset += rows * cols
        got = outcome.result.factors[name][1].astype(np.float64) - fleet.w.base.factors[name][1]
        np.testing.assert_allclose(got, mean, rtol=0, atol=1e-6)


def test_dropouts_at_every_phase_over_the_broker(fleet: Fleet) -> None:
    """box2 drops before its keys, box3 before sharing, box4 before its update, box5 before
    its ack, box6 before revealing: 9 keys, t = 5 (threshold 0.55), and n - t = 4 dropouts
    after the key set; the round completes with the exact weighted mean."""
    fleet.agg.settings = SETTINGS.model_copy(update={"threshold": 0.55})
    announcement = fleet.open()
    fleet.stop_box("box2")
    for name, box in fleet.boxes.items():
        if name != "box2":
            box.join(announcement)
    # box3 is gone once its keys are in: it never shares
    wait_for(lambda: "box3" in fleet.agg.session.collector.keys_received, "box3's keys")
    fleet.stop_box("box3")
    waits = {"key_wait_s": 0.5, "share_wait_s": 0.5}  # no box2 keys, no box3 shares
    fleet.agg.settings = fleet.agg.settings.model_copy(update=waits)
    fleet.tick_until(Phase.SHARES, "the key set")
    fleet.relay_shares(set(fleet.boxes) - {"box2", "box3"}, "eight boxes' shares")
    fleet.stop_box("box4")
    codes = {}
    for name in fleet.boxes:
        if name not in ("box2", "box3", "box4"):
            codes[name] = fleet.prepare(name)
    fleet.wait_ticking(lambda: len(fleet.stored) == 7, "seven masked updates")
    fleet.stop_box("box5")  # reported, then gone: no ack
    first = fleet.agg.finish(fleet.round, fleet.w.base, fleet.stored.values(), time.time())
    assert first == Waiting("committed", "waiting for the reporting boxes' acks")
    collector = fleet.agg.session.collector
    wait_for(lambda: len(collector.acked) == 6, "six acks")
    fleet.stop_box("box6")  # acked, then gone: no reveal
    outcome = fleet.finish(advance_s=601)  # the ack wait is over (box5 never acks)
    assert isinstance(outcome, Aggregated), outcome
    facts = outcome.facts
    assert facts.participants == ("box1", "box10", "box5", "box6", "box7", "box8", "box9")
    assert facts.dropped == ("box4",)
    assert_mean_of(fleet, outcome, codes)
    assert outcome.result.report["secure_aggregation"] == 1
    assert outcome.result.report["updates"] == 7


def test_a_box_and_the_aggregator_restart_mid_round(fleet: Fleet) -> None:
    announcement = fleet.open()
    for box in fleet.boxes.values():
        box.join(announcement)
    fleet.tick_until(Phase.SHARES, "the key set")
    fleet.restart_box("box7")  # shares sent or not: it restores its keys and says hello
    fleet.tick_until(Phase.UPDATES, "the share relays")
    fleet.restart_box("box8")  # restarted "while training": relay restored from its vault
    codes = {name: fleet.prepare(name) for name in fleet.boxes}
    fleet.wait_ticking(lambda: len(fleet.stored) == 10, "ten masked updates")
    first = fleet.agg.finish(fleet.round, fleet.w.base, fleet.stored.values(), time.time())
    assert isinstance(first, Waiting)
    fleet.restart_box("box9")  # after its update: acks from the restored state
    fleet.restart_aggregator()  # after the commit: the round goes on from the vault
    outcome = fleet.finish()
    assert isinstance(outcome, Aggregated), outcome
    assert outcome.facts.dropped == ()
    assert len(outcome.facts.participants) == 10
    assert_mean_of(fleet, outcome, codes)
    # the vault holds the round's state encrypted: no key or share in the clear
    vault = fleet.tmp_path / "state-box1" / "secagg"
    for path in vault.iterdir():
        assert b"share_sk" not in path.read_bytes()


def test_forged_replayed_and_inconsistent_messages_over_the_broker(fleet: Fleet) -> None:
    announcement = fleet.open()
    box1 = fleet.box_nodes["box1"]
    box2_key = next(k for k in fleet.w.boxes if k.node_id == "box2")
    forged = PlusKey.create(box2_key, ROUND_ID, b"\x01" * 32, b"\x02" * 32, "0" * 64)
    box1.publish(KEY, forged)  # box1 publishes keys that claim to be box2's
    wait_for(lambda: fleet.rejected(fleet.agg_node, "sender_mismatch") == 1, "impersonation")
    for box in fleet.boxes.values():
        box.join(announcement)
    fleet.tick_until(Phase.SHARES, "the key set")
    fleet.tick_until(Phase.UPDATES, "the share relays")
    for name in fleet.boxes:
        fleet.prepare(name)
    fleet.wait_ticking(lambda: len(fleet.stored) == 10, "ten masked updates")
    # a replayed masked update is refused
    box1.sender.send_artifact(
        MASKED_UPDATE, fleet.stored["box1"].blob, [AGG], meta={"round_id": ROUND_ID}
    )
    wait_for(lambda: any("replay" in r for r in fleet.refused), "replayed update refused")
    fleet.agg.finish(fleet.round, fleet.w.base, fleet.stored.values(), time.time())
    collector = fleet.agg.session.collector
    wait_for(lambda: len(collector.acked) == 10, "ten acks")
    # box1 forges an ack set (the aggregator's kind, under its own envelope): ignored
    acks = AckSet(
        round_id=ROUND_ID,
        commit_sha256=collector.state.commit.sha256,
        acks=tuple(collector.state.acks[n] for n in sorted(collector.state.acks))[:2],
    )
    box1.publish(ACKS, acks)
    # an inconsistent ack set from the aggregator itself (too few acks): every box refuses
    fleet.agg_node.publish(ACKS, acks)
    refusals = ("too_few_acks", "missing_ack")
    for name, node in fleet.box_nodes.items():
        wait_for(
            lambda n=node: sum(fleet.rejected(n, r) for r in refusals) == 1, f"{name} refusing"
        )
    assert all(not b.plus.session.revealed.is_set() for b in fleet.boxes.values())
    outcome = fleet.finish()
    assert isinstance(outcome, Aggregated), outcome
    assert len(outcome.facts.participants) == 10


def test_distributed_dp_noise_and_the_fleet_epsilon(tmp_path: Path, broker: Mosquitto) -> None:
    """Each box clips its B change and adds its noise share; the sum carries the whole noise
    (its error is that of z * sensitivity, not of one share), and the aggregator's fleet
    ledger reports the epsilon of the effective multiplier, composed over rounds."""
    settings = SETTINGS.model_copy(
        update={"noise_multiplier": 0.8, "clip_norm": 0.05, "min_reporting": 4}
    )
    fleet = Fleet(world(tmp_path, 4, seed=9), broker, tmp_path, settings)
    try:
        announcement = fleet.open()
        assert fleet.round is not None
        plan = fleet.round.plan.secure_aggregation
        assert plan is not None and plan.noise_multiplier == 0.8 and plan.ring_bits == 32
        for box in fleet.boxes.values():
            box.join(announcement)
        fleet.tick_until(Phase.UPDATES, "the share relays")
        codes = {name: fleet.prepare(name) for name in fleet.boxes}
        fleet.wait_ticking(lambda: len(fleet.stored) == 4, "four masked updates")
        outcome = fleet.finish()
        assert isinstance(outcome, Aggregated), outcome
    finally:
        fleet.stop()
    fleet_dp = outcome.facts.fleet_privacy  # the audit log's round_aggregated field
    z = noise.effective_multiplier(0.8, 4, 4)
    assert fleet_dp is not None and fleet_dp.noise_multiplier == pytest.approx(z)
    assert fleet_dp.epsilon == pytest.approx(epsilon([Release(ROUND_ID, z)], 1e-5))
    assert 0 < fleet_dp.epsilon < 100 and fleet_dp.rounds == 1 and fleet_dp.clip_norm == 0.05
    assert "fleet_epsilon" not in outcome.result.report  # one place only
    # the noise of the sum, in code units, is what four shares give: std z * sensitivity
    count = sum(r * c for _, r, c in fleet.w.layout)
    fixed = FixedPoint(settings.value_bound, settings.max_weight)
    sens = noise.sensitivity(0.05, fixed.step, settings.max_weight, count)
    total = sum(c for c, _ in codes.values())
    weight = sum(w for _, w in codes.values())
    got = np.concatenate(
        [
            (outcome.result.factors[n][1] - fleet.w.base.factors[n][1]).ravel()
            for n, _, _ in fleet.w.layout
        ]
    ).astype(np.float64)
    residual = got * weight / fixed.step - total  # noise in code units (clipping aside)
    assert np.std(residual) == pytest.approx(0.8 * sens, rel=0.25)
    ledger = PrivacyLedger.load(tmp_path / f"state-{AGG}" / "secagg-fleet-privacy.json")
    assert ledger.rounds() == {ROUND_ID}


PHASES = ("keys", "shares", "update", "ack", "reveal")


def drop_at(fleet: Fleet, now: str, phase: str, gone: tuple[str, ...]) -> None:
    """Stop the boxes `gone` if `now` is the phase they drop before."""
    if now == phase:
        for name in gone:
            fleet.stop_box(name)


def run_with_dropouts(fleet: Fleet, phase: str, gone: tuple[str, ...]) -> Aggregated | Failed:
    """One round through the broker in which the boxes `gone` stop (their transport node
    stops, as a box that loses power) just before `phase`: before their keys (the key set
    goes out without them after `key_wait_s`), before sharing (the shares go out without
    theirs after `share_wait_s`), before their update, before their ack, or before their
    reveal."""
    waits = {"key_wait_s": 0.5, "share_wait_s": 0.5}
    fleet.agg.settings = fleet.settings.model_copy(update=waits)
    announcement = fleet.open()
    drop_at(fleet, "keys", phase, gone)
    joining = [n for n in fleet.boxes if not (phase == "keys" and n in gone)]
    for name in joining:
        fleet.boxes[name].join(announcement)
    collector = fleet.agg.session.collector
    wait_for(lambda: len(collector.keys_received) == len(joining), "the boxes' keys")
    drop_at(fleet, "shares", phase, gone)
    fleet.tick_until(Phase.SHARES, "the key set")
    sharing = {n for n in joining if not (phase == "shares" and n in gone)}
    fleet.relay_shares(sharing, "the boxes' shares")
    drop_at(fleet, "update", phase, gone)
    live = [n for n in fleet.boxes if not (phase in ("keys", "shares", "update") and n in gone)]
    for name in live:
        fleet.prepare(name)
    fleet.wait_ticking(lambda: len(fleet.stored) == len(live), "the masked updates")
    drop_at(fleet, "ack", phase, gone)
    first = fleet.agg.finish(fleet.round, fleet.w.base, fleet.stored.values(), time.time())
    if isinstance(first, Failed):
        return first
    acking = [n for n in live if not (phase == "ack" and n in gone)]
    wait_for(lambda: set(collector.acked) == set(acking), "the acks")
    drop_at(fleet, "reveal", phase, gone)
    return fleet.finish(advance_s=601)  # the ack wait is over for boxes that never ack


@pytest.mark.parametrize("count", [1, 3, 4])
@pytest.mark.parametrize("phase", PHASES)
def test_1_3_and_n_minus_t_dropouts_at_every_phase_over_the_broker(
    fleet: Fleet, phase: str, count: int
) -> None:
    """10 boxes, t = 6 (threshold 0.6): up to n - t = 4 may drop at any phase."""
    gone = tuple(f"box{i}" for i in range(2, 2 + count))
    outcome = run_with_dropouts(fleet, phase, gone)
    assert isinstance(outcome, Aggregated), outcome
    in_sum = [n for n in fleet.boxes if phase in ("ack", "reveal") or n not in gone]
    assert outcome.facts.participants == tuple(sorted(in_sum))
    assert outcome.facts.dropped == (tuple(sorted(gone)) if phase == "update" else ())


@pytest.mark.parametrize("phase", ["update", "ack"])
def test_n_minus_t_plus_1_dropouts_fail_cleanly_over_the_broker(fleet: Fleet, phase: str) -> None:
    """5 of 10 with t = 6: after their updates (refused at the commit) or after the commit
    (5 acks leave fewer than t holders: the ack set is never relayed): the round fails with
    `too_many_dropouts`, and no share was revealed."""
    gone = tuple(f"box{i}" for i in range(2, 7))
    outcome = run_with_dropouts(fleet, phase, gone)
    assert isinstance(outcome, Failed) and "too_many_dropouts" in outcome.reason, outcome
    assert all(not b.plus.session.revealed.is_set() for b in fleet.boxes.values())
