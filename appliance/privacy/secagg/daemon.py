"""The daemons' hooks: what `appliance aggregator run` and `appliance edge run` call so that a
round announced with `plan.secure_aggregation` is masked end to end.

Aggregator (`SecureRounds`): opens a `Collector` with each secure round, closes and relays the
key set once every participant's key arrived (or `key_wait_s` passed), checks each masked
update before the round store keeps it, commits the reporting set when the round closes, and
hands back the unmasked sum once the seeds of the dropped boxes are in.

Box (`SecureBox`): publishes its mask key when it joins a secure round, encodes its update to
the round's fixed point when training ends, and sends it masked as soon as the key set is
there; commits are answered by `BoxSession` on the transport thread.

State is in memory: an aggregator or a box restarted in the middle of a secure round cannot
finish it (the round's keys are gone by design); the round is then abandoned at its deadline
or when `reveal_wait_s` runs out, and the next round starts afresh.
"""

import logging
import threading
from dataclasses import dataclass

from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.federation.messages import RoundAnnouncement, SecureAggregationPlan
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import TrustStore
from appliance.privacy.secagg.collector import Collector, Phase, UnmaskedSum
from appliance.privacy.secagg.encoding import Encoded, FixedPoint, Layout, layout_of
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import ReportingSet
from appliance.privacy.secagg.participant import Participant
from appliance.privacy.secagg.session import AggregatorSession, BoxSession
from appliance.transport.node import TransportNode

log = logging.getLogger(__name__)


def fixed_point_of(plan: SecureAggregationPlan) -> FixedPoint:
    return FixedPoint(plan.value_bound, plan.max_weight)


class SecureRounds:
    """The aggregator's side; does nothing unless `settings.enabled`."""

    def __init__(
        self, transport: TransportNode, trust: TrustStore, settings: SecureAggregationSettings
    ) -> None:
        self.settings = settings
        self.trust = trust
        self.session = AggregatorSession(transport) if settings.enabled else None
        self._opened_at = 0.0
        self._committed_at = 0.0

    def plan(self) -> SecureAggregationPlan | None:
        """What the round announcement tells the boxes (None when off)."""
        if self.session is None:
            return None
        s = self.settings
        return SecureAggregationPlan(
            value_bound=s.value_bound, max_weight=s.max_weight, min_reporting=s.min_reporting
        )

    def open(
        self, round_id: str, participants: tuple[str, ...], base: GlobalAdapter, now: float
    ) -> None:
        """Start collecting mask keys for a new round (call before announcing it)."""
        plan = self.plan()
        if self.session is None or plan is None:
            return
        if not base.frozen_a:
            raise ValueError("secure aggregation needs a frozen A (training.freeze_a = true)")
        collector = Collector(
            round_id,
            participants,
            layout_of(base),
            fixed_point_of(plan),
            self.trust,
            min_reporting=plan.min_reporting,
        )
        self.session.begin(collector)
        self._opened_at = now

    def is_secure(self, round_id: str) -> bool:
        collector = self.session.collector if self.session else None
        return collector is not None and collector.round_id == round_id

    def tick(self, now: float) -> None:
        """Close and relay the key set when every key is in or the wait is over."""
        collector = self.session.collector if self.session else None
        if self.session is None or collector is None or collector.phase is not Phase.KEYS:
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

    def check(self, blob: bytes, sender: str, round_id: str) -> int:
        """Validate and hold a masked update; its weight, or `SecAggError` with the reason."""
        if self.session is None:
            raise SecAggError("not_enabled", "secure aggregation is off on this aggregator")
        if not self.is_secure(round_id):
            raise SecAggError("wrong_round", f"{round_id} is not the open secure round")
        self.session.add_masked(blob, sender)
        collector = self.session.collector
        assert collector is not None
        return collector.weight_of(sender)

    def commit(self, round_id: str, now: float) -> ReportingSet:
        """The round closed: publish who reported; reveals are awaited from now on."""
        if self.session is None or not self.is_secure(round_id):
            raise SecAggError("lost", f"no secure-aggregation state for {round_id} (restarted?)")
        commit = self.session.publish_commit()
        self._committed_at = now
        log.info(
            "round %s: committed %d reporting, %d dropped",
            round_id,
            len(commit.reporting),
            len(commit.dropped),
        )
        return commit

    def result(self, now: float) -> UnmaskedSum | None:
        """The unmasked sum once every needed seed is in; None while waiting; `SecAggError`
        when the wait is over (a reporting box went silent) or unmasking fails."""
        assert self.session is not None
        collector = self.session.collector
        assert collector is not None
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


class SecureBox:
    """A box's side: one round at a time."""

    def __init__(self, transport: TransportNode, aggregator_id: str) -> None:
        self.transport = transport
        self.aggregator_id = aggregator_id
        self.session = BoxSession(transport, aggregator_id)
        self._pending: _Pending | None = None
        self._lock = threading.Lock()

    def join(self, round_: RoundAnnouncement) -> None:
        """Publish this box's mask key for a secure round it is about to train for."""
        plan = round_.plan.secure_aggregation
        if plan is None:
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

    def submit(
        self,
        round_: RoundAnnouncement,
        deltas: dict[str, Delta],
        sample_count: int,
        base: GlobalAdapter,
    ) -> tuple[dict[str, Delta], Encoded]:
        """Encode the update to the round's fixed point; it is sent masked once the key set is
        here (`tick`). Returns what the aggregator will credit (for error feedback)."""
        plan = round_.plan.secure_aggregation
        if plan is None:
            raise ValueError(f"round {round_.round_id} is not a secure round")
        fixed, layout = fixed_point_of(plan), layout_of(base)
        encoded = fixed.encode(deltas, layout, sample_count)
        with self._lock:
            self._pending = _Pending(round_.round_id, encoded, layout)
        self.tick()
        credited = {name: Delta(None, b) for name, b in fixed.reconstruct(encoded, layout).items()}
        return credited, encoded

    def tick(self) -> None:
        """Send the pending masked update if the round's key set has arrived."""
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
