"""Publish the plant evaluation set to the boxes: each content to each participant once.

The set is read and checked when a round opens (so an edited file reaches the boxes at the
next round, and a box that joined the fleet since gets the set the others have), then sent
as a signed artifact of kind `evaluation_set` to the participants that have not had this
content, with its sha256 and record count in the manifest's meta. Who had which content is
in the audit log (`evaluation_set_published` lines): it is read once at the first round and
kept in memory after. A crash between queueing and the audit line sends the set again at the
next round; a box takes a content it holds as a no-op.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.config.evaluation_set import EvaluationSetSettings
from appliance.data.evaluation_set import EvaluationSet, EvaluationSetError, check_evaluation_set
from appliance.federation.audit import AuditError, AuditLog, read_events
from appliance.federation.audit_events import EvaluationSetPublished
from appliance.transport.sender import Sender

log = logging.getLogger(__name__)

ARTIFACT_KIND = "evaluation_set"


class EvaluationSetPublisher:
    """Sends the configured set to the participants that lack its current content."""

    def __init__(
        self, settings: EvaluationSetSettings | None, sender: Sender, audit: AuditLog
    ) -> None:
        self.settings = settings
        self.sender = sender
        self.audit = audit
        self._had: dict[str, set[str]] | None = None  # sha256 -> boxes sent it (lazy)
        self._refused: str | None = None  # the last refusal logged (not repeated per round)

    def publish(self, participants: Sequence[str]) -> None:
        """Queue the set for the participants without its content; a file that cannot be
        read or checked is logged (once per reason) and nothing is sent."""
        if self.settings is None or not participants:
            return
        content = self._read(self.settings)
        if content is None:
            return
        had = self._recipients().setdefault(content.sha256, set())
        missing = [box for box in participants if box not in had]
        if not missing:
            return
        meta: dict[str, str | int | float | bool] = {
            "sha256": content.sha256,
            "records": len(content.records),
            "published_at": time.time(),
        }
        if self.sender.send_artifact(ARTIFACT_KIND, content.data, missing, meta=meta) is None:
            log.error("evaluation set not queued: the outbox is full; tried again next round")
            return
        self.audit.append_event(
            EvaluationSetPublished(
                sha256=content.sha256,
                records=len(content.records),
                bytes=len(content.data),
                recipients=tuple(missing),
            )
        )
        had.update(missing)
        log.info(
            "evaluation set %s (%d records) sent to %s",
            content.sha256[:12],
            len(content.records),
            ", ".join(missing),
        )

    def _read(self, settings: EvaluationSetSettings) -> EvaluationSet | None:
        """The checked file, or None (logged once per distinct reason)."""
        try:
            content = check_evaluation_set(
                _read_at_most(settings.path, settings.max_bytes),
                max_records=settings.max_records,
                max_bytes=settings.max_bytes,
            )
        except (OSError, EvaluationSetError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if reason != self._refused:
                log.error("evaluation set %s not sent: %s", settings.path, reason)
                self._refused = reason
            return None
        self._refused = None
        return content

    def _recipients(self) -> dict[str, set[str]]:
        """Who had which content, from the audit log (read once)."""
        if self._had is None:
            self._had = {}
            try:
                for event in read_events(self.audit.path) if self.audit.path.exists() else ():
                    if isinstance(event, EvaluationSetPublished):
                        self._had.setdefault(event.sha256, set()).update(event.recipients)
            except AuditError as exc:  # sending again is harmless: a box ignores a copy
                log.warning("cannot tell who has the evaluation set (%s); sending to all", exc)
        return self._had


def _read_at_most(path: Path, limit: int) -> bytes:
    """The file's bytes, reading one byte past `limit` at most (the check then refuses it)."""
    with path.open("rb") as handle:
        return handle.read(limit + 1)
