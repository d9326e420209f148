"""The aggregator's work, one step at a time: rounds, updates, aggregation, publication.

`step()` (called by the daemon's main loop) pulls the transport's inbound events and does the
work, so round state changes happen in one thread and every step is safe to interrupt: the
round store and the audit log are on disk before anything is announced, and an update is
acknowledged to its box only once the round store holds it. What a round protocol decides
(plain or secure) is behind `AggregatorProtocol`; this only runs the round loop.
"""

import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.aggregator.downlink import GlobalDownlink, Shipment
from appliance.aggregator.evaluation_set import EvaluationSetPublisher
from appliance.aggregator.protocols import build_protocol
from appliance.config import AggregatorConfig
from appliance.errors import AdapterError, ModelError
from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import (
    AggregationFacts,
    EvaluationReceived,
    RoundAbandoned,
    RoundAggregated,
    RoundFailed,
    RoundOpened,
    UpdateRejected,
)
from appliance.federation.codec import CodecSpec
from appliance.federation.global_adapter import (
    initial_global_adapter,
    load_global_adapter,
    save_global_adapter,
)
from appliance.federation.messages import (
    Command,
    Evaluation,
    GlobalPublished,
    GlobalRequest,
    RoundAnnouncement,
    TrainingPlan,
)
from appliance.federation.protocol import (
    Aggregated,
    Failed,
    Outcome,
    RefusedUpdateError,
    Waiting,
)
from appliance.federation.rounds import (
    Offer,
    Round,
    RoundSpec,
    RoundState,
    RoundStore,
    StoredUpdate,
    Verdict,
)
from appliance.federation.strategies import Aggregate
from appliance.federation.updates import GlobalAdapter
from appliance.identity import TrustStore
from appliance.identity.own_key import node_key
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import file_sha256, open_gguf, read_model_info, tensor_shapes
from appliance.rollout.controller import Actions, Rollout
from appliance.system.failpoints import failpoint
from appliance.system.files import quarantine
from appliance.system.journal import set_fields
from appliance.system.shutdown import flush_outbox
from appliance.telemetry.fleet_host import FleetHealthService
from appliance.transport.events import ArtifactArrived, InboundEvent, MessageArrived
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.outbox import Priority
from appliance.transport.rejects import RejectedError, record_rejection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _IncomingUpdate:
    sender: str
    round_id: str
    path: Path


