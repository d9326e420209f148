"""Secure aggregation as a round protocol (appliance/federation/protocol.py): a round
announced with `plan.secure_aggregation` is masked end to end.

Aggregator (`SecureRounds`): opens a `Collector` when it configures a round, closes and
relays the key set once every participant's key arrived (or `key_wait_s` passed), admits
each masked update before the round store keeps it; when the round closes it commits the
reporting set (phase `committed`), waits for the seeds of the dropped boxes (`revealing`)
and answers the unmasked sum.

Box (`SecureBox`): publishes its mask key when it joins a secure round, encodes its update to
the round's fixed point when training ends, and sends it masked as soon as the key set is
there; commits are answered by `BoxSession` on the transport thread.

Version 1 keeps its keys in memory: after a restart of the aggregator in the middle of a
version-1 round, `finish` fails it ("lost"); a box restarted mid-round counts as dropped.
Version 2 (SecAgg+, `plus_protocol.py`: `PlusRounds`, and `PlusBox` inside `SecureBox`)
persists its round state and survives both; `build_rounds` picks the aggregator's side.
"""

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.federation.audit_events import AggregationFacts
from appliance.federation.messages import RoundAnnouncement, SecureAggregationPlan, TrainingPlan
from appliance.federation.protocol import (
    Aggregated,
    AggregatorProtocol,
    BoxProtocol,
    Failed,
    LocalUpdate,
    Outcome,
    Prepared,
    RefusedUpdateError,
    Waiting,
)
from appliance.federation.rounds import Round, StoredUpdate
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import TrustStore
from appliance.privacy.secagg.collector import Collector, Phase, UnmaskedSum, secure_fedavg
from appliance.privacy.secagg.encoding import Encoded, FixedPoint, Layout, layout_of, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import ReportingSet
from appliance.privacy.secagg.participant import Participant
from appliance.privacy.secagg.plus_protocol import PlusBox, PlusRounds
from appliance.privacy.secagg.session import MASKED_UPDATE, AggregatorSession, BoxSession
from appliance.transport.node import TransportNode

log = logging.getLogger(__name__)


def fixed_point_of(plan: SecureAggregationPlan) -> FixedPoint:
    return FixedPoint(plan.value_bound, plan.max_weight)


def build_rounds(
    transport: TransportNode, trust: TrustStore, settings: SecureAggregationSettings
) -> AggregatorProtocol:
    """The aggregator's secure protocol for the configured version."""
    if settings.version == 2:
        return PlusRounds(transport, trust, settings)
    return SecureRounds(transport, trust, settings)


class SecureRounds(AggregatorProtocol):
    """The aggregator's side (built only when `fleet.secure_aggregation.enabled`)."""

    update_kind = MASKED_UPDATE

    def __init__(
        self, transport: TransportNode, trust: TrustStore, settings: SecureAggregationSettings
    ) -> None:
        self.settings = settings
        self.trust = trust
        self.session = AggregatorSession(transport)
        self._opened_at = 0.0
        self._committed_at = 0.0

    def _plan(self) -> SecureAggregationPlan:
        s = self.settings
        return SecureAggregationPlan(
            value_bound=s.value_bound, max_weight=s.max_weight, min_reporting=s.min_reporting
        )

    def configure(
        self,
        plan: TrainingPlan,
        round_id: str,
        participants: tuple[str, ...],
        base: GlobalAdapter,
        now: float,
    ) -> TrainingPlan:
        """Start collecting mask keys for the new round (keys may come at once)."""
        if not base.frozen_a:
            raise ValueError("secure aggregation needs a frozen A (training.freeze_a = true)")
        secure = self._plan()
        collector = Collector(
            round_id,
            participants,
            layout_of(base),
            fixed_point_of(secure),
            self.trust,
            min_reporting=secure.min_reporting,
        )
        self.session.begin(collector)
        self._opened_at = now
        return plan.model_copy(update={"secure_aggregation": secure})

    def _collector_of(self, round_id: str) -> Collector | None:
        collector = self.session.collector
        return collector if collector is not None and collector.round_id == round_id else None

    def tick(self, now: float) -> None:
        """Close and relay the key set when every key is in or the wait is over."""
        collector = self.session.collector
        if collector is None or collector.phase is not Phase.KEYS:
            return
        have = len(collector.keys_received)
        everyone = have == len(collector.participants)
        waited = now - self._opened_at >= self.settings.key_wait_s
        if everyone or (waited and have >= collector.min_reporting):
            keyset = self.session.publish_keys()
            log.info(
                "round %s: key set of %d boxes relayed (%s)",
                collector.round_id,
                len(keyset.keys),
                "all keys in" if everyone else "key wait over",
            )

    def admit(self, blob: bytes, sender: str, round_: Round, base: GlobalAdapter) -> int:
        """Validate and hold a masked update; its weight."""
        del base
        if self._collector_of(round_.round_id) is None:
            raise RefusedUpdateError(f"wrong_round: {round_.round_id} is not the open secure round")
        try:
            self.session.add_masked(blob, sender)
        except SecAggError as exc:
            raise RefusedUpdateError(f"{exc.reason}: {exc.detail}") from None
        collector = self.session.collector
        assert collector is not None
        return collector.weight_of(sender)

    def finish(
        self, round_: Round, base: GlobalAdapter, updates: Iterable[StoredUpdate], now: float
    ) -> Outcome:
        """Commit who reported (phase `committed`), wait for the seed reveals (`revealing`),
        then unmask the sum."""
        collector = self._collector_of(round_.round_id)
        if collector is None:
            return Failed(f"secure aggregation: lost: no state for {round_.round_id} (restarted?)")
        try:
            if collector.phase is not Phase.REVEALS and collector.phase is not Phase.DONE:
                self._commit(round_.round_id, now)
            unmasked = self._result(collector, now)
        except SecAggError as exc:
            log.error("round %s: secure aggregation failed: %s", round_.round_id, exc)
            return Failed(f"secure aggregation: {exc.reason}: {exc.detail}")
        if unmasked is None:
            missing = collector.missing_reveals()
            phase = "committed" if len(missing) == len(collector.reported) else "revealing"
            return Waiting(phase, f"waiting for seed reveals from {', '.join(missing)}")
        stored = list(updates)
        dense = 4 * layout_size(layout_of(base))  # what the same B would cost in fp32
        result = secure_fedavg(base, unmasked)
        facts = AggregationFacts(
            participants=tuple(unmasked.reporting),
            dropped=tuple(unmasked.dropped),
            update_bytes={u.node_id: len(u.blob) for u in stored},
            update_dense_fp32_bytes={u.node_id: dense for u in stored},
            rejected={},
            update_sha256={u.node_id: u.sha256 for u in stored},
            strategy=dict(result.report),
            codec=round_.plan.codec,
            secure_aggregation=round_.plan.secure_aggregation,
        )
        return Aggregated(result, facts)

    def _commit(self, round_id: str, now: float) -> ReportingSet:
        """The round closed: publish who reported; reveals are awaited from now on."""
        commit = self.session.publish_commit()
        self._committed_at = now
        log.info(
            "round %s: committed %d reporting, %d dropped",
            round_id,
            len(commit.reporting),
            len(commit.dropped),
        )
        return commit

    def _result(self, collector: Collector, now: float) -> UnmaskedSum | None:
        """The unmasked sum once every needed seed is in; None while waiting; `SecAggError`
        when the wait is over (a reporting box went silent) or unmasking fails."""
        if collector.phase is Phase.DONE:
            return self.session.unmask()
        if now - self._committed_at >= self.settings.reveal_wait_s:
            missing = ", ".join(collector.missing_reveals())
            raise SecAggError("reveal_timeout", f"no seed reveal from {missing}")
        return None


