"""The box's health loop: probes every interval, the training gate, Sparkplug reporting.

The edge daemon embeds a `HealthReporter` and asks it `gate()` before and during training;
`python -m appliance.telemetry.reporter --config edge.toml` runs it alone (health reporting
without the rest of the daemon, and what the tests kill with SIGKILL to see the NDEATH Will).
"""

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from appliance.config.loading import load_config
from appliance.config.roles import EdgeConfig
from appliance.errors import ConfigError
from appliance.system.logs import setup_logging
from appliance.telemetry.edge_node import EdgeNode, EdgeNodeOptions
from appliance.telemetry.gate import GateDecision, TrainingGate
from appliance.telemetry.metrics import DaemonState, daemon_metrics, probe_metrics
from appliance.telemetry.runner import FIRMWARE_SCRIPTS, ProbeResult, ProbeRunner

log = logging.getLogger(__name__)


class HealthReporter:
    """Runs the probes on a thread; publishes; keeps the latest gate decision."""

    def __init__(
        self, config: EdgeConfig, daemon_state: Callable[[], DaemonState] = DaemonState
    ) -> None:
        health = config.health
        self.runner = ProbeRunner(
            scripts_dir=health.scripts_dir or FIRMWARE_SCRIPTS,
            root=health.root_dir,
            state_dir=_inside(config.paths.state_dir, health.root_dir),
            timeout_s=health.probe_timeout_s,
        )
        self.interval_s = health.probe_interval_s
        self.probes = list(health.probes)
        self.training_gate = TrainingGate(health.gate)
        self.daemon_state = daemon_state
        self.node = EdgeNode(
            config.mqtt,
            config.identity.plant_id,
            config.identity.node_id,
            config.paths.state_dir,
            options=EdgeNodeOptions(
                primary_host_id=health.primary_host_id,
                deadbands=health.deadbands,
                report_unchanged_after_s=health.report_unchanged_after_s,
                max_history_messages=health.max_history_messages,
                max_payload_bytes=health.max_payload_bytes,
            ),
        )
        self._decision = GateDecision(False, ("no probe has run yet",))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-probes", daemon=True)

    def gate(self) -> GateDecision:
        """May the box train now? (From the last probe round.)"""
        return self._decision

    def start(self) -> None:
        self.node.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.runner.timeout_s + 5)
        self.node.stop()

    def run_once(self) -> dict[str, ProbeResult]:
        """One probe round: update the gate and hand every metric to the edge node."""
        results = self.runner.run_all(self.probes)
        self._decision = self.training_gate.check(results)
        if not self._decision.allowed:
            log.info("training gate closed: %s", self._decision.summary())
        state = self.daemon_state()
        if state.training_gate != self._decision.summary():
            state = DaemonState(**{**vars(state), "training_gate": self._decision.summary()})
        self.node.update({**probe_metrics(results), **daemon_metrics(state)})
        return results

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("health probe round failed; trying again next interval")
            self._stop.wait(self.interval_s)


def _inside(path: Path, root: Path) -> str:
    """`path` as the probes see it under `root` (`/` on a box; a recorded tree in tests)."""
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report this box's health over Sparkplug B.")
    parser.add_argument("--config", required=True, help="edge config file (TOML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging("debug" if args.verbose else "info")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not isinstance(config, EdgeConfig):
        print(f'appliance: error: {args.config}: role: must be "edge"', file=sys.stderr)
        return 2
    reporter = HealthReporter(config)
    stopped = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    reporter.start()
    stopped.wait()
    reporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
