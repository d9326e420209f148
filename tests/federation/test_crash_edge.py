"""Kill a box (SIGKILL) at every named step of its part of a round, restart it and check the
invariants of docs/crash-safety.md: its update is counted exactly once, nothing is lost, it
ends serving the newest global and evaluates it once, no crash loop.

Real broker, real aggregator, real boxes training the tiny model, real processes; the
failpoint is armed in box-1's first run only (appliance/system/failpoints.py).
"""

import json
import logging
import os
import signal
import sqlite3
import sys
from dataclasses import fields
from pathlib import Path
from subprocess import PIPE, Popen

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.config import load_config
from appliance.config.training import TrainingSettings
from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_processes
from appliance.edge.service import EdgeService
from appliance.edge.state import _CHECKS, EdgeState
from appliance.edge.training_run import PID_FILE, reap_orphaned_workers, write_pid_file
from appliance.errors import ModelError
from appliance.federation.audit import verify
from appliance.federation.global_adapter import initial_global_adapter, save_global_adapter
from appliance.federation.updates import GlobalAdapter
from appliance.identity import NodeKey
from appliance.identity.keys import load_public_key
from appliance.llm.gguf_file import open_gguf, read_model_info, tensor_shapes
from appliance.llm.tiny import make_tiny_model
from appliance.llm.training.supervisor import WORKER_MODULE
from appliance.system.failpoints import ENVIRONMENT, POINTS
from appliance.transport.events import ArtifactArrived
from tests.rollout.fleet import audit_records, edge_state, wait_until
from tests.support.fleet_watch import daemon_log
from tests.transport.forge import manifest_for

BOXES = 2
RECORDS = 24
KILLED = "box-1"
EDGE_POINTS = [name for name in POINTS if name.startswith("edge.")]
WAIT_S = 120.0


def test_every_edge_step_of_a_round_has_a_crash_test() -> None:
    """A new edge failpoint without a case here would be a step nobody checked."""
    assert EDGE_POINTS == [
        "edge.training",
        "edge.update_queued",
        "edge.global_installing",
        "edge.global_activated",
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.mark.parametrize("point", EDGE_POINTS)
def test_box_killed_at_each_step_is_counted_once_and_serves_the_new_global(
    tmp_path: Path, tiny_model: Path, point: str
) -> None:
    """Before the global exists (training, update queued) box-2 starts only once the
    restarted box-1 is done with the round, so the round is still open when a box that
    trained again would send its second update; after that, both boxes run from the start."""
    broker, port = start_broker(tmp_path / "broker")
    options = FleetOptions(BOXES, 1, str(tiny_model), port, RECORDS, TINY_TRAINING)
    layout = lay_out(tmp_path, options)
    armed = f"{ENVIRONMENT}={point}=kill"
    late = point in ("edge.training", "edge.update_queued")
    killed = spawn_node(layout, KILLED, env={ENVIRONMENT: armed.partition("=")[2]})
    others = [spawn_node(layout, AGGREGATOR)]
    if not late:
        others += [spawn_node(layout, box) for box in layout.boxes[1:]]
    restarted = None
    try:
        assert killed.wait(timeout=180) == -9, daemon_log(layout, KILLED)[-4000:]
        assert f"failpoint {point} fired" in daemon_log(layout, KILLED)[-4000:]
        restarted = spawn_node(layout, KILLED)
        running = [restarted, *others]
        wait_until(
            lambda: not _workers_started_with(armed),
            "the killed run's trainer to go",
            running,
            WAIT_S,
        )
        if late:
            wait_until(
                lambda: _round_done_by(layout, KILLED), "box-1 to finish the round", running, WAIT_S
            )
            others += [spawn_node(layout, box) for box in layout.boxes[1:]]
            running = [restarted, *others]
        wait_until(lambda: _settled(layout), "the round to settle on every box", running, WAIT_S)
        _check(layout)
        assert all(p.poll() is None for p in running), "a daemon exited after the restart"
    finally:
        stop_processes([p for p in (restarted, *others, killed, broker) if p is not None])


def _round_done_by(layout: FleetLayout, box: str) -> bool:
    """The box's update is in the aggregator's store and its state says the round is done."""
    opened = audit_records(layout.audit_log, "round_opened")
    if not opened:
        return False
    round_id = opened[0]["round_id"]
    done = round_id in edge_state(layout, box).get("done_rounds", [])
    return done and box in _stored_updates(layout, round_id)


def _settled(layout: FleetLayout) -> bool:
    """Round 1 aggregated, v1 served and evaluated by every box."""
    return bool(audit_records(layout.audit_log, "round_aggregated")) and all(
        edge_state(layout, box).get("active_version") == 1 and _evaluations(layout, box)
        for box in layout.boxes
    )


def _check(layout: FleetLayout) -> None:
    """One aggregation naming every box once, box-1's update stored once and never refused,
    v1 evaluated once per box, an audit log that verifies."""
    done = audit_records(layout.audit_log, "round_aggregated")
    assert len(done) == 1, done
    assert sorted(done[0]["participants"]) == list(layout.boxes)
    assert _stored_updates(layout, done[0]["round_id"]) == sorted(layout.boxes)
    refused = [r for r in audit_records(layout.audit_log, "update_rejected")]
    assert [r for r in refused if r["node_id"] == KILLED] == [], refused
    for box in layout.boxes:
        count = len(_evaluations(layout, box))
        assert count == 1, f"{box} evaluated v1 {count} times"
        state = edge_state(layout, box)
        assert state["done_rounds"] == [done[0]["round_id"]], state
        assert state["sending"] == [] and state["unsent_evaluations"] == [], state
        assert _evaluations(layout, box)[0]["nll_local"] is not None  # it kept its result
    key = load_public_key(layout.root / "trust" / f"{AGGREGATOR}.pub")
    verify(layout.audit_log, key)


def _evaluations(layout: FleetLayout, box: str) -> list[dict]:
    return [
        e
        for e in audit_records(layout.audit_log, "evaluation")
        if e["node_id"] == box and e["global_version"] == 1
    ]


def _stored_updates(layout: FleetLayout, round_id: str) -> list[str]:
    db = layout.state_dir(AGGREGATOR) / "rounds.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT node_id FROM updates WHERE round_id = ?", (round_id,))
        return sorted(node for (node,) in rows)