@dataclass
class _Pending:
    round_id: str
    encoded: Encoded
    layout: Layout


class SecureBox(BoxProtocol):
    """A box's side: one round at a time."""

    update_kind = MASKED_UPDATE

    def __init__(self, transport: TransportNode, aggregator_id: str) -> None:
        self.transport = transport
        self.aggregator_id = aggregator_id
        self.session = BoxSession(transport, aggregator_id)
        self.plus = PlusBox(transport, aggregator_id)  # plan version 2 (SecAgg+)
        self._pending: _Pending | None = None
        self._lock = threading.Lock()

    def join(self, round_: RoundAnnouncement) -> None:
        """Publish this box's mask key for a secure round it is about to train for."""
        plan = round_.plan.secure_aggregation
        if plan is None:
            raise ValueError(f"round {round_.round_id} is not a secure round")
        if plan.version == 2:
            self.plus.join(round_)
            return
        participant = Participant(
            self.transport.key,
            self.transport.trust,
            self.aggregator_id,
            round_.round_id,
            plan.min_reporting,
        )
        with self._lock:
            self._pending = None
        self.session.join(participant)

    def prepare(self, round_: RoundAnnouncement, local: LocalUpdate) -> Prepared:
        """Encode the update to the round's fixed point; it is sent masked once the key set is
        here (`tick`). Credited is what the aggregator will reconstruct (error feedback).
        DP claims are not sent in a masked update (no header the aggregator can read)."""
        plan = round_.plan.secure_aggregation
        if plan is None:
            raise ValueError(f"round {round_.round_id} is not a secure round")
        if plan.version == 2:
            return self.plus.prepare(round_, local)
        fixed, layout = fixed_point_of(plan), layout_of(local.base)
        encoded = fixed.encode(local.deltas, layout, local.sample_count)
        with self._lock:
            self._pending = _Pending(round_.round_id, encoded, layout)
        self.tick()
        credited = {name: Delta(None, b) for name, b in fixed.reconstruct(encoded, layout).items()}
        return Prepared(credited, None)

    def tick(self) -> None:
        """Send the pending masked update if the round's key set has arrived."""
        self.plus.tick()
        with self._lock:
            pending = self._pending
            participant = self.session.participant
            if (
                pending is None
                or participant is None
                or participant.round_id != pending.round_id
                or not self.session.keys_ready.is_set()
            ):
                return
            self._pending = None
        try:
            blob = self.session.send(pending.encoded, pending.layout)
        except SecAggError as exc:
            log.error("round %s: masked update not sent: %s", pending.round_id, exc)
            return
        log.info(
            "round %s: masked update sent, %d bytes (weight %d, %d values clipped)",
            pending.round_id,
            len(blob),
            pending.encoded.weight,
            pending.encoded.clipped,
        )
