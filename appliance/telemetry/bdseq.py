"""The Sparkplug birth/death sequence number (`bdSeq`), persisted across restarts.

Every MQTT CONNECT carries a Will (the NDEATH) with a `bdSeq` one higher than the previous
CONNECT's, wrapping at 255; the NBIRTH of that session carries the same value, so a host can
tell a stale death from a current one. Restarting the process must not start again at 0, so
the next value lives in a small file, replaced atomically on every connect attempt.
"""

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class BdSeqFile:
    """`next()` hands out 0, 1, ... 255, 0, ... across process restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            value = self._read()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text(f"{(value + 1) % 256}\n")
            os.replace(temporary, self.path)
            return value

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot read bdSeq file %s (%s); starting again at 0", self.path, exc)
            return 0
        if text.isdigit() and int(text) <= 255:
            return int(text)
        log.error("bdSeq file %s holds %r, not 0..255; starting again at 0", self.path, text[:20])
        return 0
