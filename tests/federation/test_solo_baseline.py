"""The local-only ("solo") baseline on a real box: trained after each round's federated run
from the box's own earlier solo adapter (never the global), scored on its held-out data and
the plant set, reported in the round's evaluation and never sent; its evaluation waits for
it, and goes out without solo numbers when the run fails, the box stops, or the daemon
restarts while it trains.

Real tiny model, real llama.cpp trainer, real SQLite state and outbox, no broker: the box is
driven through `handle()` and `step()` with the events the transport hands it (as in
test_evaluation_set.py)."""

import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.config import load_config
from appliance.config.rollout import EvaluationSettings
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.edge.service import EdgeService
from appliance.edge.solo import SoloRun
from appliance.edge.state import EdgeState
from appliance.errors import ConfigError, ModelError
from appliance.federation.global_adapter import initial_global_adapter, save_global_adapter
from appliance.federation.messages import Evaluation, RoundAnnouncement
from appliance.federation.updates import GlobalAdapter
from appliance.identity import NodeKey, TrustStore
from appliance.llm.gguf_file import file_sha256, open_gguf, tensor_shapes
from appliance.llm.tiny import make_tiny_model
from appliance.transport.events import ArtifactArrived, MessageArrived
from appliance.transport.wire import open_envelope
from tests.federation.plans import training_plan
from tests.federation.test_evaluation_set import delivered
from tests.transport.forge import manifest_for

BOX = "box-1"
TRAINING_S = 300


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def layout(tmp_path: Path, tiny_model: Path) -> FleetLayout:
    options = FleetOptions(1, 1, str(tiny_model), 1, 24, TINY_TRAINING, solo_baseline=True)
    return lay_out(tmp_path, options)


def new_box(layout: FleetLayout) -> EdgeService:
    return EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]


def ready_box(layout: FleetLayout, tmp_path: Path) -> EdgeService:
    """A box that holds the plant set and its spool's records, its training gate open."""
    service = new_box(layout)
    service.handle(delivered(tmp_path, layout.plant_set.read_bytes()))  # the plant set
    service.step()  # ingest the spool
    service.health.run_once()  # the training gate opens after a first probe round
    return service


@pytest.fixture
def box(layout: FleetLayout, tmp_path: Path) -> Iterator[EdgeService]:
    service = ready_box(layout, tmp_path)
    yield service
    service.start()  # stop() stops what start() started
    service.stop()


def announce(box: EdgeService, round_id: str, version: int = 0) -> None:
    """The aggregator opens `round_id` from global `version` (its file on the box)."""
    path = box.layout.global_adapter(version)
    round_ = RoundAnnouncement(
        round_id=round_id,
        base_sha256=box.runtime.info.sha256,
        global_version=version,
        global_artifact_sha256=file_sha256(path) if version else None,
        plan=training_plan(),
        participants=(BOX,),
        min_updates=1,
        deadline=time.time() + 600,
    )
    box.handle(MessageArrived("round", round_, AGGREGATOR))


def until(box: EdgeService, done: object, what: str) -> None:
    """Step the box until `done()` holds."""
    deadline = time.monotonic() + TRAINING_S
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.2)
        box.step()


def federated_round(box: EdgeService, round_id: str) -> SoloRun:
    """Train `round_id` (from global v0) to its update; the solo run that starts after it."""
    announce(box, round_id)
    assert box.training is not None and not isinstance(box.training, SoloRun)
    until(box, lambda: isinstance(box.training, SoloRun), f"round {round_id}'s training")
    solo = box.training
    assert isinstance(solo, SoloRun) and solo.round_id == round_id
    return solo


def global_of(box: EdgeService, round_id: str, version: int, tmp_path: Path) -> ArtifactArrived:
    """Global `version` in the plan's LoRA shape (B no longer zero), as delivered."""
    model = Path(box.runtime.info.path)
    start = initial_global_adapter(
        tensor_shapes(open_gguf(model, ModelError)), training_plan().lora
    )
    rng = np.random.default_rng(version)
    factors = {
        name: (a, rng.normal(0, 0.05, b.shape).astype(np.float32))
        for name, (a, b) in start.factors.items()
    }
    adapter = GlobalAdapter(version, factors, start.alpha, True)
    info = box.runtime.info
    path = save_global_adapter(
        tmp_path / f"v{version}.gguf", adapter, info.architecture, info.sha256, round_id
    )
    key = NodeKey(AGGREGATOR, Ed25519PrivateKey.generate())
    meta: dict[str, str | int | float | bool] = {"round_id": round_id, "global_version": version}
    manifest = manifest_for(key, path.read_bytes(), recipients=(BOX,), kind="global", meta=meta)
    return ArtifactArrived(manifest, path)


