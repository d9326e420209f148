"""Unit tests of the two services through their seams: typed inbound events handed to
`handle()`, and the round-protocol interface. No broker: the transports are real but never
connect, so what a service sends stays in its (real, SQLite) outbox for the test to read.

The protocols here are new ones written in the test: that they run through unchanged
services is the point of the round-protocol interface (appliance/federation/protocol.py).
"""

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.aggregator.service import AggregatorService
from appliance.config import load_config
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.edge.service import EdgeService
from appliance.federation.audit_events import AggregationFacts
from appliance.federation.messages import Command, Evaluation, RoundAnnouncement
from appliance.federation.protocol import (
    Aggregated,
    AggregatorProtocol,
    BoxProtocol,
    LocalUpdate,
    Outcome,
    Prepared,
    RefusedUpdateError,
    Waiting,
)
from appliance.federation.rounds import Round, RoundState, StoredUpdate
from appliance.federation.strategies import Aggregate
from appliance.federation.updates import GlobalAdapter
from appliance.identity import NodeKey
from appliance.llm.tiny import make_tiny_model
from appliance.transport.events import ArtifactArrived, MessageArrived
from appliance.transport.wire import Manifest
from tests.federation.plans import training_plan
from tests.support.fleet_watch import read_audit
from tests.transport.forge import manifest_for

BOX = "box-1"


class TallyRounds(AggregatorProtocol):
    """A protocol the services have never seen: updates must start with b"tally", the
    round needs one extra step after it closes (phase `tallying`), and the result is the
    base adapter unchanged."""

    update_kind = "tally"

    def __init__(self) -> None:
        self.steps_after_close = 0

    def admit(self, blob: bytes, sender: str, round_: Round, base: GlobalAdapter) -> int:
        if not blob.startswith(b"tally"):
            raise RefusedUpdateError(f"not a tally from {sender}")
        return len(blob)

    def finish(
        self, round_: Round, base: GlobalAdapter, updates: Iterable[StoredUpdate], now: float
    ) -> Outcome:
        self.steps_after_close += 1
        stored = list(updates)
        if self.steps_after_close == 1:
            return Waiting("tallying", f"{len(stored)} tallies")
        facts = AggregationFacts(
            participants=tuple(u.node_id for u in stored),
            update_bytes={u.node_id: len(u.blob) for u in stored},
            update_sha256={u.node_id: u.sha256 for u in stored},
            strategy={"strategy": "tally", "weight": sum(u.sample_count for u in stored)},
            codec=round_.plan.codec,
        )
        return Aggregated(Aggregate(base.factors, {"strategy": "tally"}), facts)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def layout(tmp_path: Path, tiny_model: Path) -> FleetLayout:
    return lay_out(tmp_path, FleetOptions(1, 1, str(tiny_model), 1, 24, TINY_TRAINING))


@pytest.fixture
def aggregator(layout: FleetLayout) -> Iterator[AggregatorService]:
    service = AggregatorService(load_config(layout.config(AGGREGATOR)))  # type: ignore[arg-type]
    yield service
    service.stop()


def arrived(sender: str, blob_file: Path, kind: str, meta: dict[str, str]) -> ArtifactArrived:
    """An artifact as the transport hands it over (verified, from `sender`)."""
    key = NodeKey(sender, Ed25519PrivateKey.generate())
    manifest: Manifest = manifest_for(key, blob_file.read_bytes(), kind=kind, meta=meta)
    return ArtifactArrived(manifest, blob_file)


def outbox_topics(service: AggregatorService | EdgeService) -> list[str]:
    return [m.topic for m in service.transport.outbox.messages(set(), 1000)]


def test_a_new_round_protocol_runs_through_the_unchanged_aggregator(
    aggregator: AggregatorService, layout: FleetLayout, tmp_path: Path
) -> None:
    protocol = TallyRounds()
    aggregator.protocol = protocol
    aggregator.step()
    round_ = aggregator.store.current()
    assert round_ is not None
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.write_bytes(b"not one")
    good.write_bytes(b"tally: 7 bearings")
    meta = {"round_id": round_.round_id}
    aggregator.handle(arrived(BOX, bad, "tally", meta))
    aggregator.handle(arrived(BOX, good, "update", meta))  # not this protocol's kind
    assert aggregator.store.count(round_.round_id) == 0
    aggregator.handle(arrived(BOX, good, "tally", meta))
    assert aggregator.store.count(round_.round_id) == 1
    assert [u.sample_count for u in aggregator.store.updates(round_.round_id)] == [17]

    aggregator.step()  # closes (min_updates reached); the protocol asks for another step
    closed = aggregator.store.get(round_.round_id)
    assert (closed.state, closed.phase) == (RoundState.CLOSED, "tallying")
    assert aggregator.status() == f"round {round_.round_id}: tallying, global adapter v0"
    assert aggregator.store.current() is None and not read_audit(
        layout.audit_log, "round_aggregated"
    )

    aggregator.step()
    assert aggregator.store.get(round_.round_id).state == RoundState.AGGREGATED
    (done,) = read_audit(layout.audit_log, "round_aggregated")
    assert done["strategy"] == {"strategy": "tally", "weight": 17}
    assert done["participants"] == [BOX] and done["global_version"] == 1
    (refused,) = read_audit(layout.audit_log, "update_rejected")
    assert refused["reason"] == f"not a tally from {BOX}"
    assert aggregator.transport.outbox.holds_artifact(  # every box can rebuild v0: a delta
        "global_delta", {"round_id": round_.round_id, "global_version": 1}
    )
    assert aggregator.transport.client.counters.get("rejected.unexpected_artifact") == 1


