"""Kill the aggregator (SIGKILL) at every named step of a round's life, restart it and check
the invariants of docs/crash-safety.md: the round's result is published exactly once, no
accepted update is lost or counted twice, the audit log tells the truth, no crash loop.

Real broker, real boxes training the tiny model, real processes; the failpoint is armed in
the aggregator's first run only (appliance/system/failpoints.py).
"""

import sqlite3
import time
from pathlib import Path

import pytest

from appliance.aggregator.service import AggregatorService
from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_processes
from appliance.federation.audit import verify
from appliance.federation.rounds import RoundState
from appliance.identity.keys import load_public_key
from appliance.llm.tiny import make_tiny_model
from appliance.rollout.store import RolloutStore, Stage
from appliance.system.failpoints import ENVIRONMENT, POINTS
from tests.rollout.fleet import add_section, audit_records, edge_state, wait_until
from tests.support.fleet_watch import aggregator_service, daemon_log, evaluations, stored_updates

BOXES = 2
ROUNDS = 2
AGGREGATOR_POINTS = [name for name in POINTS if name.startswith("aggregator.")]


def test_every_aggregator_step_of_a_round_has_a_crash_test() -> None:
    """A new failpoint without a case here would be a step nobody checked."""
    assert set(AGGREGATOR_POINTS) == set(CASES)


