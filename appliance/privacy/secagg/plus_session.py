"""SecAgg+ over the transport: a box's and the aggregator's message handling, with the round
state persisted (encrypted, `vault.py`) after every step and before its answer is sent.

    box        publish secagg2_key -> (secagg2_keys) -> publish secagg2_shares ->
               (secagg2_relay) -> send masked_update -> (secagg2_commit) -> publish
               secagg2_ack -> (secagg2_acks) -> publish secagg2_reveal
    aggregator (keys) -> secagg2_keys -> (shares) -> secagg2_relay per box -> (masked
               updates) -> secagg2_commit -> (acks) -> secagg2_acks -> (reveals) -> unmask

Handlers run on the transport's worker thread; a refusal is logged and counted
(`rejected.<reason>`) and the node carries on. Restarts: a restarted box loads its round and
publishes its keys again; the aggregator takes the same keys as a box's "I am back" and sends
it again what it sent since (key set, its relay, commit, ack set). Every box step is
idempotent for the same input, so repeated deliveries change nothing.
"""

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from appliance.identity import TrustStore
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.plus_box import BoxState, PlusParticipant, RoundParams
from appliance.privacy.secagg.plus_collector import CollectorState, Phase, PlusCollector
from appliance.privacy.secagg.plus_messages import (
    AckSet,
    CommitAck,
    PlusCommit,
    PlusKey,
    PlusKeySet,
    ShareBundle,
    ShareRelay,
    ShareReveal,
)
from appliance.privacy.secagg.session import MASKED_UPDATE
from appliance.privacy.secagg.vault import Vault
from appliance.system.failpoints import failpoint
from appliance.transport.node import TransportNode
from appliance.transport.rejects import RejectedError, record_rejection

log = logging.getLogger(__name__)
M = TypeVar("M")

KEY = "secagg2_key"
KEYS = "secagg2_keys"
SHARES = "secagg2_shares"
RELAY = "secagg2_relay"
COMMIT = "secagg2_commit"
ACK = "secagg2_ack"
ACKS = "secagg2_acks"
REVEAL = "secagg2_reveal"
BOX_SUFFIX = ".box"
AGG_SUFFIX = ".agg"


def vault_of(transport: TransportNode) -> Vault:
    """The node's secure-aggregation vault, beside its outbox in the state directory."""
    return Vault(transport.outbox.path.parent / "secagg", transport.key)


def _refuse(transport: TransportNode, writer: str, kind: str, exc: SecAggError) -> None:
    topic = transport.topics.message(writer, kind)
    record_rejection(
        log, transport.client.counters, kind, topic, RejectedError(exc.reason, exc.detail)
    )


