"""Inference before training: the training worker is frozen while the API is busy.

Two parties may want training paused: the health gate (hot, full disk, memory pressure) and
the inference API. `TrainingPauses` collects their votes and freezes the worker (SIGSTOP
through `TrainingRun.pause`) while any vote stands; it continues (SIGCONT) only when none
does, so neither can resume training the other still wants paused. `Activity` turns the
API's requests into one vote: cast when a request arrives, withdrawn once no request has
been running or waiting for `resume_after_s`.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

INFERENCE = "inference"


class Pausable(Protocol):
    """A training run (see `appliance.edge.training_run.TrainingRun`)."""

    def pause(self, why: str) -> None: ...
    def resume(self) -> None: ...


class TrainingPauses:
    """Votes to pause the current training run; it runs only while there are none."""

    def __init__(self, current: Callable[[], Pausable | None]) -> None:
        self._current = current
        self._votes: dict[str, str] = {}
        self._lock = threading.Lock()

    def vote(self, who: str, why: str | None) -> None:
        """`why` pauses on behalf of `who`; None withdraws its vote. Applies at once."""
        with self._lock:
            if why is None:
                self._votes.pop(who, None)
            else:
                self._votes[who] = why
            self._apply()

    def reasons(self) -> dict[str, str]:
        """Standing votes."""
        with self._lock:
            return dict(self._votes)

    def _apply(self) -> None:
        run = self._current()
        if run is None:
            return
        if self._votes:
            run.pause("; ".join(self._votes.values()))
        else:
            run.resume()


class Activity:
    """Counts requests in the API and reports busy/idle (idle only after a quiet spell)."""

    def __init__(self, on_change: Callable[[bool], None], resume_after_s: float) -> None:
        self._on_change = on_change
        self._resume_after_s = resume_after_s
        self._active = 0
        self._busy = False
        self._last_end = 0.0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, name="serve-idle", daemon=True)

    @property
    def busy(self) -> bool:
        """True from the first request until the API has been idle long enough."""
        return self._busy

    def start(self) -> None:
        """Start watching for the end of a busy spell."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; a standing busy state is reported as ended."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._busy:
            self._busy = False
            self._on_change(False)

    def begin(self) -> None:
        """A request arrived."""
        with self._cond:
            self._active += 1
            if not self._busy:
                self._busy = True
                self._on_change(True)
            self._cond.notify_all()

    def end(self) -> None:
        """A request is over (served, refused or abandoned)."""
        with self._cond:
            self._active -= 1
            self._last_end = time.monotonic()
            self._cond.notify_all()

    def _watch(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._busy or self._active:
                    self._cond.wait()
                    continue
                quiet = time.monotonic() - self._last_end
                if quiet < self._resume_after_s:
                    self._cond.wait(self._resume_after_s - quiet)
                    continue
                self._busy = False
                self._on_change(False)
