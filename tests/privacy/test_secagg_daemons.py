"""Secure aggregation in the real daemons: `appliance aggregator run` and three `appliance
edge run` processes on the tiny model, through Mosquitto.

Version 1 (pairwise masks): box 3 publishes its mask key, then is frozen (SIGSTOP) while it
trains; the round closes with boxes 1 and 2, their seeds with box 3 are revealed, and the sum
is unmasked and published. Thawed, box 3's update is refused as late (by box 3 itself once it
sees the commit, or by the aggregator).

Version 2 (SecAgg+): box 3 is frozen right after it sent its masked update, so it never acks
or reveals, and the aggregator is killed (SIGKILL) right after it committed and started
again: the round completes with all three updates (box 3's self mask rebuilt from the other
two boxes' shares), which version 1 could not do."""

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.federation.audit import verify
from appliance.llm.tiny import make_tiny_model

WAIT_S = 240.0


def records(path: Path, kind: str) -> list[dict]:
    if not path.exists():
        return []
    return [
        r["data"]
        for line in path.read_text().splitlines()
        if (r := json.loads(line))["kind"] == kind
    ]


def log_of(layout: FleetLayout, node: str) -> str:
    path = layout.root / node / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_secure_round_in_the_daemons_recovers_a_frozen_box(tmp_path: Path) -> None:
    broker, port = start_broker(tmp_path / "broker")
    model = str(make_tiny_model(tmp_path / "tiny.gguf"))
    layout = lay_out(tmp_path, FleetOptions(3, 1, model, port, 120, TINY_TRAINING))
    config = layout.config(AGGREGATOR)
    text = config.read_text().replace("min_updates = 3", "min_updates = 2")
    config.write_text(
        text + "[fleet.secure_aggregation]\nenabled = true\nversion = 1\nvalue_bound = 0.5\n"
        "key_wait_s = 600\n"
    )
    processes = [spawn_node(layout, AGGREGATOR)]
    try:
        processes += [spawn_node(layout, box) for box in layout.boxes]
        box3 = processes[3]
        # box 3 publishes its key before it starts training; freeze it while it trains
        wait_until(lambda: "training on" in log_of(layout, "box-3"), "box 3 to join")
        os.killpg(box3.pid, signal.SIGSTOP)
        wait_until(
            lambda: (
                records(layout.audit_log, "round_aggregated")
                or records(layout.audit_log, "round_failed")
            ),
            "the secure round to finish",
        )
        assert records(layout.audit_log, "round_failed") == []
        (done,) = records(layout.audit_log, "round_aggregated")
        assert done["participants"] == ["box-1", "box-2"]
        assert done["dropped"] == ["box-3"]
        assert done["strategy"]["secure_aggregation"] == 1
        assert done["secure_aggregation"]["value_bound"] == 0.5
        agg_log = log_of(layout, AGGREGATOR)
        assert "key set of 3 boxes relayed" in agg_log
        assert "committed 2 reporting, 1 dropped" in agg_log
        # boxes 1 and 2 take the global adapter and evaluate it
        wait_until(
            lambda: (
                {e["node_id"] for e in records(layout.audit_log, "evaluation")}
                >= {"box-1", "box-2"}
            ),
            "evaluations of the global adapter",
        )
        for evaluation in records(layout.audit_log, "evaluation"):
            assert evaluation["global_version"] == 1
            # the unmasked mean is a real adapter: it beats the base model on held-out data
            assert evaluation["nll_global"] < evaluation["nll_base"]
        # thawed, box 3's update never counts: refused as late by box 3 or by the aggregator
        os.killpg(box3.pid, signal.SIGCONT)

        def late_refused() -> bool:
            refused_here = "masked update not sent: late" in log_of(layout, "box-3")
            refused_there = any(
                r["node_id"] == "box-3" and r["reason"].startswith("late")
                for r in records(layout.audit_log, "update_rejected")
            )
            return refused_here or refused_there

        wait_until(late_refused, "box 3's late update to be refused")
        assert len(records(layout.audit_log, "round_aggregated")) == 1
        verify(layout.audit_log)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)
            stop_process(process)
        stop_process(broker)


def test_a_secagg_plus_round_survives_a_silent_box_and_an_aggregator_restart(
    tmp_path: Path,
) -> None:
    broker, port = start_broker(tmp_path / "broker")
    model = str(make_tiny_model(tmp_path / "tiny.gguf"))
    layout = lay_out(tmp_path, FleetOptions(3, 1, model, port, 120, TINY_TRAINING))
    config = layout.config(AGGREGATOR)
    config.write_text(
        config.read_text() + "[fleet.secure_aggregation]\nenabled = true\nversion = 2\n"
        "threshold = 0.6\nvalue_bound = 0.5\nkey_wait_s = 600\nreveal_wait_s = 20\n"
    )
    processes = [spawn_node(layout, AGGREGATOR)]
    try:
        processes += [spawn_node(layout, box) for box in layout.boxes]
        box3 = processes[3]
        wait_until(lambda: "masked update sent" in log_of(layout, "box-3"), "box 3's update")
        os.killpg(box3.pid, signal.SIGSTOP)  # reported, then silent: no ack, no reveal
        wait_until(lambda: "committed 3 reporting" in log_of(layout, AGGREGATOR), "the commit")
        os.killpg(processes[0].pid, signal.SIGKILL)
        processes[0].wait()
        processes[0] = spawn_node(layout, AGGREGATOR)
        wait_until(
            lambda: (
                records(layout.audit_log, "round_aggregated")
                or records(layout.audit_log, "round_failed")
            ),
            "the secure round to finish",
        )
        assert records(layout.audit_log, "round_failed") == []
        (done,) = records(layout.audit_log, "round_aggregated")
        assert done["participants"] == ["box-1", "box-2", "box-3"]
        assert done["dropped"] == []
        assert done["secure_aggregation"]["version"] == 2
        agg_log = log_of(layout, AGGREGATOR)
        assert "SecAgg+ state restored" in agg_log
        assert "2 acks relayed" in agg_log
        wait_until(
            lambda: (
                {e["node_id"] for e in records(layout.audit_log, "evaluation")}
                >= {"box-1", "box-2"}
            ),
            "evaluations of the global adapter",
        )
        for evaluation in records(layout.audit_log, "evaluation"):
            assert evaluation["global_version"] == 1
            assert evaluation["nll_global"] < evaluation["nll_base"]
        verify(layout.audit_log)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)
            stop_process(process)
        stop_process(broker)
