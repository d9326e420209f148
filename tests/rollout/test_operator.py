"""`appliance fleet rollback|pin|unpin`: checked, queued, sent by the running aggregator."""

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node
from appliance.federation.rounds import RoundStore
from appliance.llm.tiny import make_tiny_model
from appliance.rollout.store import RolloutStore, Stage
from tests.rollout.fleet import audit_records, edge_state, stop_all, wait_until


def fleet(layout: FleetLayout, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(layout.config(AGGREGATOR))
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "fleet", *args, "--config", config],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def plant(tmp_path: Path, tiny_f32: Path) -> FleetLayout:
    """Configs, keys and an aggregator state with global adapters v0..v2, v2 rejected."""
    layout = lay_out(tmp_path, FleetOptions(2, 1, str(tiny_f32), 1883, 5, TINY_TRAINING))
    state = layout.state_dir(AGGREGATOR)
    RoundStore(state / "rounds.sqlite").close()
    (state / "globals").mkdir(parents=True)
    for version in (0, 1, 2):
        (state / "globals" / f"global-v{version}.gguf").write_bytes(b"GGUF")
    store = RolloutStore(state / "rollout.sqlite")
    store.begin(2, "r2-x", 1, ("box-1",), ("box-2",), 1.0)
    store.decide(2, Stage.REJECTED, "v2 regressed on canaries: box-1: worse", 2.0)
    store.close()
    return layout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("pin", "--box", "box-9", "--version", "1"), "unknown box 'box-9'; the fleet is box-1"),
        (("pin", "--box", "box-1", "--version", "7"), "global adapter v7 does not exist"),
        (("pin", "--box", "box-1", "--version", "-1"), "version must be 0 or more (got -1)"),
        (
            ("pin", "--box", "box-1", "--version", "2"),
            "global adapter v2 was rejected: v2 regressed on canaries: box-1: worse",
        ),
        (("rollback", "--box", "../x"), "unknown box '../x'"),
        (("unpin", "--box", ""), "unknown box ''"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_queued(
    plant: FleetLayout, args: tuple[str, ...], error: str
) -> None:
    result = fleet(plant, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("appliance: error: ") and error in result.stderr
    store = RolloutStore(plant.state_dir(AGGREGATOR) / "rollout.sqlite", read_only=True)
    assert store.unsent_commands() == []
    store.close()


def test_usage_errors(plant: FleetLayout) -> None:
    assert fleet(plant, "pin", "--box", "box-1", "--version", "one").returncode == 2
    assert fleet(plant, "pin", "--box", "box-1").returncode == 2
    box_config = str(plant.config("box-1"))
    edge = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "fleet", "rollback", "--config", box_config],
        capture_output=True,
        text=True,
        check=False,
    )
    assert edge.returncode == 2 and "reads the aggregator's config" in edge.stderr


def test_no_aggregator_state_yet(tmp_path: Path, tiny_f32: Path) -> None:
    layout = lay_out(tmp_path, FleetOptions(1, 1, str(tiny_f32), 1883, 5, TINY_TRAINING))
    result = fleet(layout, "rollback")
    assert result.returncode == 1 and "has the aggregator run yet?" in result.stderr


def test_requests_are_queued_and_shown(plant: FleetLayout) -> None:
    assert fleet(plant, "pin", "--box", "box-2", "--version", "1").returncode == 0
    result = fleet(plant, "rollback")
    assert result.stdout.startswith("queued #2: rollback for the whole fleet")
    store = RolloutStore(plant.state_dir(AGGREGATOR) / "rollout.sqlite", read_only=True)
    queued = [(c.action, c.nodes, c.version) for c in store.unsent_commands()]
    store.close()
    assert queued == [("pin", ("box-2",), 1), ("rollback", (), None)]


def test_pin_and_fleet_rollback_reach_running_boxes(tmp_path: Path) -> None:
    """Two rounds on two boxes, then: pin box-1 to v1, roll the fleet back from v2 to v1."""
    broker, port = start_broker(tmp_path / "broker")
    model = str(make_tiny_model(tmp_path / "tiny.gguf"))
    layout = lay_out(tmp_path, FleetOptions(2, 2, model, port, 60, TINY_TRAINING))
    processes = [spawn_node(layout, node) for node in (AGGREGATOR, *layout.boxes)]
    try:
        wait_until(
            lambda: all(edge_state(layout, b).get("active_version") == 2 for b in layout.boxes),
            "both boxes on v2",
            processes,
        )
        assert fleet(layout, "pin", "--box", "box-1", "--version", "1").returncode == 0
        wait_until(
            lambda: edge_state(layout, "box-1").get("pinned_version") == 1
            and edge_state(layout, "box-1").get("active_version") == 1,
            "box-1 pinned to v1",
            processes,
        )
        assert edge_state(layout, "box-2")["active_version"] == 2
        assert fleet(layout, "unpin", "--box", "box-1").returncode == 0
        wait_until(
            lambda: edge_state(layout, "box-1").get("pinned_version") is None,
            "box-1 unpinned",
            processes,
        )
        assert fleet(layout, "rollback").returncode == 0
        wait_until(
            lambda: edge_state(layout, "box-2").get("active_version") == 1,
            "box-2 back on v1",
            processes,
        )
        assert edge_state(layout, "box-1")["active_version"] == 1
        outcomes = [c["outcome"] for c in audit_records(layout.audit_log, "operator_command")]
        assert outcomes == [
            "box-1 pinned to v1",
            "box-1 unpinned",
            "fleet rolled back from v2 to v1",
        ]
        status = fleet(layout, "status").stdout
        assert "ROLLOUT v2" in status and "rolled back: operator rolled the fleet back" in status
    finally:
        stop_all([*processes, broker])