def evaluations(box: EdgeService, layout: FleetLayout) -> list[Evaluation]:
    """The evaluations in the box's outbox, as the aggregator would open them."""
    trust = TrustStore(layout.root / "trust")
    return [
        open_envelope(m.payload, BOX, trust, Evaluation)
        for m in box.transport.outbox.messages(set(), 100)
        if m.topic.endswith("/evaluation")
    ]


def updates(box: EdgeService, round_id: str) -> int:
    return sum(
        a.kind == "update" and a.meta.get("round_id") == round_id
        for a in box.transport.outbox.artifacts()
    )


SOLO_FIELDS = ("nll_solo", "task_solo", "plant_nll_solo", "plant_task_solo")


def test_the_solo_baseline_is_reported_beside_the_global_and_continues_its_own_adapter(
    box: EdgeService, layout: FleetLayout, tmp_path: Path
) -> None:
    solo = federated_round(box, "r1-solo")
    assert solo.request.start_adapter is None  # nothing earlier: from scratch (version 0)
    assert solo.request.out == box.layout.round_dir("r1-solo") / "solo.gguf"
    assert box.status().startswith("training solo baseline r1-solo;")
    assert EdgeState.load(box.layout.state_file).solo_round == "r1-solo"
    announce(box, "r2-solo")  # busy: the box joins no new round while the solo run trains
    assert box.training is solo

    box.handle(global_of(box, "r1-solo", 1, tmp_path))  # the global arrives meanwhile
    assert evaluations(box, layout) == []  # held until the solo numbers exist
    saved = EdgeState.load(box.layout.state_file)
    assert [e["round_id"] for e in saved.held_evaluations] == ["r1-solo"]
    assert saved.unsent_evaluations == [] and box.state.active_version == 1

    until(box, lambda: box.training is None, "the solo run")
    (evaluation,) = evaluations(box, layout)
    saved = EdgeState.load(box.layout.state_file)
    assert saved.held_evaluations == [] and saved.solo_round is None
    assert evaluation.nll_solo == saved.solo_nll["r1-solo"]
    assert evaluation.task_solo == saved.solo_task.get("r1-solo")
    plant_sha = hashlib.sha256(layout.plant_set.read_bytes()).hexdigest()
    assert evaluation.plant_set_sha256 == plant_sha == saved.plant_solo_sha256["r1-solo"]
    assert evaluation.plant_nll_solo == saved.plant_solo_nll["r1-solo"]
    assert evaluation.plant_task_solo is not None and 0 <= evaluation.plant_task_solo <= 1
    numbers = (evaluation.nll_solo, evaluation.plant_nll_solo, evaluation.plant_nll_base)
    assert all(n is not None and 0 < n < 20 for n in numbers)
    # trained on plant language, alone: it predicts the plant's questions better than base
    assert evaluation.plant_nll_solo is not None and evaluation.plant_nll_base is not None
    assert evaluation.plant_nll_solo < evaluation.plant_nll_base
    assert file_sha256(box.layout.solo_adapter) == file_sha256(solo.request.out)
    assert updates(box, "r1-solo") == 1  # the round's one update; the solo one is never sent
    assert len(box.transport.outbox.artifacts()) == 1

    # round 2 starts from global v1; its solo run from round 1's solo adapter, not the global
    announce(box, "r2-solo", 1)
    assert box.training is not None and not isinstance(box.training, SoloRun)
    assert box.training.request.start_adapter == box.layout.global_adapter(1)
    until(box, lambda: isinstance(box.training, SoloRun), "round r2-solo's training")
    solo_2 = box.training
    assert isinstance(solo_2, SoloRun) and solo_2.round_id == "r2-solo"
    assert solo_2.request.start_adapter == box.layout.solo_adapter
    assert updates(box, "r2-solo") == 1


