"""One round's local training in a background thread, so the main loop keeps its pace.

The worker process does the training (see `appliance.llm.training`); this thread only waits
for it. The daemon polls `result()`; on SIGTERM it sets `stop`, and the worker finishes its
current step and writes a valid adapter.
"""

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance.data.records import Record
from appliance.errors import ApplianceError
from appliance.federation.messages import RoundAnnouncement
from appliance.llm.training.job import TrainingResult
from appliance.llm.training.supervisor import TrainingRequest, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What the thread ended with: a result, or the error that stopped it."""

    result: TrainingResult | None
    error: str | None


class TrainingRun:
    """Train in a thread for one round's announcement."""

    def __init__(self, announcement: RoundAnnouncement, request: TrainingRequest, records: int):
        self.announcement = announcement
        self.round_id = announcement.round_id
        self.request = request
        self.records = records
        self.stop = threading.Event()
        self.progress: dict[str, object] = {}
        self._paused = threading.Event()  # the supervisor does not count paused time as a stall
        self._outcome: RunOutcome | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"train-{self.round_id}", daemon=True
        )

    def start(self) -> None:
        """Begin training."""
        self._thread.start()

    def _run(self) -> None:
        try:
            result = train(self.request, self.progress.update, self.stop, self._paused)
            self._outcome = RunOutcome(result, None)
        except ApplianceError as exc:
            self._outcome = RunOutcome(None, str(exc))

    def outcome(self) -> RunOutcome | None:
        """None while running."""
        return self._outcome if not self._thread.is_alive() else None

    @property
    def paused(self) -> bool:
        """Whether the worker is frozen by `pause`."""
        return self._paused.is_set()

    def pause(self, why: str) -> None:
        """Freeze the worker process (SIGSTOP): it keeps its state and resumes where it was."""
        pid = self.progress.get("worker_pid")
        if isinstance(pid, int) and not self.paused:
            self._paused.set()
            os.kill(pid, signal.SIGSTOP)
            log.warning("round %s: training paused: %s", self.round_id, why)

    def resume(self) -> None:
        """Let a paused worker go on (SIGCONT)."""
        pid = self.progress.get("worker_pid")
        if isinstance(pid, int) and self.paused:
            os.kill(pid, signal.SIGCONT)
            self._paused.clear()
            log.info("round %s: training resumed", self.round_id)

    def join(self, timeout_s: float) -> None:
        """Wait for the thread (used when stopping)."""
        self._thread.join(timeout_s)


def write_records(path: Path, records: list[Record]) -> Path:
    """Records as JSON Lines, for the trainer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            row = (
                {"text": record.text}
                if record.text is not None
                else {"prompt": record.prompt, "completion": record.completion}
            )
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
