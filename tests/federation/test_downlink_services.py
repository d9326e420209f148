"""The delta downlink through the services' seams: a real box (tiny model, real llama.cpp,
real state and outbox) handed delta artifacts, and the aggregator's choice of delta or whole
file and its answer to a box's request. No broker: what a service sends stays in its real
SQLite outbox for the test to read (the end-to-end demo test runs the same over Mosquitto).
"""

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.aggregator.downlink import Shipment
from appliance.aggregator.service import AggregatorService
from appliance.config import load_config
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.edge.service import EdgeService
from appliance.errors import ModelError
from appliance.federation.audit import read_events
from appliance.federation.audit_events import GlobalSent
from appliance.federation.downlink import GlobalStep, encode_delta, quantized_step
from appliance.federation.global_adapter import initial_global_adapter, save_global_adapter
from appliance.federation.messages import GlobalRequest, RoundAnnouncement
from appliance.federation.updates import GlobalAdapter
from appliance.identity import NodeKey
from appliance.llm.gguf_file import file_sha256, open_gguf, tensor_shapes
from appliance.llm.tiny import make_tiny_model
from appliance.transport.events import ArtifactArrived, MessageArrived
from tests.federation.plans import training_plan
from tests.transport.forge import manifest_for

BOX = "box-1"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def layout(tmp_path: Path, tiny_model: Path) -> FleetLayout:
    return lay_out(tmp_path, FleetOptions(2, 1, str(tiny_model), 1, 24, TINY_TRAINING))


@pytest.fixture
def box(layout: FleetLayout) -> Iterator[EdgeService]:
    service = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    service.step()  # ingest the spool: held-out records to evaluate on
    yield service
    service.start()  # stop() stops what start() started
    service.stop()


class Aggregation:
    """Global versions made the way the aggregator makes them (int8 steps from v0), saved
    where the aggregator would save them, with their deltas."""

    def __init__(self, layout: FleetLayout, model: Path) -> None:
        self.root = layout.root / "made"
        self.root.mkdir()
        config = load_config(layout.config(AGGREGATOR))
        self.lora = config.training.lora_spec()  # type: ignore[union-attr]
        self.shapes = tensor_shapes(open_gguf(model, ModelError))
        self.versions = [initial_global_adapter(self.shapes, self.lora)]
        self.steps: list[GlobalStep] = []

    def next(self, sha256: str, architecture: str, seed: int) -> Path:
        """Make the next version; the file's path."""
        base = self.versions[-1]
        rng = np.random.default_rng(seed)
        target = {
            name: (a, (b + rng.normal(0, 0.02, b.shape)).astype(np.float32))
            for name, (a, b) in base.factors.items()
        }
        step = quantized_step(base, target, 64)
        new = GlobalAdapter(base.version + 1, step.rebuilt, base.alpha, True)
        self.versions.append(new)
        self.steps.append(step)
        return save_global_adapter(
            self.root / f"global-v{new.version}.gguf", new, architecture, sha256, self.round_id
        )

    @property
    def round_id(self) -> str:
        return f"r{len(self.versions) - 1}-test"

    def delta(self, version: int, sha256: str, to_sha256: str | None = None) -> Path:
        """The delta that makes `version` from the one before, as a file."""
        path = self.root / f"global-v{version}.delta"
        blob = encode_delta(
            self.steps[version - 1],
            model_sha256=sha256,
            round_id=f"r{version}-test",
            to_version=version,
            to_sha256=to_sha256 or file_sha256(self.root / f"global-v{version}.gguf"),
            lora=self.lora,
            block=64,
        )
        path.write_bytes(blob)
        return path


@pytest.fixture
def made(layout: FleetLayout, tiny_model: Path, box: EdgeService) -> Aggregation:
    aggregation = Aggregation(layout, tiny_model)
    info = box.runtime.info
    for seed in (1, 2, 3):
        aggregation.next(info.sha256, info.architecture, seed)
    return aggregation


def delivered(path: Path, version: int) -> ArtifactArrived:
    key = NodeKey(AGGREGATOR, Ed25519PrivateKey.generate())
    meta = {"round_id": f"r{version}-test", "global_version": version}
    manifest = manifest_for(key, path.read_bytes(), kind="global_delta", meta=meta)
    return ArtifactArrived(manifest, path)


def sent(service: EdgeService | AggregatorService, kind: str) -> list[str]:
    """Topics of the queued messages of `kind`."""
    topics = [m.topic for m in service.transport.outbox.messages(set(), 1000)]
    return [t for t in topics if t.endswith(f"/{kind}")]


def test_a_delta_is_rebuilt_into_the_very_file_and_installed_once(
    box: EdgeService, made: Aggregation
) -> None:
    sha = box.runtime.info.sha256
    event = delivered(made.delta(1, sha), 1)
    box.handle(event)
    assert box.state.active_version == 1
    installed = box.layout.global_adapter(1)
    assert file_sha256(installed) == file_sha256(made.root / "global-v1.gguf")
    assert box.state.evaluated_versions == [1] and len(sent(box, "evaluation")) == 1
    box.handle(event)  # replayed: the broker or a restarted aggregator sends it again
    assert box.state.evaluated_versions == [1] and len(sent(box, "evaluation")) == 1
    assert sent(box, "global_request") == []
    assert not list(box.layout.adapters_dir.glob(".global-*"))  # no rebuilt file left


