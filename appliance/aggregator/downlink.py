"""Sending global adapters down: a delta to boxes known to hold the round's base, else the file.

Who holds the base: every box can rebuild version 0 (A from the seed, B zero), and a box whose
update the round store holds trained on the round's base. Anyone else gets the whole file, and
a box whose delta did not fit (it lost a version, or the rebuilt file differed) asks for the
whole file with a `global_request` message. Every send is audited (`global_sent`), which is
where the demo and the report read the bytes down.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.config.downlink import DownlinkSettings
from appliance.config.layouts import AggregatorLayout
from appliance.config.lora import LoraSpec
from appliance.federation.audit import AuditLog, read_events
from appliance.federation.audit_events import GlobalSent
from appliance.federation.downlink import GlobalStep, can_step, encode_delta, quantized_step
from appliance.federation.messages import GlobalRequest
from appliance.federation.updates import Factors, GlobalAdapter
from appliance.llm.gguf_file import file_sha256
from appliance.system.files import write_durably
from appliance.transport.node import TransportNode

log = logging.getLogger(__name__)

REQUEST_REPEAT_S = 60.0
"""A box asking for the same whole file again within this time is not sent it again."""


@dataclass(frozen=True)
class Shipment:
    """One global adapter on its way: which round made it, from which base, to whom."""

    round_id: str
    version: int
    recipients: Sequence[str]
    holders: frozenset[str]
    """Boxes known to hold the base version."""


class GlobalDownlink:
    """Makes the deltas, picks delta or file per box, and answers boxes' requests."""

    def __init__(
        self,
        settings: DownlinkSettings,
        layout: AggregatorLayout,
        transport: TransportNode,
        audit: AuditLog,
        *,
        lora: LoraSpec,
        model_sha256: str,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.transport = transport
        self.audit = audit
        self.lora = lora
        self.model_sha256 = model_sha256
        self._answered: dict[tuple[str, int], float] = {}

    def define(self, base: GlobalAdapter, result: Factors) -> GlobalStep | None:
        """In delta mode, the int8 step from `base` whose `rebuilt` factors are the new
        global (exactly what boxes rebuild, so nothing drifts); None when only whole files
        can go (full mode, A trained, other tensors)."""
        if self.settings.mode != "delta" or not can_step(base, result):
            return None
        return quantized_step(base, result, self.settings.block)

    def prepare(self, step: GlobalStep, round_id: str, version: int) -> None:
        """Write the delta of global adapter `version` (its file already saved)."""
        blob = encode_delta(
            step,
            model_sha256=self.model_sha256,
            round_id=round_id,
            to_version=version,
            to_sha256=file_sha256(self.layout.global_adapter(version)),
            lora=self.lora,
            block=self.settings.block,
        )
        write_durably(self.layout.global_delta(version), blob)

    def send(self, shipment: Shipment, why: Literal["round", "rollout"]) -> None:
        """Queue the delta for the holders of the base, the file for the rest; a send a
        crash interrupted after queuing is not queued twice."""
        delta = self._delta_size(shipment.version)
        delta_to = [r for r in shipment.recipients if delta and r in shipment.holders]
        full_to = [r for r in shipment.recipients if r not in delta_to]
        meta: dict[str, str | int | float | bool] = {
            "round_id": shipment.round_id,
            "global_version": shipment.version,
            "why": why,
        }
        path = self.layout.global_adapter(shipment.version)
        if delta_to:
            self._queue("global_delta", self.layout.global_delta(shipment.version), delta_to, meta)
        if full_to:
            self._queue("global", path, full_to, meta)
        sent = GlobalSent(
            round_id=shipment.round_id,
            global_version=shipment.version,
            why=why,
            delta_to=tuple(delta_to),
            delta_bytes=delta,
            full_to=tuple(full_to),
            full_bytes=path.stat().st_size,
        )
        self.audit.append_event_once(sent, "round_id", "global_version", "why")

    def answer(self, request: GlobalRequest, sender: str, round_id: str | None) -> None:
        """Send the whole file to a box whose delta did not fit; refused (logged) when it
        was asked for a moment ago, or the version is not one this aggregator sent it (the
        cheap check first: the second reads the audit log)."""
        version = request.global_version
        now = time.monotonic()
        if now - self._answered.get((sender, version), -REQUEST_REPEAT_S) < REQUEST_REPEAT_S:
            log.info(
                "%s asked for v%d again within %.0f s; ignored", sender, version, REQUEST_REPEAT_S
            )
            return
        path = self.layout.global_adapter(version)
        if round_id is None or not path.exists() or not self._was_offered(sender, version):
            log.warning(
                "%s asked for global adapter v%d, which it was not sent; ignored", sender, version
            )
            return
        self._answered[(sender, version)] = now
        log.info("%s asked for the whole global adapter v%d: %s", sender, version, request.reason)
        meta: dict[str, str | int | float | bool] = {
            "round_id": round_id,
            "global_version": version,
            "why": "requested",
        }
        if not self._queue("global", path, [sender], meta):
            return  # the copy asked for before is still on its way
        sent = GlobalSent(
            round_id=round_id,
            global_version=version,
            why="requested",
            delta_to=(),
            delta_bytes=None,
            full_to=(sender,),
            full_bytes=path.stat().st_size,
        )
        self.audit.append_event(sent)

    def _delta_size(self, version: int) -> int | None:
        """The delta's size; None when there is none (full mode, no exact step): whole files."""
        delta = self.layout.global_delta(version)
        if self.settings.mode != "delta" or not delta.exists():
            return None
        return delta.stat().st_size

    def _queue(
        self,
        kind: str,
        path: Path,
        recipients: list[str],
        meta: dict[str, str | int | float | bool],
    ) -> bool:
        """Queue unless the same artifact still waits in the outbox; whether it was queued."""
        if self.transport.outbox.holds_artifact(kind, meta):
            return False
        self.transport.sender.send_artifact(kind, path, recipients, meta=meta)
        return True

    def _was_offered(self, box: str, version: int) -> bool:
        """Whether the audit shows `version` went to `box` (as a delta or a file)."""
        for event in read_events(self.audit.path):
            if (
                isinstance(event, GlobalSent)
                and event.global_version == version
                and box in (*event.delta_to, *event.full_to)
            ):
                return True
        return False