class PlusBoxSession:
    """A box's side: one round at a time; messages only from `aggregator_id`."""

    def __init__(self, transport: TransportNode, aggregator_id: str, vault: Vault) -> None:
        self.transport, self.aggregator_id, self.vault = transport, aggregator_id, vault
        self.participant: PlusParticipant | None = None
        self.relayed = threading.Event()
        self.revealed = threading.Event()
        self._lock = threading.RLock()
        on = transport.on_message
        on(aggregator_id, KEYS, PlusKeySet, self._guard(KEYS, self._on_keyset))
        on(aggregator_id, RELAY, ShareRelay, self._guard(RELAY, self._on_relay))
        on(aggregator_id, COMMIT, PlusCommit, self._guard(COMMIT, self._on_commit))
        on(aggregator_id, ACKS, AckSet, self._guard(ACKS, self._on_acks))

    def restore(self) -> str | None:
        """Load the newest persisted round (after a restart); its id, or None."""
        names = self.vault.names(BOX_SUFFIX)
        if not names:
            return None
        raw = self.vault.load(names[-1])
        if raw is None:
            return None
        try:
            state = BoxState.model_validate_json(raw)
        except ValidationError as exc:
            log.error("secure aggregation: round state %s unreadable: %s", names[-1], exc)
            return None
        with self._lock:
            self.participant = PlusParticipant(
                self.transport.key, self.transport.trust, state, self._save
            )
            self.relayed.clear()
            if state.shared is not None:
                self.relayed.set()
        log.info("round %s: secure-aggregation state restored", state.round_id)
        return state.round_id

    def hello(self) -> None:
        """Publish this box's keys again: the aggregator answers with what the box missed."""
        with self._lock:
            participant = self.participant
        if participant is not None:
            self.transport.publish(KEY, participant.key_message())

    def join(self, round_id: str, params: RoundParams) -> None:
        """Take part in a round: fresh keys, persisted, then published."""
        with self._lock:
            if self.participant is not None and self.participant.round_id == round_id:
                return  # joined already (a restart resumed it)
            self.relayed.clear()
            self.revealed.clear()
            self.participant = PlusParticipant.fresh(
                self.transport.key,
                self.transport.trust,
                self.aggregator_id,
                round_id,
                params=params,
                on_change=self._save,
            )
            for name in self.vault.names(BOX_SUFFIX):
                if name != round_id + BOX_SUFFIX:
                    self.vault.remove(name)
        self.hello()
        failpoint("secagg.box_keys_sent")

    def send(
        self, values: np.ndarray, layout: tuple[tuple[str, int, int], ...], weight: int, sha: str
    ) -> bytes:
        """Mask the encoded update (state saved) and queue it durably for the aggregator."""
        with self._lock:
            participant = self._current()
            blob = participant.mask(values, layout, weight, sha)
        meta: dict[str, str | int | float | bool] = {"round_id": participant.round_id}
        self.transport.sender.send_artifact(MASKED_UPDATE, blob, [self.aggregator_id], meta=meta)
        failpoint("secagg.box_masked_sent")
        return blob

    def _save(self, state: BoxState) -> None:
        self.vault.save(state.round_id + BOX_SUFFIX, state.model_dump_json().encode())

    def _on_keyset(self, keyset: PlusKeySet, signer: str) -> None:
        bundle = self._current().accept_key_set(keyset, signer)
        self.transport.publish(SHARES, bundle)
        failpoint("secagg.box_shares_sent")

    def _on_relay(self, relay: ShareRelay, signer: str) -> None:
        if relay.recipient != self.transport.key.node_id:
            return  # another box's shares (every box gets every relay)
        self._current().accept_relay(relay, signer)
        self.relayed.set()

    def _on_commit(self, commit: PlusCommit, signer: str) -> None:
        self.transport.publish(ACK, self._current().accept_commit(commit, signer))
        failpoint("secagg.box_acked")

    def _on_acks(self, acks: AckSet, signer: str) -> None:
        self.transport.publish(REVEAL, self._current().reveal(acks, signer))
        failpoint("secagg.box_revealed")
        self.revealed.set()

    def _current(self) -> PlusParticipant:
        if self.participant is None:
            raise SecAggError("wrong_phase", "this box is in no SecAgg+ round")
        return self.participant

    def _guard(self, kind: str, handler: Callable[[M, str], None]) -> Callable[[M, str], None]:
        def run(message: M, signer: str) -> None:
            with self._lock:
                try:
                    participant = self._current()
                    if getattr(message, "round_id", participant.round_id) != participant.round_id:
                        raise SecAggError("wrong_round", "not this box's round")
                    handler(message, signer)
                except SecAggError as exc:
                    _refuse(self.transport, signer, kind, exc)

        return run


class AggRound(BaseModel):
    """The aggregator's persisted round: the collector's state and its timers (wall clock)."""

    model_config = ConfigDict(extra="forbid")

    state: CollectorState
    opened_at: float
    phase_at: float


