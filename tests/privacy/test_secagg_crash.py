"""Kill the daemons (SIGKILL) at every named step of a SecAgg+ round, restart each and check
that the round still completes with every box: aggregated once, nobody dropped, the global
evaluated, the audit log verifying (docs/crash-safety.md, "Secure aggregation").

One round, to keep CI time down: every daemon runs through its `SCHEDULE`, each run armed
with the next point (appliance/system/failpoints.py), the last run with none; the test
restarts a daemon as soon as its point killed it. So the aggregator dies four times, box 1
and box 2 twice, box 3 once, all in the same round, and the kills overlap (a box restarts
while the aggregator is down, and the other way round). Real broker, real daemons training
the tiny model, real signals; `reveal_wait_s` is long, so a round that only passes because
nothing waits (a box's ack or reveal dropped by a restart) fails here.
"""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_processes
from appliance.federation.audit import verify
from appliance.identity.keys import load_public_key
from appliance.llm.tiny import make_tiny_model
from appliance.system.failpoints import ENVIRONMENT, POINTS
from tests.support.fleet_watch import (
    audit_records,
    daemon_log,
    evaluations,
    log_count,
    log_tails,
)

SECAGG_POINTS = [name for name in POINTS if name.startswith("secagg.")]
SCHEDULE = {  # node -> the point each of its runs is killed at, in the order they come
    AGGREGATOR: [
        "secagg.aggregator_keys_relayed",
        "secagg.aggregator_shares_relayed",
        "secagg.aggregator_committed",
        "secagg.aggregator_acks_relayed",
    ],
    "box-1": ["secagg.box_keys_sent", "secagg.box_acked"],
    "box-2": ["secagg.box_shares_sent", "secagg.box_revealed"],
    "box-3": ["secagg.box_masked_sent"],
}
SECURE_SECTION = (
    "[fleet.secure_aggregation]\nenabled = true\nversion = 2\nthreshold = 0.6\n"
    "value_bound = 0.5\nkey_wait_s = 600\nreveal_wait_s = 120\n"
)
WAIT_S = 240.0
POLL_S = 0.1


def test_every_secagg_step_of_a_round_has_a_crash_case() -> None:
    """A new SecAgg+ failpoint nobody kills at would be a step nobody checked."""
    scheduled = [point for points in SCHEDULE.values() for point in points]
    assert sorted(scheduled) == sorted(SECAGG_POINTS)


class Fleet:
    """The daemons of the round, each restarted with its next armed point when one killed it."""

    def __init__(self, layout: FleetLayout) -> None:
        self.layout = layout
        self.left = {node: list(points) for node, points in SCHEDULE.items()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, node: str) -> None:
        """Start `node` armed with its next point (none once its schedule is done)."""
        points = self.left[node]
        env = {ENVIRONMENT: f"{points[0]}=kill"} if points else None
        self.processes[node] = spawn_node(self.layout, node, env=env)

    def restart_the_killed(self) -> None:
        """A daemon that exited must have been killed by its armed point: start it again."""
        for node, process in self.processes.items():
            if process.poll() is None:
                continue
            log = daemon_log(self.layout, node)
            assert self.left[node], f"{node} exited ({process.returncode})\n{log[-4000:]}"
            point = self.left[node].pop(0)
            assert process.returncode == -9, f"{node}: {process.returncode}\n{log[-4000:]}"
            assert f"failpoint {point} fired" in log, f"{node}: {point}\n{log[-4000:]}"
            self.spawn(node)

    def wait(self, condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            self.restart_the_killed()
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + log_tails(
                self.layout
            )
            time.sleep(POLL_S)


def test_a_secagg_plus_round_survives_a_kill_at_every_step(tmp_path: Path) -> None:
    broker, port = start_broker(tmp_path / "broker")
    model = str(make_tiny_model(tmp_path / "tiny.gguf"))
    layout = lay_out(tmp_path, FleetOptions(3, 1, model, port, 120, TINY_TRAINING))
    config = layout.config(AGGREGATOR)
    config.write_text(config.read_text() + SECURE_SECTION)
    fleet = Fleet(layout)
    try:
        for node in SCHEDULE:
            fleet.spawn(node)
        fleet.wait(lambda: _settled(layout), "the round and the evaluations of v1")
        assert fleet.left == {node: [] for node in SCHEDULE}, "points never reached"
        _check(layout)
        assert all(p.poll() is None for p in fleet.processes.values()), log_tails(layout)
    finally:
        stop_processes([*fleet.processes.values(), broker])


def _settled(layout: FleetLayout) -> bool:
    """The round failed (checked after), or it is aggregated and every box evaluated v1."""
    if audit_records(layout, "round_failed"):
        return True
    done = audit_records(layout, "round_aggregated")
    return bool(done) and all(evaluations(layout, box, 1) for box in layout.boxes)


def _check(layout: FleetLayout) -> None:
    """One aggregation of all three boxes, none dropped, v1 evaluated once per box and better
    than the base model, the restarts resumed from the vault, an audit log that verifies."""
    assert audit_records(layout, "round_failed") == []
    (done,) = audit_records(layout, "round_aggregated")
    assert done["participants"] == list(layout.boxes)
    assert done["dropped"] == []
    assert done["secure_aggregation"]["version"] == 2
    for box in layout.boxes:
        (evaluation,) = evaluations(layout, box, 1)
        assert evaluation["nll_global"] < evaluation["nll_base"]
    assert "SecAgg+ state restored" in daemon_log(layout, AGGREGATOR)
    for box in layout.boxes:
        assert "secure-aggregation state restored" in daemon_log(layout, box)
    # killed before training (box 1) or after its masked update was queued (boxes 1 and 3):
    # the round is not trained again (box 2 was killed while training, so it trains twice)
    for box in ("box-1", "box-3"):
        assert log_count(layout, box, "training on") == 1, daemon_log(layout, box)[-4000:]
    key = load_public_key(layout.root / "trust" / f"{AGGREGATOR}.pub")
    verify(layout.audit_log, key)
