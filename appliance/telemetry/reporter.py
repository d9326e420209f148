"""The box's health loop: probes every interval, the training gate, Sparkplug reporting.

The edge daemon embeds a `HealthReporter` and asks it `gate()` before and during training;
`python -m appliance.telemetry.reporter --config edge.toml` runs it alone (health reporting
without the rest of the daemon, and what the tests kill with SIGKILL to see the NDEATH Will).
"""

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.config.roles import EdgeConfig
from appliance.system.daemon import run_part_alone
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
    """`python -m appliance.telemetry.reporter --config FILE`."""
    return run_part_alone(
        argv, "Report this box's health over Sparkplug B.", EdgeConfig, HealthReporter
    )


if __name__ == "__main__":
    raise SystemExit(main())
