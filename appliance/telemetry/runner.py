"""Run the probe executables with timeouts and validate what they print.

Each probe is a separate process so that a hung sysfs read, an NVML crash or a kernel quirk
cannot stall or kill the daemon. A probe that times out, exits non-zero, prints too much or
prints something its model rejects gives a `ProbeResult` with `error` set (and a log line);
the other probes' results are unaffected.
"""

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from appliance.telemetry.readings import READING, AnyReading

log = logging.getLogger(__name__)

PROBES = ("thermal", "cpu", "memory", "disks", "power", "gpu", "inventory")
MAX_OUTPUT_BYTES = 1 << 20
FIRMWARE_SCRIPTS = Path(__file__).resolve().parents[2] / "firmware_scripts"
"""The probes shipped next to the package (the .deb installs them side by side)."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe run: a validated reading, or why there is none."""

    name: str
    reading: AnyReading | None
    error: str | None = None


@dataclass(frozen=True)
class ProbeRunner:
    """Runs probes from `scripts_dir` against `root` (`/` on a box)."""

    scripts_dir: Path = FIRMWARE_SCRIPTS
    root: Path = Path("/")
    state_dir: str = "/var/lib/appliance"
    timeout_s: float = 10.0
    python: str = sys.executable

    def run_all(self, names: Sequence[str] = PROBES) -> dict[str, ProbeResult]:
        """Run `names` concurrently; every name gets a result, good or bad."""
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            results = list(pool.map(self.run, names))
        return {result.name: result for result in results}

    def run(self, name: str) -> ProbeResult:
        result = self._run(name)
        if result.error is not None:
            log.warning("probe %s failed: %s", name, result.error)
        return result

    def _run(self, name: str) -> ProbeResult:
        script = self.scripts_dir / f"probe-{name}"
        if not script.is_file():
            return ProbeResult(name, None, f"no probe script {script}")
        args = [self.python, str(script), "--root", str(self.root)]
        if name == "disks":
            args += ["--state-dir", self.state_dir]
        try:
            process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # so a timeout kills the probe's children too
            )
        except OSError as exc:
            return ProbeResult(name, None, f"cannot start {script}: {exc.strerror}")
        try:
            stdout, stderr = process.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ProbeResult(name, None, f"timed out after {self.timeout_s} s (killed)")
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no stderr"]
            return ProbeResult(name, None, f"exited with status {process.returncode}: {tail[0]}")
        return self.parse(name, stdout)

    @staticmethod
    def parse(name: str, stdout: bytes) -> ProbeResult:
        """Validate one probe's output; garbage becomes an error naming the first problem."""
        if len(stdout) > MAX_OUTPUT_BYTES:
            return ProbeResult(
                name, None, f"printed {len(stdout)} bytes (limit {MAX_OUTPUT_BYTES})"
            )
        try:
            reading = READING.validate_json(stdout)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "output"
            return ProbeResult(
                name,
                None,
                f"invalid output ({exc.error_count()} problems): {where}: {first['msg']}",
            )
        if reading.probe != name:
            return ProbeResult(name, None, f"printed a {reading.probe!r} reading")
        return ProbeResult(name, reading)