CASES = {  # failpoint -> staged rollout on (canaries get the adapter first)?
    "aggregator.update_received": False,
    "aggregator.update_stored": False,
    "aggregator.round_closed": False,
    "aggregator.global_saved": False,
    "aggregator.round_audited": False,
    "aggregator.round_recorded": False,
    "aggregator.rollout_started": True,
    "aggregator.global_queued": False,
    "aggregator.global_published": True,
    "aggregator.global_acked": False,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.mark.parametrize("point", sorted(CASES, key=AGGREGATOR_POINTS.index))
def test_aggregator_killed_at_each_step_publishes_the_round_once(
    tmp_path: Path, tiny_model: Path, point: str
) -> None:
    broker, port = start_broker(tmp_path / "broker")
    layout = lay_out(
        tmp_path, FleetOptions(BOXES, ROUNDS, str(tiny_model), port, 24, TINY_TRAINING)
    )
    if CASES[point]:
        add_section(layout, AGGREGATOR, '[rollout]\ncanaries = ["box-1"]\n')
    boxes = [spawn_node(layout, box) for box in layout.boxes]
    aggregator = spawn_node(layout, AGGREGATOR, env={ENVIRONMENT: f"{point}=kill"})
    try:
        assert aggregator.wait(timeout=300) == -9, daemon_log(layout, AGGREGATOR)[-4000:]
        assert f"failpoint {point} fired" in daemon_log(layout, AGGREGATOR)[-4000:]
        aggregator = spawn_node(layout, AGGREGATOR)
        running = [aggregator, *boxes]
        wait_until(lambda: _settled(layout, ROUNDS), f"{ROUNDS} rounds to settle", running)
        _check_rounds(layout)
        assert all(p.poll() is None for p in running), "a daemon exited after the restart"
    finally:
        stop_processes([aggregator, *boxes, broker])


def _settled(layout: FleetLayout, rounds: int) -> bool:
    """Every round aggregated, served and evaluated everywhere, no global left to deliver."""
    versions = range(1, rounds + 1)
    return (
        len(audit_records(layout.audit_log, "round_aggregated")) >= rounds
        and _every_box_serves(layout, rounds)
        and all(_every_box_evaluated(layout, v) for v in versions)
        and _globals_in_outbox(layout) == 0
    )


def _check_rounds(layout: FleetLayout) -> None:
    """Each round aggregated once with every box once, each version served and evaluated
    once per box, consecutive versions, round 2 built on v1, nothing failed."""
    opened = _opened(layout)
    done = audit_records(layout.audit_log, "round_aggregated")
    assert [d["round_id"] for d in done] == [o["round_id"] for o in opened], done
    assert [o["global_version"] for o in opened] == list(range(ROUNDS))
    assert [d["global_version"] for d in done] == list(range(1, ROUNDS + 1))
    assert not audit_records(layout.audit_log, "round_failed")
    for record in done:
        assert sorted(record["participants"]) == list(layout.boxes)
        assert stored_updates(layout, record["round_id"]) == sorted(layout.boxes)
    for box in layout.boxes:
        for version in range(1, ROUNDS + 1):
            count = len(evaluations(layout, box, version))
            assert count == 1, f"{box} evaluated v{version} {count} times"
    globals_dir = layout.state_dir(AGGREGATOR) / "globals"
    names = sorted(p.name for p in globals_dir.glob("global-v*.gguf"))
    assert names == [f"global-v{v}.gguf" for v in range(ROUNDS + 1)]
    rollouts = RolloutStore(layout.state_dir(AGGREGATOR) / "rollout.sqlite", read_only=True)
    try:
        stages = [(r.version, r.stage) for r in rollouts.all()]
    finally:
        rollouts.close()
    assert stages == [(v, Stage.PROMOTED) for v in range(1, ROUNDS + 1)]
    key = load_public_key(layout.root / "trust" / f"{AGGREGATOR}.pub")
    verify(layout.audit_log, key)


def _globals_in_outbox(layout: FleetLayout) -> int:
    db = layout.state_dir(AGGREGATOR) / "transport" / "outbox.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        query = "SELECT COUNT(*) FROM entries WHERE artifact_kind = 'global'"
        return int(conn.execute(query).fetchone()[0])


def _every_box_serves(layout: FleetLayout, version: int) -> bool:
    return all(edge_state(layout, box).get("active_version") == version for box in layout.boxes)


def _every_box_evaluated(layout: FleetLayout, version: int) -> bool:
    return all(evaluations(layout, box, version) for box in layout.boxes)


def _opened(layout: FleetLayout) -> list[dict]:
    return audit_records(layout.audit_log, "round_opened")


def _service(tmp_path: Path, tiny_model: Path) -> AggregatorService:
    """An aggregator in this process (no broker needed for what these tests look at)."""
    return aggregator_service(
        lay_out(tmp_path, FleetOptions(1, 3, str(tiny_model), 1, 10, TINY_TRAINING))
    )


def test_a_round_whose_own_state_is_bad_is_quarantined_and_the_daemon_goes_on(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A closed round that names a global adapter file which is gone cannot be finished:
    it is audited as failed and set aside at the first step, instead of raising at every
    start (a crash loop under systemd's Restart=)."""
    service = _service(tmp_path, tiny_model)
    try:
        service.step(now=time.time())
        round_id = service.store.current().round_id  # type: ignore[union-attr]
        service.store._db.execute(
            "UPDATE rounds SET state = 'closed', global_version = 7 WHERE round_id = ?",
            (round_id,),
        )
        service.step(now=time.time())
        failed = audit_records(service.audit.path, "round_failed")
        assert [f["round_id"] for f in failed] == [round_id]
        assert "quarantined after a restart" in failed[0]["reason"]
        assert service.store.get(round_id).state == RoundState.ABANDONED
        assert service.store.unfinished() == []
        service.step(now=time.time() + 3600)
        assert service.store.current() is not None  # the next round opened
    finally:
        service.stop()


def test_a_corrupt_global_adapter_file_is_moved_aside_at_start(
    tmp_path: Path, tiny_model: Path
) -> None:
    first = _service(tmp_path, tiny_model)
    globals_dir = first.layout.globals_dir
    first.stop()
    (globals_dir / "global-v1.gguf").write_bytes(b"GGUF" + b"\0" * 10)  # torn by hand
    again = aggregator_service(FleetLayout(tmp_path, ("box-1",)))
    try:
        assert again.current.version == 0
        assert not (globals_dir / "global-v1.gguf").exists()
        assert [p.name.split(".corrupt-")[0] for p in globals_dir.glob("*.corrupt-*")] == [
            "global-v1.gguf"
        ]
    finally:
        again.stop()
