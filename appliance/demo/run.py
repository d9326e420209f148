"""Run the demo: broker, aggregator and boxes as separate processes; a table per round."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.summary import RoundSummary, read_rounds, round_table
from appliance.errors import ApplianceError
from appliance.llm.tiny import make_tiny_model

POLL_S = 0.5
STOP_TIMEOUT_S = 60.0

TINY_TRAINING = {
    "rank": 4,
    "alpha": 8.0,
    "learning_rate": 0.01,
    "epochs": 3,
    "base_precision": "same",
    "threads": 1,
    "window_tokens": 256,
}
BUILTIN_TRAINING = {
    "rank": 8,
    "alpha": 16.0,
    "learning_rate": 0.008,
    "max_steps": 4,
    "top_layers": 8,
    "base_precision": "same",
    "threads": 1,
    "window_tokens": 256,
}


def run_demo(
    boxes: int,
    rounds: int,
    *,
    model: str,
    directory: Path | None,
    timeout_s: float,
    quiet: bool = False,
    codec: tuple[tuple[str, object], ...] | None = None,
    training: dict[str, object] | None = None,
    solo_baseline: bool = True,
) -> dict[str, Any]:
    """Run the whole system; returns the JSON summary. Ctrl-C or SIGTERM stop every process.
    `solo_baseline`: boxes also train a local-only adapter each round (twice the training)."""
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and children inherit that.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _interrupt)
    with ExitStack() as stack:
        root = directory or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="appliance-demo-"))
        )
        broker, port = start_broker(root / "broker")
        stack.callback(stop_process, broker)
        model_path, default_training, records = _model_choice(model, root)
        options = FleetOptions(
            boxes,
            rounds,
            model_path,
            port,
            records,
            {**default_training, **(training or {})},
            solo_baseline=solo_baseline,
        )
        if codec is not None:
            options = replace(options, codec=codec)
        layout = lay_out(root, options)
        processes = [spawn_node(layout, node) for node in (AGGREGATOR, *layout.boxes)]
        stack.callback(stop_processes, processes)
        summaries = _follow(layout, processes, rounds, timeout_s, quiet)
        return {
            "model": model,
            "boxes": list(layout.boxes),
            "directory": str(root),
            "rounds": [s.as_json() for s in summaries],
        }


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _model_choice(model: str, root: Path) -> tuple[str, dict[str, object], int]:
    if model == "tiny":
        return str(make_tiny_model(root / "tiny.gguf")), TINY_TRAINING, 120
    return model, BUILTIN_TRAINING, 60


def spawn_node(
    layout: FleetLayout,
    node: str,
    *,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start one daemon; `env` adds variables (a test's failpoints), `prefix` wraps the
    command (`ip netns exec NS` for a partition test). The log is appended to, so a daemon
    restarted by a test keeps the lines of its earlier runs."""
    role = "aggregator" if node == AGGREGATOR else "edge"
    log = (layout.root / node / "daemon.log").open("ab")
    command = [sys.executable, "-m", "appliance.cli", role, "run", "--config"]
    return subprocess.Popen(
        [*prefix, *command, str(layout.config(node))],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _follow(
    layout: FleetLayout,
    processes: list[subprocess.Popen[bytes]],
    rounds: int,
    timeout_s: float,
    quiet: bool,
) -> list[RoundSummary]:
    """Print each round once every box reported on it; stop after the last."""
    deadline = time.monotonic() + timeout_s
    opened: dict[str, float] = {}
    done: dict[str, float] = {}
    printed: set[str] = set()
    started = time.time()
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise ApplianceError(
                    f"a demo process exited with {process.returncode}; logs are in {layout.root}"
                )
        _note_round_times(layout, opened, done, started)
        summaries = read_rounds(layout.audit_log, opened, done)
        for summary in summaries:
            if summary.round_id not in printed and set(summary.boxes) >= set(layout.boxes):
                printed.add(summary.round_id)
                if not quiet:
                    print(round_table(summary, layout.boxes), flush=True)
        if len(printed) >= rounds:
            return [s for s in summaries if s.round_id in printed]
        time.sleep(POLL_S)
    raise ApplianceError(
        f"the demo did not finish {rounds} rounds in {timeout_s:.0f} s; logs are in {layout.root}"
    )


def _note_round_times(
    layout: FleetLayout, opened: dict[str, float], done: dict[str, float], started: float
) -> None:
    if not layout.audit_log.exists():
        return
    now = time.time()
    for line in layout.audit_log.read_text().splitlines():
        record = json.loads(line)
        round_id = record["data"].get("round_id")
        if record["kind"] == "round_opened":
            opened.setdefault(round_id, now if opened else started)
        elif record["kind"] == "round_aggregated":
            done.setdefault(round_id, now)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    stop_processes([process])


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all at once, so their shutdowns (finishing a training step, flushing the
    outbox) overlap instead of adding up; whatever is still running after the timeout is
    killed."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