def test_an_evaluation_signed_by_another_box_is_counted_not_audited(
    aggregator: AggregatorService, layout: FleetLayout
) -> None:
    evaluation = Evaluation(
        round_id="r1-abc",
        global_version=1,
        node_id=BOX,
        heldout_tokens=10,
        nll_base=3.0,
        nll_global=2.9,
        activated=True,
    )
    aggregator.handle(MessageArrived("evaluation", evaluation, "box-2"))
    assert read_audit(layout.audit_log, "evaluation") == []
    assert aggregator.transport.client.counters.get("rejected.claims_other_node") == 1
    aggregator.handle(MessageArrived("evaluation", evaluation, BOX))
    assert [e["node_id"] for e in read_audit(layout.audit_log, "evaluation")] == [BOX]


class RecordingBox(BoxProtocol):
    """A box-side protocol the edge service has never seen: sends a fixed blob and
    credits what it was given (so error feedback keeps nothing)."""

    def __init__(self) -> None:
        self.joined: list[str] = []
        self.prepared: list[LocalUpdate] = []

    def join(self, round_: RoundAnnouncement) -> None:
        self.joined.append(round_.round_id)

    def prepare(self, round_: RoundAnnouncement, local: LocalUpdate) -> Prepared:
        self.prepared.append(local)
        return Prepared(local.deltas, b"recorded " + round_.round_id.encode())

    def tick(self) -> None:
        """Nothing waits."""


def test_a_new_box_protocol_runs_through_the_unchanged_edge_service(
    layout: FleetLayout,
) -> None:
    service = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    box = RecordingBox()
    service.protocols["plain"] = box
    try:
        service.step()  # ingest the spool
        service.health.run_once()  # the training gate opens after a first probe round
        round_ = RoundAnnouncement(
            round_id="r1-seam",
            base_sha256=service.runtime.info.sha256,
            global_version=0,
            plan=training_plan(),
            participants=(BOX,),
            min_updates=1,
            deadline=time.time() + 600,
        )
        service.handle(MessageArrived("round", round_, AGGREGATOR))
        assert box.joined == ["r1-seam"]
        deadline = time.monotonic() + 300
        while service.training is not None:
            assert time.monotonic() < deadline, "training did not finish"
            time.sleep(0.2)
            service.step()
        (local,) = box.prepared
        assert local.sample_count > 0 and local.base.version == 0
        assert set(local.deltas) == {"blk.0.attn_q.weight", "blk.1.attn_q.weight"}
        assert "r1-seam" in service.state.done_rounds and service.state.sending == []
        assert service.transport.outbox.holds_artifact("update", {"round_id": "r1-seam"})
        service.handle(MessageArrived("round", round_, AGGREGATOR))  # re-announced
        assert box.joined == ["r1-seam"]  # done with it: not trained again
        other = Command(action="pin", nodes=("box-2",), global_version=3)
        service.handle(MessageArrived("command", other, AGGREGATOR))
        assert service.state.pinned_version is None  # a command for another box
    finally:
        service.start()  # stop() stops what start() started
        service.stop()


def test_an_operator_command_delivered_again_is_not_carried_out_twice(
    layout: FleetLayout,
) -> None:
    """Messages are acknowledged to the broker only once handled, so one may come twice
    (a reconnect in between): a pin delivered again after the operator unpinned must not
    pin the box again."""
    service = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    pin = Command(action="pin", nodes=(BOX,), global_version=5, command_id=7)
    unpin = Command(action="unpin", nodes=(BOX,), command_id=8)
    try:
        service.handle(MessageArrived("command", pin, AGGREGATOR))
        assert service.state.pinned_version == 5
        service.handle(MessageArrived("command", unpin, AGGREGATOR))
        service.handle(MessageArrived("command", pin, AGGREGATOR))  # delivered again
        assert service.state.pinned_version is None
        assert service.state.obeyed_commands == [7, 8]
    finally:
        service.start()
        service.stop()
