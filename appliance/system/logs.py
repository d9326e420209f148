"""Logging set-up shared by every command and daemon.

Human output of a command goes to stdout; the log goes to stderr, or, under systemd with
systemd-python installed, straight to journald with structured fields (`system.journal`).
"""

import logging
import os
import sys

from appliance.system.journal import journal_handler, stderr_is_journal

_FORMAT = "%(levelname)s %(name)s: %(message)s"
_TIMED_FORMAT = "%(asctime)s " + _FORMAT


def setup_logging(level: str = "warning", llama_level: str = "error") -> None:
    """Send log records at `level` and above to stderr; llama.cpp's at `llama_level`."""
    native = journal_handler() if stderr_is_journal() else None
    handler = native or logging.StreamHandler(sys.stderr)
    # journald stamps every line itself; a terminal or a log file needs the time
    under_journal = native is not None or bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(logging.Formatter(_FORMAT if under_journal else _TIMED_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("appliance.llama").setLevel(llama_level.upper())
