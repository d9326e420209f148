"""The edge service's hook: one object it starts, stops and tells about adapters.

Kept apart so the edge service needs only a few lines: `EdgeServing(config, lambda:
self.training)` in its constructor, `start()`/`stop()` with its own, `follow(version, path)`
after each step (the adapter it serves: a swap reaches the API within the step that made
it), and `gate(reason or None)` from its health gate (the API votes "inference" itself), so
training resumes only when neither the gate nor the API wants it paused.
"""

import logging
from collections.abc import Callable
from pathlib import Path

from appliance.config import EdgeConfig
from appliance.serve.priority import Pausable, TrainingPauses
from appliance.serve.server import InferenceServer

log = logging.getLogger(__name__)

HEALTH = "health"


class EdgeServing:
    """The inference API of a box (a no-op when `serve.enabled` is false)."""

    def __init__(self, config: EdgeConfig, current_run: Callable[[], Pausable | None]) -> None:
        self.pauses = TrainingPauses(current_run)
        self.server = (
            InferenceServer(config.serve, config.model, self.pauses)
            if config.serve.enabled
            else None
        )

    def start(self) -> None:
        """Start serving (when enabled)."""
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        """Stop serving; the API's pause vote is withdrawn."""
        if self.server is not None:
            self.server.stop()

    def follow(self, version: int | None, path: str | Path | None) -> None:
        """The global adapter the box now serves (None: the base model); called after every
        step, so activation, rollback, pin and restore all reach the API by one road."""
        if self.server is not None:
            self.server.use_adapter(version, None if path is None else Path(path))

    def gate(self, reason: str | None) -> None:
        """The health gate's verdict: a reason to pause training, or None to allow it."""
        self.pauses.vote(HEALTH, reason)