class PlusAggregatorSession:
    """The aggregator's side: feeds a `PlusCollector` and publishes its steps."""

    def __init__(self, transport: TransportNode, trust: TrustStore, vault: Vault) -> None:
        self.transport, self.trust, self.vault = transport, trust, vault
        self.round: AggRound | None = None
        self.collector: PlusCollector | None = None
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        on = transport.on_message
        on("+", KEY, PlusKey, self._guard(KEY, self._add_key))
        on("+", SHARES, ShareBundle, self._guard(SHARES, self._add_shares))
        on("+", ACK, CommitAck, self._guard(ACK, self._add_ack))
        on("+", REVEAL, ShareReveal, self._guard(REVEAL, self._add_reveal))

    def begin(self, state: CollectorState, now: float) -> None:
        with self._lock:
            for name in self.vault.names(AGG_SUFFIX):
                self.vault.remove(name)  # one round at a time: older ones are over
            self.round = AggRound(state=state, opened_at=now, phase_at=now)
            self.collector = PlusCollector(state, self.trust)
            self.save()

    def restore(self, round_id: str | None = None) -> PlusCollector | None:
        """The persisted round (`round_id`, or the newest) after a restart."""
        with self._lock:
            if self.collector is not None and (round_id in (None, self.collector.round_id)):
                return self.collector
            names = self.vault.names(AGG_SUFFIX)
            name = (round_id + AGG_SUFFIX) if round_id else (names[-1] if names else None)
            raw = self.vault.load(name) if name else None
            if raw is None:
                return None
            try:
                self.round = AggRound.model_validate_json(raw)
            except ValidationError as exc:
                log.error("secure aggregation: round state %s unreadable: %s", name, exc)
                return None
            self.collector = PlusCollector(self.round.state, self.trust)
            log.info("round %s: SecAgg+ state restored", self.collector.round_id)
            return self.collector

    def end(self, round_id: str) -> None:
        """The round is over: its state goes (its secrets are no use any more)."""
        with self._lock:
            self.vault.remove(round_id + AGG_SUFFIX)
            if self.collector is not None and self.collector.round_id == round_id:
                self.collector, self.round = None, None

    def save(self) -> None:
        if self.round is not None:
            self.vault.save(
                self.round.state.round_id + AGG_SUFFIX, self.round.model_dump_json().encode()
            )

    def step(self, action: Callable[[PlusCollector], object], now: float) -> object:
        """Run one collector step under the lock, save, note when the phase changed."""
        with self.changed:
            collector = self._current()
            before = collector.phase
            try:
                result = action(collector)
            finally:
                assert self.round is not None
                if collector.phase is not before:
                    self.round.phase_at = now
                self.save()
                self.changed.notify_all()
            return result

    def publish_keys(self, now: float) -> PlusKeySet:
        keyset = self.step(lambda c: c.close_keys(), now)
        assert isinstance(keyset, PlusKeySet)
        self.transport.publish(KEYS, keyset)
        failpoint("secagg.aggregator_keys_relayed")
        return keyset

    def publish_relays(self, now: float) -> dict[str, ShareRelay]:
        relays = self.step(lambda c: c.close_shares(), now)
        assert isinstance(relays, dict)
        for relay in relays.values():
            self.transport.publish(RELAY, relay)
        failpoint("secagg.aggregator_shares_relayed")
        return relays

    def publish_commit(self, now: float) -> PlusCommit:
        commit = self.step(lambda c: c.commit(), now)
        assert isinstance(commit, PlusCommit)
        self.transport.publish(COMMIT, commit)
        failpoint("secagg.aggregator_committed")
        return commit

    def publish_acks(self, now: float) -> AckSet:
        acks = self.step(lambda c: c.close_acks(), now)
        assert isinstance(acks, AckSet)
        self.transport.publish(ACKS, acks)
        failpoint("secagg.aggregator_acks_relayed")
        return acks

    def add_masked(self, blob: bytes, sender: str, now: float) -> int:
        """Check and hold a masked update; its weight."""

        def take(collector: PlusCollector) -> int:
            collector.add_masked(blob, sender)
            return collector.weight_of(sender)

        weight = self.step(take, now)
        assert isinstance(weight, int)
        return weight

    def wait(self, condition: Callable[[PlusCollector], bool], timeout_s: float) -> bool:
        """Block until `condition(collector)` holds or the timeout (tests, benchmarks)."""
        with self.changed:
            return self.changed.wait_for(
                lambda: self.collector is not None and condition(self.collector), timeout_s
            )

    def _resend(self, node: str) -> None:
        """A box sent its keys again (it restarted): send it what it missed, in order."""
        collector = self._current()
        s = collector.state
        if s.keyset is not None:
            self.transport.publish(KEYS, s.keyset)
        if s.shared is not None and node in s.shared:
            self.transport.publish(RELAY, collector.relays()[node])
        if s.commit is not None:
            self.transport.publish(COMMIT, s.commit)
        if s.ackset is not None:
            self.transport.publish(ACKS, s.ackset)
        log.info("round %s: %s is back; resent phase %s", s.round_id, node, s.phase.value)

    def _add_key(self, key: PlusKey, signer: str) -> None:
        if self._current().add_key(key, signer) and self._current().phase is not Phase.KEYS:
            self._resend(signer)

    def _add_shares(self, bundle: ShareBundle, signer: str) -> None:
        self._current().add_shares(bundle, signer)

    def _add_ack(self, ack: CommitAck, signer: str) -> None:
        self._current().add_ack(ack, signer)

    def _add_reveal(self, reveal: ShareReveal, signer: str) -> None:
        self._current().add_reveal(reveal, signer)

    def _current(self) -> PlusCollector:
        if self.collector is None:
            raise SecAggError("wrong_phase", "no SecAgg+ round is open")
        return self.collector

    def _guard(self, kind: str, handler: Callable[[M, str], None]) -> Callable[[M, str], None]:
        def run(message: M, signer: str) -> None:
            with self.changed:
                try:
                    handler(message, signer)
                except SecAggError as exc:
                    _refuse(self.transport, signer, kind, exc)
                self.save()
                self.changed.notify_all()

        return run