def test_a_box_that_missed_a_version_asks_for_the_whole_file(
    box: EdgeService, made: Aggregation
) -> None:
    sha = box.runtime.info.sha256
    box.handle(delivered(made.delta(1, sha), 1))
    box.handle(delivered(made.delta(3, sha), 3))  # v2 never arrived
    assert box.state.active_version == 1  # still serving what it had
    assert len(sent(box, "global_request")) == 1
    box.handle(delivered(made.delta(3, sha), 3))  # again: asked once is enough
    assert len(sent(box, "global_request")) == 1


@pytest.mark.parametrize("damage", ["flipped byte", "other file announced", "truncated"])
def test_a_corrupted_delta_changes_nothing_and_the_box_asks_for_the_file(
    box: EdgeService, made: Aggregation, damage: str
) -> None:
    sha = box.runtime.info.sha256
    box.handle(delivered(made.delta(1, sha), 1))
    path = made.delta(2, sha, to_sha256="ab" * 32 if damage == "other file announced" else None)
    blob = path.read_bytes()
    if damage == "flipped byte":
        path.write_bytes(blob[:-5] + bytes([blob[-5] ^ 0x40]) + blob[-4:])
    elif damage == "truncated":
        path.write_bytes(blob[:-100])
    box.handle(delivered(path, 2))
    assert box.state.active_version == 1 and box.state.evaluated_versions == [1]
    assert len(sent(box, "global_request")) == 1
    assert not box.layout.global_adapter(2).exists()
    box.handle(delivered(made.delta(2, sha), 2))  # the good one still works afterwards
    assert box.state.active_version == 2


def test_a_delta_that_is_not_one_is_refused_without_a_request(
    box: EdgeService, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.delta"
    garbage.write_bytes(b"GGUF" + bytes(200))
    box.handle(delivered(garbage, 1))
    assert box.state.active_version is None and sent(box, "global_request") == []


@pytest.fixture
def aggregator(layout: FleetLayout) -> Iterator[AggregatorService]:
    service = AggregatorService(load_config(layout.config(AGGREGATOR)))  # type: ignore[arg-type]
    yield service
    service.stop()


def test_the_aggregator_sends_deltas_to_holders_and_files_to_others_and_answers_requests(
    aggregator: AggregatorService, tiny_model: Path
) -> None:
    base = aggregator.current
    rng = np.random.default_rng(4)
    target = {n: (a, b + rng.normal(0, 0.02, b.shape)) for n, (a, b) in base.factors.items()}
    step = aggregator.downlink.define(base, target)
    assert step is not None
    info = aggregator.model_info
    new = GlobalAdapter(1, step.rebuilt, base.alpha, True)
    save_global_adapter(
        aggregator.layout.global_adapter(1), new, info.architecture, info.sha256, "r1-test"
    )
    aggregator.downlink.prepare(step, "r1-test", 1)
    shipment = Shipment("r1-test", 1, ("box-1", "box-2"), frozenset({"box-1"}))
    aggregator.downlink.send(shipment, "round")
    aggregator.downlink.send(shipment, "round")  # repeated after a crash: queued once
    queued = {(a.kind, a.recipients) for a in aggregator.transport.outbox.artifacts()}
    assert queued == {("global_delta", ("box-1",)), ("global", ("box-2",))}
    (event,) = [e for e in read_events(aggregator.layout.audit_log) if isinstance(e, GlobalSent)]
    whole = aggregator.layout.global_adapter(1).stat().st_size
    delta = aggregator.layout.global_delta(1).stat().st_size
    assert event.bytes_down == whole + delta and delta * 5 < whole

    request = GlobalRequest(global_version=1, reason="lost v0")
    aggregator.downlink.answer(request, "box-1", "r1-test")
    aggregator.downlink.answer(request, "box-1", "r1-test")  # replayed: not sent again
    aggregator.downlink.answer(request, "box-3", "r1-test")  # never offered it: refused
    aggregator.downlink.answer(GlobalRequest(global_version=7, reason="?"), "box-1", None)
    requested = [a for a in aggregator.transport.outbox.artifacts() if a.meta["why"] == "requested"]
    assert [(a.kind, a.recipients) for a in requested] == [("global", ("box-1",))]


def test_a_round_whose_base_never_comes_makes_the_box_ask_for_it(box: EdgeService) -> None:
    """The box was away when v3 went out: the next round starts from v3. The delta is often
    still on its way when a round opens, so the box asks only after a sender's re-announce
    time."""
    box.health.run_once()  # the training gate opens after a first probe round
    round_ = RoundAnnouncement(
        round_id="r4-test",
        base_sha256=box.runtime.info.sha256,
        global_version=3,
        global_artifact_sha256="ab" * 32,
        plan=training_plan(),
        participants=(BOX,),
        min_updates=1,
        deadline=time.time() + 600,
    )
    box.handle(MessageArrived("round", round_, AGGREGATOR))
    box.step()
    assert box.training is None and sent(box, "global_request") == []
    box.step(time.monotonic() + box.config.transfer.resend_after_s + 1)
    assert len(sent(box, "global_request")) == 1


def test_a_rebuilt_file_left_by_a_killed_box_is_removed_at_start(
    layout: FleetLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon killed between writing a rebuilt adapter and installing it leaves the file;
    the next start deletes it (the delta is asked for again), and keeps the installed ones."""
    first = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    adapters = first.layout.adapters_dir
    adapters.mkdir(parents=True, exist_ok=True)
    stale = adapters / ".global-v3.rebuilt.gguf"
    stale.write_bytes(b"half a rebuilt file")
    kept = first.layout.global_adapter(2)
    kept.write_bytes(b"an installed global")
    with caplog.at_level(logging.INFO):
        EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    assert not stale.exists() and kept.exists()
    assert "removed 1 unfinished rebuilt global adapter file" in caplog.text
