"""A demo plant laid out for rollout tests: real broker, aggregator and boxes as processes."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.demo.fleet import AGGREGATOR, FleetLayout

WAIT_S = 600.0


def audit_records(path: Path, kind: str) -> list[dict[str, Any]]:
    """The `data` of every audit line of one kind."""
    if not path.exists():
        return []
    return [
        r["data"]
        for line in path.read_text().splitlines()
        if line and (r := json.loads(line))["kind"] == kind
    ]


def wait_until(condition: Callable[[], object], what: str, processes: list[Any]) -> None:
    """Poll until `condition` holds; fail early when a process died."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for process in processes:
            assert process.poll() is None, f"a process exited ({process.args}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def edge_state(layout: FleetLayout, box: str) -> dict[str, Any]:
    """A box's durable state (what it serves, what it keeps for rollback)."""
    path = layout.state_dir(box) / "edge-state.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