def test_a_failed_solo_run_sends_the_held_evaluation_without_solo_numbers(
    box: EdgeService, layout: FleetLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.edge")
    solo = federated_round(box, "r1-fail")
    box.handle(global_of(box, "r1-fail", 1, tmp_path))
    assert evaluations(box, layout) == [] and len(box.state.held_evaluations) == 1
    until(box, lambda: isinstance(solo.progress.get("worker_pid"), int), "the solo worker")
    os.kill(solo.progress["worker_pid"], signal.SIGKILL)  # type: ignore[arg-type]  # the OOM killer
    until(box, lambda: box.training is None, "the solo run's end")
    (evaluation,) = evaluations(box, layout)
    assert all(getattr(evaluation, name) is None for name in SOLO_FIELDS)
    assert evaluation.nll_local is not None and evaluation.plant_nll_global is not None
    saved = EdgeState.load(box.layout.state_file)
    assert saved.held_evaluations == [] and saved.solo_round is None
    assert "r1-fail" not in saved.solo_nll and not box.layout.solo_adapter.exists()
    assert "the solo baseline failed" in caplog.text
    assert "without solo numbers: its solo baseline failed" in caplog.text
    assert updates(box, "r1-fail") == 1


def test_a_restart_while_the_solo_run_trains_sends_the_held_evaluation(
    layout: FleetLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.edge")
    killed = ready_box(layout, tmp_path)
    solo = federated_round(killed, "r1-crash")
    killed.handle(global_of(killed, "r1-crash", 1, tmp_path))
    assert len(killed.state.held_evaluations) == 1
    until(killed, lambda: isinstance(solo.progress.get("worker_pid"), int), "the solo worker")
    # the daemon is killed here (no stop, no flush): the next one starts on what it left
    restarted = new_box(layout)
    try:
        solo.join(timeout_s=60)  # the restart reaped the orphaned worker
        assert restarted.state.held_evaluations == [] and restarted.state.solo_round is None
        restarted.start()
        (evaluation,) = evaluations(restarted, layout)
        assert evaluation.round_id == "r1-crash" and evaluation.global_version == 1
        assert all(getattr(evaluation, name) is None for name in SOLO_FIELDS)
        assert "the daemon restarted while its solo baseline trained" in caplog.text
        assert updates(restarted, "r1-crash") == 1
        assert "r1-crash" in restarted.state.done_rounds  # not trained again
    finally:
        restarted.stop()
        killed.spool.close()
        killed.runtime.close()


def test_stopping_while_the_solo_run_trains_keeps_the_held_evaluation(
    layout: FleetLayout, tmp_path: Path
) -> None:
    box = ready_box(layout, tmp_path)
    federated_round(box, "r1-stop")
    box.handle(global_of(box, "r1-stop", 1, tmp_path))
    assert evaluations(box, layout) == []
    box.start()
    box.stop()  # no broker: the flush keeps what it could not send on disk
    again = new_box(layout)
    try:
        (evaluation,) = evaluations(again, layout)
        assert evaluation.round_id == "r1-stop" and evaluation.global_version == 1
        assert all(getattr(evaluation, name) is None for name in SOLO_FIELDS)
        assert again.state.held_evaluations == [] and again.state.solo_round is None
        assert updates(again, "r1-stop") == 1
    finally:
        again.start()
        again.stop()


def test_solo_baseline_is_off_unless_asked_and_must_be_a_bool(
    tmp_path: Path, tiny_model: Path
) -> None:
    assert EvaluationSettings().solo_baseline is False
    assert EvaluationSettings(solo_baseline=True).solo_baseline is True
    with pytest.raises(ValueError, match="solo_baseline"):
        EvaluationSettings(solo_baseline="sometimes")  # type: ignore[arg-type]
    config = tmp_path / "edge.toml"
    options = FleetOptions(1, 1, str(tiny_model), 1, 4, TINY_TRAINING)
    layout = lay_out(tmp_path / "plant", options)
    text = layout.config(BOX).read_text()
    assert "[evaluation]" not in text  # the default fleet trains no solo baseline
    config.write_text(text + "[evaluation]\nsolo_baseline = 2\n")
    with pytest.raises(ConfigError, match="solo_baseline"):
        load_config(config)
    config.write_text(text + "[evaluation]\nsolo_base_line = true\n")
    with pytest.raises(ConfigError, match="solo_base_line"):
        load_config(config)
    config.write_text(text + "[evaluation]\nsolo_baseline = true\n")
    assert load_config(config).evaluation.solo_baseline is True  # type: ignore[union-attr]
