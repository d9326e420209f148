"""The one place that imports llama_cpp: ABI and patch checks first, then llama.cpp's log
bridged to ours.

llama-cpp-python's own log callback maps ggml levels with an outdated table and, with
`verbose=False`, swallows the error lines that explain why a model or adapter was refused.
We install our own callback: llama.cpp's lines go to the `appliance.llama` logger, and the
most recent ones are kept so an error can quote llama.cpp's reason.
"""

import collections
import ctypes
import logging
import threading

from appliance.llm.abi import check_llama_cpp_python, check_patched_build

check_llama_cpp_python()

import llama_cpp  # noqa: E402  (after the ABI check, on purpose)
from llama_cpp import llama_cpp as lib  # noqa: E402

check_patched_build(lib._lib)

log = logging.getLogger("appliance.llama")

# enum ggml_log_level in ggml.h of the vendored llama.cpp
_GGML_TO_LOGGING = {
    0: logging.INFO,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
_GGML_LOG_LEVEL_CONT = 5
_RECENT_LINES = 64


class LlamaLogBridge:
    """Joins llama.cpp's log fragments into lines, logs them, and remembers recent warnings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partial = ""
        self._level = logging.INFO
        self._recent: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)
        self._count = 0
        self._callback = llama_cpp.llama_log_callback(self._on_log)

    def install(self) -> None:
        """Make this bridge llama.cpp's (process-wide) log callback."""
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def mark(self) -> int:
        """A position in the stream of warnings, to ask later what was said since."""
        with self._lock:
            return self._count

    def problems_since(self, mark: int) -> list[str]:
        """Warnings and errors llama.cpp logged after `mark` (most recent last)."""
        with self._lock:
            new = self._count - mark
            return list(self._recent)[-new:] if new > 0 else []

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        with self._lock:
            if level != _GGML_LOG_LEVEL_CONT:
                self._level = _GGML_TO_LOGGING.get(level, logging.INFO)
            self._partial += text.decode("utf-8", errors="replace")
            *lines, self._partial = self._partial.split("\n")
            level_now = self._level
            for line in lines:
                if line.strip() and level_now >= logging.WARNING:
                    self._recent.append(line.strip())
                    self._count += 1
        for line in lines:
            if line.strip():
                log.log(level_now, "%s", line.rstrip())


bridge = LlamaLogBridge()
bridge.install()

__all__ = ["bridge", "lib", "llama_cpp"]
