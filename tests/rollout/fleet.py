"""A demo plant laid out for rollout tests: real broker, aggregator and boxes as processes."""

import subprocess
import time
from collections.abc import Callable
from typing import Any

from appliance.demo.fleet import AGGREGATOR, FleetLayout
from tests.support.fleet_watch import edge_state
from tests.support.fleet_watch import read_audit as audit_records

__all__ = ["add_section", "audit_records", "edge_state", "set_aggregator", "stop_all", "wait_until"]

WAIT_S = 600.0


def wait_until(
    condition: Callable[[], object], what: str, processes: list[Any], timeout_s: float = WAIT_S
) -> None:
    """Poll until `condition` holds; fail early when a process died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for process in processes:
            assert process.poll() is None, f"a process exited ({process.args}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def set_aggregator(layout: FleetLayout, **replacements: str) -> None:
    """Edit the aggregator's config text (`old=new` pairs given as a dict)."""
    path = layout.config(AGGREGATOR)
    text = path.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def add_section(layout: FleetLayout, node: str, section: str) -> None:
    """Append a TOML section to a node's config."""
    path = layout.config(node)
    path.write_text(path.read_text() + section)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    from appliance.demo.run import stop_process

    for process in processes:
        stop_process(process)
