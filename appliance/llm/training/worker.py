"""The trainer worker process: `python -m appliance.llm.training.worker` (job JSON on stdin).

A GGML_ASSERT inside llama.cpp aborts the whole process, so training never runs in a process
that has anything else to do. The protocol is JSON lines on the original stdout; the worker
points its own fd 1 at stderr first, so nothing llama.cpp prints can corrupt it. SIGTERM and
SIGINT only set a flag: the run stops at the next step boundary and writes the adapter of the
last completed step.
"""

import json
import logging
import os
import signal
import sys
import traceback
from types import FrameType
from typing import Any, TextIO

from appliance.errors import ApplianceError
from appliance.llm.training.blas_threads import load_openmp_openblas

EXIT_FAILED = 3


class _Protocol:
    """JSON lines to the supervisor on a private copy of the original stdout."""

    def __init__(self) -> None:
        self._out: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def emit(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).warning(
            "%s: stopping at the next step boundary", signal.Signals(signum).name
        )
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def main() -> int:
    """Run the job read from stdin; exit 0 after a `done` message, non-zero otherwise."""
    protocol = _Protocol()
    stop = _StopFlag()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("appliance.llama").setLevel(logging.WARNING)  # keep the tail to the point
    try:
        load_openmp_openblas()  # before llama.cpp is loaded: see blas_threads.py
        # imported here so that an ABI mismatch found at import becomes an `error` message
        from appliance.llm.training.job import TrainingJob  # noqa: PLC0415
        from appliance.llm.training.loop import run_job  # noqa: PLC0415

        job = TrainingJob.from_json(sys.stdin.read())
        nice = int(job.settings.get("nice", 0))
        os.nice(max(0, nice - os.nice(0)))
        result = run_job(job, protocol.emit, stop)
    except ApplianceError as exc:
        protocol.emit({"event": "error", "message": str(exc)})
        return EXIT_FAILED
    except Exception as exc:
        traceback.print_exc()
        protocol.emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return EXIT_FAILED
    protocol.emit({"event": "done", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
