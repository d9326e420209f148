"""Run `tests.transport.nodes` in a subprocess and follow its JSON events."""

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.transport.waiting import DEFAULT_TIMEOUT_S, wait_for

REPO = Path(__file__).resolve().parents[2]

Event = dict[str, Any]


class NodeProcess:
    """One node process; `start()` again after `kill()` to simulate a crash and restart."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        self.config = config
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config_file = directory / "node.json"
        self.log_file = directory / "node.log"
        self.events: list[Event] = []
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self, **changes: Any) -> "NodeProcess":
        config = {**self.config, **changes}
        self.config_file.write_text(json.dumps(config))
        with self._lock:
            self.events = []
        with self.log_file.open("a") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.transport.nodes", str(self.config_file)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        threading.Thread(target=self._follow, args=(self._process,), daemon=True).start()
        return self

    def _follow(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def find(self, event: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e["event"] == event]

    def latest(self) -> Event:
        """The latest progress event (counters and outbox size); empty before the first."""
        progress = self.find("progress")
        return progress[-1] if progress else {"counters": {}, "outbox": None}

    def counter(self, name: str) -> int:
        return int(self.latest()["counters"].get(name, 0))

    def wait(
        self,
        condition: Callable[["NodeProcess"], object],
        what: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        def check() -> object:
            if self._process is not None and self._process.poll() is not None:
                raise AssertionError(
                    f"node exited ({self._process.returncode}); see {self.log_file}"
                )
            return condition(self)

        wait_for(check, what, timeout_s)

    def kill(self) -> None:
        """SIGKILL, like a power cut for the process: no clean-up runs."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