class AggregatorService:
    """Rounds for one plant."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.layout = config.layout
        self.layout.globals_dir.mkdir(parents=True, exist_ok=True)
        model = resolve_model_path(config.model.model_path())
        self.model_info = read_model_info(model, ModelError)
        self._shapes = tensor_shapes(open_gguf(model, ModelError))
        self.store = RoundStore(self.layout.rounds_db)
        self.key = node_key(config.identity)
        self.audit = AuditLog(self.layout.audit_log, signer=self.key)
        self.trust = TrustStore(config.identity.trust_dir)
        self.rollout = Rollout(config.rollout, self.layout.state_dir, self.audit)
        self.current = self._load_or_create_global()
        self._next_round_at = 0.0
        self._announced_at = 0.0
        settings = NodeSettings(
            config.identity.plant_id,
            config.mqtt,
            config.outbox,
            config.transfer,
            self.layout.transport_dir,
        )
        self.transport = TransportNode(self.key, self.trust, settings)
        self.transport.subscribe("+", "evaluation", Evaluation)
        self.transport.subscribe("+", "global_request", GlobalRequest)
        self.downlink = GlobalDownlink(
            config.fleet.downlink,
            self.layout,
            self.transport,
            self.audit,
            lora=config.training.lora_spec(),
            model_sha256=self.model_info.sha256,
        )
        self.evaluation_set = EvaluationSetPublisher(
            config.evaluation_set, self.transport.sender, self.audit
        )
        # plain or pairwise-masked rounds (appliance/federation/protocol.py, docs/privacy.md)
        self.protocol = build_protocol(config, self.transport, self.trust, self.model_info.sha256)
        self._stopped_half_way = {r.round_id for r in self.store.unfinished()}
        self.health = FleetHealthService(config)
        if (open_round := self.store.current()) is not None:
            self._audit_opened(open_round)
        self._take_legacy_inbox()

    # -- the main loop's step -----------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker; watch the fleet's health (Sparkplug primary host)."""
        self.transport.start()
        self.health.start()

    def stop(self) -> None:
        """Flush the outbox, disconnect and close stores."""
        flush_outbox(self.transport)
        self.health.stop()
        self.transport.stop()
        self.store.close()
        self.rollout.close()

    def step(self, now: float | None = None) -> str:
        """Handle what arrived, close or open rounds; returns a status line."""
        now = time.time() if now is None else now
        self._drain_events(now)
        self.protocol.tick(now)
        self._finish_unfinished(now)
        self._follow_rollout(now)
        changed = self.store.advance(now)
        if changed is not None:
            self._on_round_change(changed)
        current = self.store.current()
        if current is None and self._may_open(now):
            self._open_round(now)
        elif current is not None and now - self._announced_at >= self.config.rounds.reannounce_s:
            self._announce(current, Priority.LOW)
        return self.status()

    def status(self) -> str:
        """One line for `systemctl status`."""
        current = self.store.current()
        waiting = [r for r in self.store.unfinished() if r.phase]
        if current is None and waiting:
            return f"round {waiting[0].round_id}: {waiting[0].phase}, global adapter v" + str(
                self.current.version
            )
        if current is None:
            return f"idle, global adapter v{self.current.version}"
        arrived = self.store.count(current.round_id)
        return (
            f"round {current.round_id}: {arrived}/{current.min_updates} updates, "
            f"global adapter v{self.current.version}"
        )

    def participants(self) -> tuple[str, ...]:
        """Configured boxes, or every trusted key but our own."""
        if self.config.fleet.participants:
            return tuple(self.config.fleet.participants)
        names = sorted(p.stem for p in self.trust.directory.glob("*.pub"))
        return tuple(n for n in names if n != self.key.node_id)

    # -- rounds -------------------------------------------------------------------------------

    def _may_open(self, now: float) -> bool:
        limit = self.config.fleet.max_rounds
        done = self._rounds_so_far()
        return (
            (limit == 0 or done < limit)
            and now >= self._next_round_at
            and not self.store.unfinished()
            and bool(self.participants())
            and self.rollout.waiting() is None
        )

    def _rounds_so_far(self) -> int:
        latest = self.store.latest()
        return 0 if latest is None else latest.seq

    def _open_round(self, now: float) -> None:
        rules = self.config.rounds
        participants = self.participants()
        round_id = f"r{self._rounds_so_far() + 1}-{uuid.uuid4().hex[:6]}"
        plan = self.protocol.configure(self._plan(), round_id, participants, self.current, now)
        spec = RoundSpec(
            round_id,
            self.current.version,
            plan,
            participants,
            min(rules.min_updates, len(participants)),
            min(rules.min_updates_at_deadline, len(participants)),
            rules.deadline_s,
        )
        set_fields(ROUND=round_id)  # journal field: the round opened last
        round_ = self.store.open_round(spec, now)
        self._audit_opened(round_)
        self.evaluation_set.publish(participants)  # before the round: boxes score it after
        self._announce(round_, Priority.NORMAL)
        log.info(
            "round %s opened for %d boxes (global adapter v%d)",
            round_id,
            len(participants),
            self.current.version,
        )

    def _audit_opened(self, round_: Round) -> None:
        """Audit a round's opening once (also at a start after a crash that came between the
        store and the audit log)."""
        opened = RoundOpened(
            round_id=round_.round_id,
            global_version=round_.global_version,
            participants=round_.participants,
            plan=round_.plan,
        )
        self.audit.append_event_once(opened, "round_id")

    def _plan(self) -> TrainingPlan:
        training, codec = self.config.training, self.config.fleet.codec
        return TrainingPlan(
            lora=training.lora_spec(),
            learning_rate=training.learning_rate,
            epochs=training.epochs,
            max_steps=training.max_steps,
            codec=CodecSpec(
                values=codec.values,
                block=codec.block,
                top_k_fraction=None if codec.top_k_fraction >= 1 else codec.top_k_fraction,
                compression=codec.compression,
                lowrank_rank=codec.lowrank_rank or None,
                subspace_dim=codec.subspace_dim or None,
                subspace_basis=codec.subspace_basis,
                residual_top_k_fraction=codec.residual_top_k_fraction or None,
            ),
        )

    def _announce(self, round_: Round, priority: int) -> None:
        self.transport.publish("round", self._announcement(round_), priority)
        self._announced_at = time.time()

    def _announcement(self, round_: Round) -> RoundAnnouncement:
        path = self._global_path(self.current.version)
        return RoundAnnouncement(
            round_id=round_.round_id,
            base_sha256=self.model_info.sha256,
            global_version=self.current.version,
            global_artifact_sha256=file_sha256(path) if self.current.version else None,
            plan=round_.plan,
            participants=round_.participants,
            min_updates=round_.min_updates,
            deadline=round_.deadline,
        )

    # -- updates and evaluations --------------------------------------------------------------

    def _drain_events(self, now: float) -> None:
        while (event := self.transport.next_event()) is not None:
            self.handle(event, now)

    def handle(self, event: InboundEvent, now: float | None = None) -> None:
        """Take one inbound event (the step pulls them from the transport)."""
        now = time.time() if now is None else now
        match event:
            case ArtifactArrived():
                self._take_artifact(event, now)
            case MessageArrived(message=Evaluation() as evaluation, signer=signer):
                self._take_evaluation(evaluation, signer)
                self.transport.acknowledge(event)  # in the audit log: the broker may forget it
            case MessageArrived(message=GlobalRequest() as request, signer=signer):
                self.downlink.answer(request, signer, self._round_of_version(request))
                self.transport.acknowledge(event)
            case MessageArrived(kind=kind, signer=signer):  # not subscribed to anything else
                log.warning("ignored a %s message from %s", kind, signer)
                self.transport.acknowledge(event)

    def _round_of_version(self, request: GlobalRequest) -> str | None:
        """The round whose result is the version a box asks for (None: no such round)."""
        for round_, _closed in self.store.history():
            if round_.result_version == request.global_version:
                return round_.round_id
        return None

    def _take_artifact(self, event: ArtifactArrived, now: float) -> None:
        """An update for the round protocol; acknowledged (the box may forget it) once the
        store holds it or it is refused for good."""
        manifest = event.manifest
        round_id = str(manifest.meta.get("round_id", ""))
        if manifest.kind != self.protocol.update_kind or not round_id:
            detail = f"artifact {manifest.artifact_id} of kind {manifest.kind!r} without a round"
            if manifest.kind != self.protocol.update_kind:
                detail = f"artifact {manifest.artifact_id} of unexpected kind {manifest.kind!r}"
            self._count_rejection("artifact", manifest.sender, "unexpected_artifact", detail)
        else:
            self._take_update(_IncomingUpdate(manifest.sender, round_id, event.path), now)
        self.transport.acknowledge(event)

    def _take_legacy_inbox(self) -> None:
        """Update files an older version handed over to `updates/` and acknowledged before
        they reached the store (a crash in that window left them): offered once."""
        inbox = self.layout.inbox_dir
        files = [*inbox.glob("*.update"), *inbox.glob("*.masked")]
        for path in sorted(files, key=lambda p: p.stat().st_mtime):
            sender, round_id, _artifact_id, _suffix = path.name.rsplit(".", 3)
            self._take_update(_IncomingUpdate(sender, round_id, path), time.time())
            path.unlink()

    def _take_update(self, incoming: _IncomingUpdate, now: float) -> None:
        """Store one update (the caller then lets its file go: a crash before that offers
        it again at the next start, and the store counts it once)."""
        failpoint("aggregator.update_received")
        blob = incoming.path.read_bytes()
        self._offer(incoming, blob, now)
        failpoint("aggregator.update_stored")

    def _offer(self, incoming: _IncomingUpdate, blob: bytes, now: float) -> None:
        """The protocol checks an update for the open round; anything else (late, re-sent
        after a lost ack, unknown round) gets the store's reason."""
        weight = 0
        round_ = self._round(incoming.round_id)
        if round_ is not None and round_.state == RoundState.OPEN:
            try:
                weight = self.protocol.admit(blob, incoming.sender, round_, self._base_of(round_))
            except RefusedUpdateError as exc:
                self._refuse(incoming, exc.reason, len(blob))
                return
        stored = StoredUpdate(incoming.sender, hashlib.sha256(blob).hexdigest(), weight, blob)
        self._log_offer(incoming, self.store.offer(incoming.round_id, stored, now), blob)

    def _round(self, round_id: str) -> Round | None:
        try:
            return self.store.get(round_id)
        except KeyError:
            return None

    def _log_offer(self, incoming: _IncomingUpdate, offer: Offer, blob: bytes) -> None:
        log.info(
            "update from %s for %s: %s %s (%d bytes)",
            incoming.sender,
            incoming.round_id,
            offer.verdict.value,
            offer.reason,
            len(blob),
        )
        if offer.verdict == Verdict.REJECTED:
            self._audit_refusal(incoming, offer.reason, len(blob))

    def _refuse(self, incoming: _IncomingUpdate, reason: str, size: int) -> None:
        log.warning("update from %s for %s refused: %s", incoming.sender, incoming.round_id, reason)
        self._audit_refusal(incoming, reason, size)

    def _audit_refusal(self, incoming: _IncomingUpdate, reason: str, size: int) -> None:
        refused = UpdateRejected(
            node_id=incoming.sender, round_id=incoming.round_id, reason=reason, bytes=size
        )
        self.audit.append_event(refused)

    def _take_evaluation(self, evaluation: Evaluation, signer: str) -> None:
        if evaluation.node_id != signer:
            detail = f"signed by {signer} but claims to be from {evaluation.node_id}"
            self._count_rejection("evaluation", signer, "claims_other_node", detail)
            return
        # rollout first (it keeps one report per box and version): a crash between the two
        # re-delivers the message, and the audit line is then written once
        self.rollout.take(evaluation, time.time())
        received = EvaluationReceived.of(evaluation)
        self.audit.append_event_once(received, "node_id", "round_id", "global_version")

    def _count_rejection(self, what: str, sender: str, reason: str, detail: str) -> None:
        """Log and count a refusal the transport could not see (it passed its checks)."""
        record_rejection(
            log,
            self.transport.client.counters,
            what,
            f"from {sender}",
            RejectedError(reason, detail),
        )

    # -- closing a round -----------------------------------------------------------------------

    def _on_round_change(self, round_: Round) -> None:
        if round_.state == RoundState.ABANDONED:
            abandoned = RoundAbandoned(round_id=round_.round_id, reason=round_.close_reason)
            self.audit.append_event(abandoned)
            log.warning("round %s %s", round_.round_id, round_.close_reason)
            self._next_round_at = time.time() + self.config.fleet.pause_s
        elif round_.state == RoundState.CLOSED:
            failpoint("aggregator.round_closed")
            self._next_round_at = time.time() + self.config.fleet.pause_s
            self._finish_round(round_, time.time())

    def _finish_unfinished(self, now: float) -> None:
        """Go on with closed rounds that need more steps: those the protocol waits on
        (`phase`), and those a crash stopped half-way. A round whose state cannot be finished
        is logged, audited and set aside, so the daemon goes on instead of crashing on it at
        every start."""
        for round_ in self.store.unfinished():
            if round_.round_id in self._stopped_half_way:
                self._stopped_half_way.discard(round_.round_id)
                log.warning(
                    "round %s was stopped half-way by a restart; finishing it", round_.round_id
                )
            try:
                self._finish_round(round_, now)
            except OSError:
                raise  # the disk, not the round: systemd restarts us, the round waits
            except Exception as exc:
                self._quarantine(round_, exc, now)

    def _finish_round(self, round_: Round, now: float) -> None:
        """Aggregate (unless the audit shows a crash came after that) and publish."""
        audited = self.audit.find_event(RoundAggregated, "round_id", round_.round_id)
        if round_.state == RoundState.AGGREGATED:
            self._publish_global(round_, "" if audited is None else _strategy_name(audited))
        elif audited is not None:
            self._adopt_audited(round_, audited)
        else:
            base = self._base_of(round_)
            outcome = self.protocol.finish(round_, base, self.store.updates(round_.round_id), now)
            self._follow(round_, base, outcome, now)

    def _follow(self, round_: Round, base: GlobalAdapter, outcome: Outcome, now: float) -> None:
        """Act on what the round protocol answered."""
        match outcome:
            case Waiting(phase=phase, detail=detail) if phase != round_.phase:
                self.store.set_phase(round_.round_id, phase)
                log.info("round %s: %s (%s)", round_.round_id, phase, detail)
            case Failed(reason=reason, rejected=rejected):
                log.error("round %s failed: %s", round_.round_id, reason)
                failed = RoundFailed(round_id=round_.round_id, reason=reason, rejected=rejected)
                self.audit.append_event(failed)
                self.store.mark_failed(round_.round_id, reason, now)
            case Aggregated(result=result, facts=facts):
                self._complete(round_, base, result, facts)

    def _quarantine(self, round_: Round, exc: Exception, now: float) -> None:
        reason = f"quarantined after a restart: {type(exc).__name__}: {exc}"
        log.error("round %s: %s", round_.round_id, reason, exc_info=exc)
        self.audit.append_event(RoundFailed(round_id=round_.round_id, reason=reason))
        self.store.mark_failed(round_.round_id, reason, now)

    def _base_of(self, round_: Round) -> GlobalAdapter:
        """The global adapter the round's updates were trained from."""
        if round_.global_version == self.current.version:
            return self.current
        return load_global_adapter(self._global_path(round_.global_version))

    def _complete(
        self, round_: Round, base: GlobalAdapter, result: Aggregate, facts: AggregationFacts
    ) -> None:
        """Save, record and publish a round's new global adapter, in the steps a restart can
        resume from (docs/crash-safety.md): reserve the version, write the file, audit it,
        mark the round aggregated, start the rollout, queue the file, mark it published."""
        version = round_.result_version or self.rollout.next_version(
            max(self.current.version, *self.store.unrecorded_versions(), 0)
        )
        self.store.reserve_version(round_.round_id, version)
        step = self.downlink.define(base, result.factors)  # what the boxes will rebuild
        factors = result.factors if step is None else step.rebuilt
        new = GlobalAdapter(version, factors, base.alpha, base.frozen_a)
        path = save_global_adapter(
            self._global_path(new.version),
            new,
            self.model_info.architecture,
            self.model_info.sha256,
            round_.round_id,
        )
        if step is not None:
            self.downlink.prepare(step, round_.round_id, new.version)
        failpoint("aggregator.global_saved")
        aggregated = RoundAggregated.of(
            facts,
            round_id=round_.round_id,
            close_reason=round_.close_reason,
            global_version=new.version,
            global_sha256=file_sha256(path),
            global_bytes=path.stat().st_size,
            signer=self.key.node_id,
        )
        self.audit.append_event(aggregated)
        failpoint("aggregator.round_audited")
        self._record(round_, new, str(result.report.get("strategy")))

    def _adopt_audited(self, round_: Round, audited: RoundAggregated) -> None:
        """The crash came after the audit line: the file it names is the round's result (it
        is not aggregated again, which could give other bytes than the audit says)."""
        path = self._global_path(audited.global_version)
        if not path.exists() or file_sha256(path) != audited.global_sha256:
            raise ValueError(f"{path.name} is missing or differs from the audited sha256")
        self._record(round_, load_global_adapter(path), _strategy_name(audited))

    def _record(self, round_: Round, new: GlobalAdapter, strategy: str) -> None:
        self.store.mark_aggregated(round_.round_id, new.version)
        if new.version > self.current.version:
            self.current = new
        failpoint("aggregator.round_recorded")
        self._publish_global(self.store.get(round_.round_id), strategy)

    def _publish_global(self, round_: Round, strategy: str) -> None:
        """Queue the round's global adapter for its boxes (canaries first when staged rollout
        is on) and mark the round published. A crash before the mark sends it again; a box
        installs and evaluates a version once."""
        version = round_.result_version
        assert version is not None
        path = self._global_path(version)
        recipients = self.rollout.start(
            version, round_.round_id, round_.global_version, round_.participants, time.time()
        )
        failpoint("aggregator.rollout_started")
        self.downlink.send(self._shipment(round_, version, recipients), "round")
        failpoint("aggregator.global_queued")
        digest = file_sha256(path)
        self.transport.publish(
            "global",
            GlobalPublished(
                round_id=round_.round_id,
                global_version=version,
                artifact_sha256=digest,
                participants=round_.participants,
                strategy=strategy,
            ),
        )
        self.store.mark_published(round_.round_id, time.time())
        failpoint("aggregator.global_published")
        log.info(
            "round %s aggregated: global adapter v%d (%s) sent to %d boxes",
            round_.round_id,
            version,
            digest[:12],
            len(recipients),
        )

    # -- staged rollout (appliance.rollout decides; this only sends) ----------------------------

    def _follow_rollout(self, now: float) -> None:
        actions = Actions(self._send_global_to, self._send_command, self.participants)
        base = self.rollout.step(now, actions)
        if base is not None and base != self.current.version:
            self.current = load_global_adapter(self._global_path(base))
            log.warning("the fleet builds on global adapter v%d again", base)

    def _send_global_to(self, version: int, round_id: str, recipients: Sequence[str]) -> None:
        shipment = self._shipment(self.store.get(round_id), version, recipients)
        self.downlink.send(shipment, "rollout")

    def _shipment(self, round_: Round, version: int, recipients: Sequence[str]) -> Shipment:
        """Where a round's adapter goes; every box holds version 0, and a box whose update
        the round store holds trained on the round's base."""
        if round_.global_version == 0:
            holders = frozenset(recipients)
        else:
            arrivals = self.store.arrivals()
            holders = frozenset(node for (rid, node) in arrivals if rid == round_.round_id)
        return Shipment(round_.round_id, version, recipients, holders)

    def _send_command(self, command: Command) -> None:
        self.transport.publish("command", command, Priority.HIGH)

    # -- global adapter files -----------------------------------------------------------------

    def _global_path(self, version: int) -> Path:
        return self.layout.global_adapter(version)

    def _load_or_create_global(self) -> GlobalAdapter:
        versions = self.layout.global_versions()
        skip = self.rollout.blocked() | self.store.unrecorded_versions()
        for version in reversed([v for v in versions if v not in skip]):
            try:
                return load_global_adapter(self._global_path(version))
            except (AdapterError, ValueError) as exc:
                quarantine(self._global_path(version), exc)
        initial = initial_global_adapter(self._shapes, self.config.training.lora_spec())
        save_global_adapter(
            self._global_path(0),
            initial,
            self.model_info.architecture,
            self.model_info.sha256,
            "initial",
        )
        return initial


def _strategy_name(audited: RoundAggregated) -> str:
    """The strategy named in a round_aggregated record (its report's "strategy")."""
    return str(audited.strategy.get("strategy", ""))
