"""Logging set-up shared by every command and daemon.

Human output of a command goes to stdout; the log goes to stderr (journald under systemd).
"""

import logging
import sys

_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "warning", llama_level: str = "error") -> None:
    """Send log records at `level` and above to stderr; llama.cpp's at `llama_level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("appliance.llama").setLevel(llama_level.upper())
