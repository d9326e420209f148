"""One round's local training in a background thread, so the main loop keeps its pace.

The worker process does the training (see `appliance.llm.training`); this thread only waits
for it. The daemon polls `result()`; on SIGTERM it sets `stop`, and the worker finishes its
current step and writes a valid adapter.

The worker runs in its own session, so a SIGKILL of the daemon does not reach it: it dies
only at its next progress line (a broken pipe), which can be a model load or a long step
later, and never while it is frozen by `pause` (SIGSTOP). Its pid is therefore kept in the
round's folder while it runs, and the restarted daemon kills a worker left behind
(`reap_orphaned_workers`) before it trains again: two trainers would not fit in memory.
"""

import contextlib
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
from appliance.llm.training.supervisor import WORKER_MODULE, TrainingRequest, train
from appliance.system.failpoints import failpoint

log = logging.getLogger(__name__)

PID_FILE = "worker.pid"


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
        self._pid_file = request.out.parent / PID_FILE

    def start(self) -> None:
        """Begin training."""
        self._thread.start()

    def _run(self) -> None:
        try:
            result = train(self.request, self._on_progress, self.stop, self._paused)
            self._outcome = RunOutcome(result, None)
        except ApplianceError as exc:
            self._outcome = RunOutcome(None, str(exc))
        finally:
            self._pid_file.unlink(missing_ok=True)  # the supervisor has waited for the worker

    def _on_progress(self, event: dict[str, object]) -> None:
        """The supervisor's callback: the first report means the worker really runs, so its
        pid is written down for a restart after a crash (and the crash test's point)."""
        first = not self.progress
        self.progress.update(event)
        pid = event.get("worker_pid")
        if first and isinstance(pid, int):
            write_pid_file(self._pid_file, pid)
            failpoint("edge.training")

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


def write_pid_file(path: Path, pid: int) -> None:
    """`pid start-time`: the start time tells the worker from a later process with its pid."""
    path.write_text(f"{pid} {_start_time(pid)}\n")


def reap_orphaned_workers(rounds_dir: Path) -> list[int]:
    """Kill the trainer workers an earlier run of the daemon left behind; their pids."""
    reaped = []
    for pid_file in sorted(rounds_dir.glob(f"*/{PID_FILE}")):
        pid = _orphan(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a frozen (SIGSTOP) worker dies of it too
                log.warning(
                    "killed trainer worker %d left behind by the previous run (%s)",
                    pid,
                    pid_file.parent.name,
                )
                reaped.append(pid)
        pid_file.unlink(missing_ok=True)
    return reaped


def _orphan(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is still the trainer worker it names."""
    try:
        pid_text, start = pid_file.read_text().split()
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):  # gone, or a torn file: nothing to kill
        return None
    if WORKER_MODULE.encode() not in cmdline or _start_time(pid) != start:
        return None
    return pid


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (clock ticks since boot); '?' where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rpartition(")")[2].split()[19]
