"""Round protocols: how a round's updates become a global adapter, on both sides.

The services run one round loop (open, announce, take updates, close, finish, publish) and
leave everything a protocol decides to an object with this small interface, in the style of
Flower's configure / aggregate split:

aggregator (`AggregatorProtocol`)
    `configure` adds the protocol's part to the round's plan before it is announced;
    `admit` checks an offered update and names its weight (or refuses it with a reason);
    `tick` runs the protocol's own timers (relaying key sets, say);
    `finish` is called on every step for a closed round until it answers `Aggregated` or
    `Failed`; `Waiting(phase)` says the protocol needs more steps (a secure round's
    `committed` / `revealing`), and the service records that phase in the round store.
box (`BoxProtocol`)
    `join` is called when the box takes part in a round; `prepare` turns the box's
    corrected deltas into what it sends (a blob now, or later from `tick`) and what the
    aggregator will credit, which error feedback needs.

A new protocol is a pair of classes and a line in the registries
(appliance/aggregator/protocols.py, appliance/edge/protocols.py); neither service changes.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from appliance.federation.audit_events import AggregationFacts
from appliance.federation.codec import DecodeError, RoundContext, decode_update, encode_update
from appliance.federation.messages import RoundAnnouncement, TrainingPlan
from appliance.federation.privacy_claim import DpReport
from appliance.federation.rounds import Round, StoredUpdate
from appliance.federation.strategies import Aggregate, RejectedUpdateError, Strategy
from appliance.federation.updates import Delta, GlobalAdapter

UPDATE = "update"
"""Artifact kind of a plain signed update."""


class RefusedUpdateError(Exception):
    """An offered update cannot count; `reason` goes to the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Waiting:
    """The protocol needs more steps; `phase` is recorded in the round store."""

    phase: str
    detail: str = ""


@dataclass(frozen=True)
class Failed:
    """The round ends without a global adapter, for `reason`."""

    reason: str
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregated:
    """The round's result and the facts its audit line records."""

    result: Aggregate
    facts: AggregationFacts


Outcome = Waiting | Failed | Aggregated


class AggregatorProtocol(ABC):
    """The aggregator's side of a round protocol."""

    update_kind: str = UPDATE
    """The artifact kind this protocol's updates travel as."""

    def configure(
        self,
        plan: TrainingPlan,
        round_id: str,
        participants: tuple[str, ...],
        base: GlobalAdapter,
        now: float,
    ) -> TrainingPlan:
        """The plan to announce, with this protocol's part in it (called before the round
        is stored and announced)."""
        del round_id, participants, base, now
        return plan

    @abstractmethod
    def admit(self, blob: bytes, sender: str, round_: Round, base: GlobalAdapter) -> int:
        """Check an update offered for the open `round_`; its weight (sample count), or
        `RefusedUpdateError`."""

    def tick(self, now: float) -> None:
        """The protocol's own timers; called on every step."""
        del now

    @abstractmethod
    def finish(
        self, round_: Round, base: GlobalAdapter, updates: Iterable[StoredUpdate], now: float
    ) -> Outcome:
        """Turn a closed round's stored updates into its result (or say what it waits for)."""


@dataclass(frozen=True)
class LocalUpdate:
    """What a box's training gives a round protocol: error-corrected deltas from the round's
    base, the records they were trained on (the weight) and the DP claim, if any."""

    deltas: dict[str, Delta]
    sample_count: int
    base: GlobalAdapter
    privacy: DpReport | None = None


@dataclass(frozen=True)
class Prepared:
    """What a box sends for a round, and what the aggregator will credit it with."""

    credited: dict[str, Delta]
    blob: bytes | None
    """The update to send now; None when the protocol sends it itself later (`tick`)."""
    dense_fp32_bytes: int = 0


class BoxProtocol(ABC):
    """A box's side of a round protocol."""

    update_kind: str = UPDATE

    def join(self, round_: RoundAnnouncement) -> None:
        """The box takes part in `round_` (called before it starts training)."""
        del round_

    @abstractmethod
    def prepare(self, round_: RoundAnnouncement, local: LocalUpdate) -> Prepared:
        """Encode the box's update for the round."""

    @abstractmethod
    def tick(self) -> None:
        """Send what became sendable (a masked update once its key set arrived)."""


class PlainRounds(AggregatorProtocol):
    """Signed updates in the clear, combined by the configured strategy."""

    def __init__(
        self, strategy: Callable[[], Strategy], base_sha256: str, max_update_bytes: int
    ) -> None:
        self.strategy = strategy  # a fresh one per round
        self.base_sha256 = base_sha256
        self.max_update_bytes = max_update_bytes

    def admit(self, blob: bytes, sender: str, round_: Round, base: GlobalAdapter) -> int:
        try:
            header, update = decode_update(blob, base, self.max_update_bytes)
        except DecodeError as exc:
            raise RefusedUpdateError(f"undecodable: {exc}") from None
        if header.node_id != sender or header.round_id != round_.round_id:
            raise RefusedUpdateError("header names another box or round than its envelope")
        if header.base_sha256 != self.base_sha256 or header.global_version != base.version:
            raise RefusedUpdateError("made for another base model or global version")
        return update.sample_count

    def finish(
        self, round_: Round, base: GlobalAdapter, updates: Iterable[StoredUpdate], now: float
    ) -> Outcome:
        del now
        strategy = self.strategy()
        strategy.begin(base)
        sizes: dict[str, int] = {}
        dense: dict[str, int] = {}
        digests: dict[str, str] = {}
        privacy: dict[str, DpReport] = {}
        rejected: dict[str, str] = {}
        for stored in updates:
            digests[stored.node_id] = stored.sha256
            try:
                header, update = decode_update(stored.blob, base, self.max_update_bytes)
                strategy.accept(update)
            except (DecodeError, RejectedUpdateError) as exc:
                rejected[stored.node_id] = str(exc)
                continue
            sizes[stored.node_id] = len(stored.blob)
            dense[stored.node_id] = sum(4 * t.shape[0] * t.shape[1] for t in header.tensors)
            if header.privacy is not None:  # each DP box's own claim (unverifiable)
                privacy[stored.node_id] = header.privacy
        if not sizes:
            return Failed("no update passed aggregation", rejected)
        result = strategy.finish()
        facts = AggregationFacts(
            participants=tuple(sizes),
            update_bytes=sizes,
            update_dense_fp32_bytes=dense,
            rejected=rejected,
            update_sha256=digests,
            strategy=dict(result.report),
            codec=round_.plan.codec,
            privacy=privacy,
        )
        return Aggregated(result, facts)


class PlainBox(BoxProtocol):
    """A box's plain update: the round's codec, signed by the transport."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def prepare(self, round_: RoundAnnouncement, local: LocalUpdate) -> Prepared:
        context = RoundContext(
            self.node_id, round_.round_id, round_.base_sha256, round_.global_version
        )
        plan = round_.plan
        encoded = encode_update(  # the base: a codec with subspace_basis = "global" needs it
            local.deltas, local.sample_count, plan.codec, context, local.privacy, base=local.base
        )
        return Prepared(encoded.sent, encoded.blob, encoded.dense_fp32_bytes)

    def tick(self) -> None:
        """Nothing waits: the update was sent when it was prepared."""