def _workers_started_with(marker: str) -> list[int]:
    """Trainer workers whose environment carries `marker` (the killed run's failpoint: a
    worker inherits its daemon's environment, so this finds the killed box's trainer only)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            status = (proc / "status").read_text()
        except OSError:  # gone meanwhile, or not ours
            continue
        ours = WORKER_MODULE.encode() in cmdline and marker.encode() in environ.split(b"\0")
        if ours and "\nState:\tZ" not in status:  # a zombie is dead, only not reaped yet
            found.append(int(proc.name))
    return found


# -- bad state of the box's own: moved aside, never a crash loop (fast, in-process) ----------


@pytest.mark.parametrize(
    "content",
    [
        b'{"active_version": 1, "done_ro',  # torn by a power cut on a filesystem without
        b"",  # ordered data, or truncated by hand
        b"\xff\xfe\x00garbage",
        b"[]",
        b'{"done_rounds": "r1"}',
        b'{"active_version": true}',
        b'{"local_nll": {"r1": "low"}}',
    ],
)
def test_a_bad_state_file_is_moved_aside_and_the_box_starts_fresh(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "edge-state.json"
    path.write_bytes(content)
    assert EdgeState.load(path) == EdgeState()
    assert not path.exists()
    aside = list(tmp_path.glob("edge-state.json.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [content]  # kept for a post-mortem
    assert f"moved aside to {aside[0].name}" in caplog.text


def test_a_state_file_from_a_newer_version_keeps_what_this_one_knows(tmp_path: Path) -> None:
    path = tmp_path / "edge-state.json"
    EdgeState(active_version=3, done_rounds=["r1", "r.2"], sending=["r.2"]).save(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "invented_later": {"x": 1}}))
    state = EdgeState.load(path)
    assert (state.active_version, state.done_rounds, state.sending) == (3, ["r1", "r.2"], ["r.2"])
    assert path.exists()


def test_every_state_field_is_checked_when_loaded() -> None:
    assert set(_CHECKS) == {f.name for f in fields(EdgeState)}


def test_a_worker_left_behind_frozen_is_killed_at_the_next_start(tmp_path: Path) -> None:
    """A SIGKILLed daemon's trainer is in its own session and, frozen by a pause (SIGSTOP),
    never notices its parent is gone: the restarted daemon kills it before training."""
    worker = Popen([sys.executable, "-m", WORKER_MODULE], stdin=PIPE, stdout=PIPE, stderr=PIPE)
    bystander = Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        (tmp_path / "r1").mkdir()
        (tmp_path / "r2").mkdir()
        (tmp_path / "r3").mkdir()
        write_pid_file(tmp_path / "r1" / PID_FILE, worker.pid)
        write_pid_file(tmp_path / "r2" / PID_FILE, bystander.pid)  # not a trainer: spared
        (tmp_path / "r3" / PID_FILE).write_text("12")  # torn: ignored
        assert reap_orphaned_workers(tmp_path) == [worker.pid]
        assert worker.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
        assert list(tmp_path.glob(f"*/{PID_FILE}")) == []
    finally:
        for process in (worker, bystander):
            process.kill()
            process.communicate()


def test_the_box_sets_its_bad_files_aside_and_takes_a_global_once(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable active adapter and residual are moved aside at start (the box serves
    the base model instead of failing at every start); the same v1 delivered twice (the
    aggregator sent it again after a crash) for a round id with a dot installs and
    evaluates v1 once: the second is a no-op, and both are acknowledged."""
    caplog.set_level(logging.INFO, logger="appliance.edge")
    layout = lay_out(tmp_path, FleetOptions(1, 1, str(tiny_model), 1, RECORDS, TINY_TRAINING))
    state_dir = layout.state_dir(KILLED)
    adapters = state_dir / "adapters"
    adapters.mkdir(parents=True)
    (adapters / "global-v1.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    EdgeState(active_version=1, active_path=str(adapters / "global-v1.gguf")).save(
        state_dir / "edge-state.json"
    )
    (state_dir / "residual.npz").write_bytes(b"PK\x03\x04 torn")
    global_v1 = _global_adapter(tiny_model, tmp_path / "v1.gguf")
    service = EdgeService(load_config(layout.config(KILLED)))  # type: ignore[arg-type]
    try:
        assert service.state.active_version is None and service.active is None
        assert [p.name.split(".corrupt-")[0] for p in adapters.glob("*.corrupt-*")] == [
            "global-v1.gguf"
        ]
        assert len(list(state_dir.glob("residual.npz.corrupt-*"))) == 1
        service.step()  # takes in the spool's records: held-out data to evaluate on
        aggregator = NodeKey(AGGREGATOR, Ed25519PrivateKey.generate())
        for _ in range(2):  # the aggregator sent v1 twice
            manifest = manifest_for(
                aggregator,
                global_v1.read_bytes(),
                recipients=(KILLED,),
                kind="global",
                meta={"round_id": "r1.x-2"},
            )
            service.handle(ArtifactArrived(manifest, global_v1))
        assert service.state.active_version == 1
        assert service.state.evaluated_versions == [1]
        evaluations = [
            m for m in service.transport.outbox.messages(set(), 100) if "evaluation" in m.topic
        ]
        assert len(evaluations) == 1
        assert "r1.x-2" in evaluations[0].payload.decode()
        assert "v1 delivered again: already installed and evaluated; ignored" in caplog.text
    finally:
        service.start()  # stop() stops what start() started
        service.stop()


def _global_adapter(model: Path, path: Path) -> Path:
    """Version 1 of the fleet's adapter for `model` (B no longer zero), with the default
    training settings the box's config uses."""
    settings = TrainingSettings(**TINY_TRAINING)
    start = initial_global_adapter(
        tensor_shapes(open_gguf(model, ModelError)),
        settings.lora_spec().model_copy(update={"freeze_a": False}),
    )
    rng = np.random.default_rng(1)
    factors = {
        name: (a, rng.normal(0, 0.01, b.shape).astype(np.float32))
        for name, (a, b) in start.factors.items()
    }
    info = read_model_info(model, ModelError)
    adapter = GlobalAdapter(1, factors, start.alpha, False)
    return save_global_adapter(path, adapter, info.architecture, info.sha256, "r1.x-2")
