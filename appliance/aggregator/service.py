"""The aggregator's work, one step at a time: rounds, updates, aggregation, publication.

Transport callbacks only queue events; `step()` (called by the daemon's main loop) does the
work, so round state changes happen in one thread and every step is safe to interrupt: the
round store and the audit log are on disk before anything is announced.
"""

import hashlib
import json
import logging
import queue
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.aggregator.strategy import build_strategy
from appliance.config import AggregatorConfig
from appliance.errors import AdapterError, ModelError
from appliance.federation.audit import AuditLog
from appliance.federation.codec import CodecSpec, DecodeError, decode_update
from appliance.federation.global_adapter import (
    initial_global_adapter,
    load_global_adapter,
    save_global_adapter,
)
from appliance.federation.messages import (
    Command,
    Evaluation,
    GlobalPublished,
    RoundAnnouncement,
    TrainingPlan,
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
from appliance.federation.strategies import Aggregate, RejectedUpdateError
from appliance.federation.updates import GlobalAdapter
from appliance.identity import TrustStore
from appliance.identity.own_key import node_key
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import file_sha256, open_gguf, read_model_info, tensor_shapes
from appliance.privacy.secagg import SecAggError, secure_fedavg
from appliance.privacy.secagg.daemon import SecureRounds
from appliance.privacy.secagg.session import MASKED_UPDATE
from appliance.rollout.controller import Actions, Rollout
from appliance.system.failpoints import failpoint
from appliance.system.files import quarantine
from appliance.system.journal import set_fields
from appliance.system.shutdown import flush_outbox
from appliance.telemetry.fleet_host import FleetHealthService
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.outbox import Priority
from appliance.transport.receiver import ReceivedArtifact
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
        self.state_dir = config.paths.state_dir
        self.globals_dir = self.state_dir / "globals"
        self.globals_dir.mkdir(parents=True, exist_ok=True)
        model = resolve_model_path(config.model.model_path())
        self.model_info = read_model_info(model, ModelError)
        self._shapes = tensor_shapes(open_gguf(model, ModelError))
        self.store = RoundStore(self.state_dir / "rounds.sqlite")
        self.key = node_key(config.identity)
        self.audit = AuditLog(self.state_dir / "audit.jsonl", signer=self.key)
        self.trust = TrustStore(config.identity.trust_dir)
        self.rollout = Rollout(config.rollout, self.state_dir, self.audit)
        self.current = self._load_or_create_global()
        self._events: queue.Queue[_IncomingUpdate | tuple[Evaluation, str]] = queue.Queue()
        self._inbox = self.state_dir / "updates"
        self._inbox.mkdir(exist_ok=True)
        inbox = [*self._inbox.glob("*.update"), *self._inbox.glob("*.masked")]
        for pending in sorted(inbox, key=lambda p: p.stat().st_mtime):
            # a node id may hold dots; round and artifact ids never do
            sender, round_id, _artifact_id, _suffix = pending.name.rsplit(".", 3)
            self._events.put(_IncomingUpdate(sender, round_id, pending))
        self._next_round_at = 0.0
        self._announced_at = 0.0
        settings = NodeSettings(
            config.identity.plant_id,
            config.mqtt,
            config.outbox,
            config.transfer,
            self.state_dir / "transport",
        )
        self.transport = TransportNode(self.key, self.trust, settings, self._on_artifact)
        self.transport.on_message("+", "evaluation", Evaluation, self._on_evaluation)
        # pairwise-masked rounds (docs/privacy.md); inert unless fleet.secure_aggregation.enabled
        self.secure = SecureRounds(self.transport, self.trust, config.fleet.secure_aggregation)
        self._secure_round: Round | None = None  # committed, waiting for seed reveals
        self.health = FleetHealthService(config)
        if (open_round := self.store.current()) is not None:
            self._audit_opened(open_round)

    # -- transport callbacks (worker thread): queue only ------------------------------------

    def _on_artifact(self, artifact: ReceivedArtifact) -> None:
        manifest = artifact.manifest
        round_id = str(manifest.meta.get("round_id", ""))
        if manifest.kind not in ("update", MASKED_UPDATE) or not round_id:
            detail = f"artifact {manifest.artifact_id} of kind {manifest.kind!r} without a round"
            if manifest.kind not in ("update", MASKED_UPDATE):
                detail = f"artifact {manifest.artifact_id} of unexpected kind {manifest.kind!r}"
            self._count_rejection("artifact", manifest.sender, "unexpected_artifact", detail)
            return
        # The file in the inbox is the hand-over: the receiver acknowledges the artifact after
        # this returns, so it must survive a crash before the update reaches the round store.
        suffix = "masked" if manifest.kind == MASKED_UPDATE else "update"
        target = self._inbox / f"{manifest.sender}.{round_id}.{manifest.artifact_id}.{suffix}"
        shutil.move(artifact.path, target)
        self._events.put(_IncomingUpdate(manifest.sender, round_id, target))

    def _on_evaluation(self, evaluation: Evaluation, signer: str) -> None:
        self._events.put((evaluation, signer))

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
        self.secure.tick(now)
        self._finish_secure(now)
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
        done = self.store.latest().seq if self.store.latest() else 0
        return (
            (limit == 0 or done < limit)
            and now >= self._next_round_at
            and self._secure_round is None
            and not self.store.unfinished()
            and bool(self.participants())
            and self.rollout.waiting() is None
        )

    def _open_round(self, now: float) -> None:
        rules = self.config.rounds
        participants = self.participants()
        round_id = (
            f"r{(self.store.latest().seq if self.store.latest() else 0) + 1}-{uuid.uuid4().hex[:6]}"
        )
        plan = self._plan()
        self.secure.open(round_id, participants, self.current, now)  # keys may come at once
        spec = RoundSpec(
            round_id,
            self.current.version,
            plan.model_dump(mode="json"),
            participants,
            min(rules.min_updates, len(participants)),
            min(rules.min_updates_at_deadline, len(participants)),
            rules.deadline_s,
        )
        set_fields(ROUND=round_id)  # journal field: the round opened last
        round_ = self.store.open_round(spec, now)
        self._audit_opened(round_)
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
        record = {
            "round_id": round_.round_id,
            "global_version": round_.global_version,
            "participants": list(round_.participants),
            "plan": round_.plan,
        }
        self.audit.append_once("round_opened", record, "round_id")

    def _plan(self) -> TrainingPlan:
        training, codec = self.config.training, self.config.fleet.codec
        return TrainingPlan(
            rank=training.rank,
            alpha=training.alpha,
            targets=tuple(training.targets),
            top_layers=training.top_layers,
            seed=training.seed,
            frozen_a=training.freeze_a,
            learning_rate=training.learning_rate,
            epochs=training.epochs,
            max_steps=training.max_steps,
            codec=CodecSpec(
                values=codec.values,
                block=codec.block,
                top_k_fraction=None if codec.top_k_fraction >= 1 else codec.top_k_fraction,
                compression=codec.compression,
            ),
            secure_aggregation=self.secure.plan(),
        )

    def _announce(self, round_: Round, priority: int) -> None:
        self.transport.publish("round", self._announcement(round_), priority)
        self._announced_at = time.time()

    def _announcement(self, round_: Round) -> RoundAnnouncement:
        path = self._global_path(self.current.version)
        plan = TrainingPlan.model_validate_json(json.dumps(round_.plan))
        return RoundAnnouncement(
            round_id=round_.round_id,
            base_sha256=self.model_info.sha256,
            global_version=self.current.version,
            global_artifact_sha256=file_sha256(path) if self.current.version else None,
            plan=plan,
            participants=round_.participants,
            min_updates=round_.min_updates,
            deadline=round_.deadline,
        )

    # -- updates and evaluations --------------------------------------------------------------

    def _drain_events(self, now: float) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, _IncomingUpdate):
                self._take_update(event, now)
            else:
                self._take_evaluation(*event)

    def _take_update(self, incoming: _IncomingUpdate, now: float) -> None:
        """Store one update; its inbox file goes only once the store has it (a crash in
        between offers it again at the next start, and the store counts it once)."""
        failpoint("aggregator.update_received")
        blob = incoming.path.read_bytes()
        if incoming.path.suffix == ".masked":
            self._take_masked(incoming, blob, now)
        else:
            self._take_plain(incoming, blob, now)
        failpoint("aggregator.update_stored")
        incoming.path.unlink(missing_ok=True)

    def _take_plain(self, incoming: _IncomingUpdate, blob: bytes, now: float) -> None:
        if self._is_closed(incoming.round_id):
            # late, or re-sent after its ack was lost: the store's reason, not "made for
            # another global version" (the global has moved on since the round closed)
            stored = StoredUpdate(incoming.sender, hashlib.sha256(blob).hexdigest(), 0, blob)
            self._log_offer(incoming, self.store.offer(incoming.round_id, stored, now), blob)
            return
        limit = self.config.rounds.max_update_mb * 1024 * 1024
        try:
            header, update = decode_update(blob, self.current, limit)
        except DecodeError as exc:
            self._refuse(incoming, f"undecodable: {exc}", len(blob))
            return
        if header.node_id != incoming.sender or header.round_id != incoming.round_id:
            self._refuse(incoming, "header names another box or round than its envelope", len(blob))
            return
        if (
            header.base_sha256 != self.model_info.sha256
            or header.global_version != self.current.version
        ):
            self._refuse(incoming, "made for another base model or global version", len(blob))
            return
        stored = StoredUpdate(
            incoming.sender, hashlib.sha256(blob).hexdigest(), update.sample_count, blob
        )
        self._log_offer(incoming, self.store.offer(incoming.round_id, stored, now), blob)

    def _is_closed(self, round_id: str) -> bool:
        try:
            return self.store.get(round_id).state != RoundState.OPEN
        except KeyError:
            return False  # unknown: refused by the checks that follow, with that reason

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
            self.audit.append(
                "update_rejected",
                {
                    "node_id": incoming.sender,
                    "round_id": incoming.round_id,
                    "reason": offer.reason,
                    "bytes": len(blob),
                },
            )

    def _take_masked(self, incoming: _IncomingUpdate, blob: bytes, now: float) -> None:
        """A masked update: checked by the secure round, then kept like any update."""
        try:
            weight = self.secure.check(blob, incoming.sender, incoming.round_id)
        except SecAggError as exc:
            self._refuse(incoming, f"{exc.reason}: {exc.detail}", len(blob))
            return
        stored = StoredUpdate(incoming.sender, hashlib.sha256(blob).hexdigest(), weight, blob)
        offer = self.store.offer(incoming.round_id, stored, now)
        log.info(
            "masked update from %s for %s: %s %s (%d bytes)",
            incoming.sender,
            incoming.round_id,
            offer.verdict.value,
            offer.reason,
            len(blob),
        )

    def _refuse(self, incoming: _IncomingUpdate, reason: str, size: int) -> None:
        log.warning("update from %s for %s refused: %s", incoming.sender, incoming.round_id, reason)
        self.audit.append(
            "update_rejected",
            {
                "node_id": incoming.sender,
                "round_id": incoming.round_id,
                "reason": reason,
                "bytes": size,
            },
        )

    def _take_evaluation(self, evaluation: Evaluation, signer: str) -> None:
        if evaluation.node_id != signer:
            detail = f"signed by {signer} but claims to be from {evaluation.node_id}"
            self._count_rejection("evaluation", signer, "claims_other_node", detail)
            return
        self.audit.append("evaluation", evaluation.model_dump(mode="json"))
        self.rollout.take(evaluation, time.time())

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
            self.audit.append(
                "round_abandoned", {"round_id": round_.round_id, "reason": round_.close_reason}
            )
            log.warning("round %s %s", round_.round_id, round_.close_reason)
            self._next_round_at = time.time() + self.config.fleet.pause_s
        elif round_.state == RoundState.CLOSED:
            failpoint("aggregator.round_closed")
            self._finish_round(round_)
            self._next_round_at = time.time() + self.config.fleet.pause_s

    def _finish_unfinished(self, now: float) -> None:
        """Complete rounds a crash stopped half-way (closed, not aggregated or not published).
        A round whose state cannot be finished is logged, audited and set aside, so the
        daemon goes on instead of crashing on it at every start."""
        for round_ in self.store.unfinished():
            if self._secure_round is not None and round_.round_id == self._secure_round.round_id:
                continue  # waiting for seed reveals, not stopped
            log.warning("round %s was stopped half-way by a restart; finishing it", round_.round_id)
            try:
                self._finish_round(round_)
            except OSError:
                raise  # the disk, not the round: systemd restarts us, the round waits
            except Exception as exc:
                self._quarantine(round_, exc, now)

    def _finish_round(self, round_: Round) -> None:
        """Aggregate (unless the audit shows a crash came after that) and publish."""
        audited = self.audit.find("round_aggregated", "round_id", round_.round_id)
        if round_.state == RoundState.AGGREGATED:
            self._publish_global(round_, _strategy_name(audited or {}))
        elif audited is not None:
            self._adopt_audited(round_, audited)
        else:
            self._aggregate(round_)

    def _quarantine(self, round_: Round, exc: Exception, now: float) -> None:
        reason = f"quarantined after a restart: {type(exc).__name__}: {exc}"
        log.error("round %s: %s", round_.round_id, reason, exc_info=exc)
        self.audit.append("round_failed", {"round_id": round_.round_id, "reason": reason})
        self.store.mark_failed(round_.round_id, reason, now)

    def _aggregate(self, round_: Round) -> None:
        if round_.plan.get("secure_aggregation"):
            self._commit_secure(round_)
            return
        base = self._base_of(round_)
        strategy = build_strategy(self.config.fleet.strategy)
        strategy.begin(base)
        accepted, sizes, rejected = [], {}, {}
        limit = self.config.rounds.max_update_mb * 1024 * 1024
        dense: dict[str, int] = {}
        privacy: dict[str, object] = {}  # each DP box's own claim: mechanism and epsilon spent
        for stored in self.store.updates(round_.round_id):
            try:
                header, update = decode_update(stored.blob, base, limit)
                strategy.accept(update)
            except (DecodeError, RejectedUpdateError) as exc:
                rejected[stored.node_id] = str(exc)
                continue
            accepted.append(stored.node_id)
            sizes[stored.node_id] = len(stored.blob)
            dense[stored.node_id] = sum(4 * t.shape[0] * t.shape[1] for t in header.tensors)
            if header.privacy is not None:
                privacy[stored.node_id] = header.privacy.model_dump(mode="json")
        if not accepted:
            self.audit.append("round_failed", {"round_id": round_.round_id, "rejected": rejected})
            self.store.mark_failed(round_.round_id, "no update passed aggregation", time.time())
            return
        result = strategy.finish()
        facts = {
            "participants": accepted,
            "update_bytes": sizes,
            "update_dense_fp32_bytes": dense,
            "rejected": rejected,
            "update_sha256": {u.node_id: u.sha256 for u in self.store.updates(round_.round_id)},
            "strategy": dict(result.report),
            "codec": round_.plan["codec"],
            "privacy": privacy,
        }
        self._complete(round_, base, result, facts)

    def _base_of(self, round_: Round) -> GlobalAdapter:
        """The global adapter the round's updates were trained from."""
        if round_.global_version == self.current.version:
            return self.current
        return load_global_adapter(self._global_path(round_.global_version))

    def _commit_secure(self, round_: Round) -> None:
        """A secure round closed: commit who reported; `_finish_secure` waits for the seeds."""
        try:
            self.secure.commit(round_.round_id, time.time())
        except SecAggError as exc:
            self._secure_failed(round_, exc)
            return
        self._secure_round = round_

    def _finish_secure(self, now: float) -> None:
        round_ = self._secure_round
        if round_ is None:
            return
        try:
            unmasked = self.secure.result(now)
        except SecAggError as exc:
            self._secure_round = None
            self._secure_failed(round_, exc)
            return
        if unmasked is None:
            return  # still waiting for seed reveals
        self._secure_round = None
        base = self._base_of(round_)
        result = secure_fedavg(base, unmasked)
        stored = list(self.store.updates(round_.round_id))
        facts = {
            "participants": list(unmasked.reporting),
            "dropped": list(unmasked.dropped),
            "update_bytes": {u.node_id: len(u.blob) for u in stored},
            "update_sha256": {u.node_id: u.sha256 for u in stored},
            "strategy": dict(result.report),
            "codec": round_.plan["codec"],
            "secure_aggregation": round_.plan["secure_aggregation"],
        }
        self._complete(round_, base, result, facts)

    def _secure_failed(self, round_: Round, exc: SecAggError) -> None:
        log.error("round %s: secure aggregation failed: %s", round_.round_id, exc)
        self.audit.append(
            "round_failed", {"round_id": round_.round_id, "reason": f"{exc.reason}: {exc.detail}"}
        )
        self.store.mark_failed(round_.round_id, f"secure aggregation: {exc.reason}", time.time())

    def _complete(
        self, round_: Round, base: GlobalAdapter, result: Aggregate, facts: dict[str, object]
    ) -> None:
        """Save, record and publish a round's new global adapter, in the steps a restart can
        resume from (docs/crash-safety.md): reserve the version, write the file, audit it,
        mark the round aggregated, start the rollout, queue the file, mark it published."""
        version = round_.result_version or self.rollout.next_version(
            max(self.current.version, *self.store.unrecorded_versions(), 0)
        )
        self.store.reserve_version(round_.round_id, version)
        new = GlobalAdapter(version, result.factors, base.alpha, base.frozen_a)
        path = save_global_adapter(
            self._global_path(new.version),
            new,
            self.model_info.architecture,
            self.model_info.sha256,
            round_.round_id,
        )
        failpoint("aggregator.global_saved")
        self.audit.append(
            "round_aggregated",
            {
                "round_id": round_.round_id,
                "close_reason": round_.close_reason,
                **facts,
                "global_version": new.version,
                "global_sha256": file_sha256(path),
                "global_bytes": path.stat().st_size,
                "signer": self.key.node_id,
            },
        )
        failpoint("aggregator.round_audited")
        self._record(round_, new, str(result.report.get("strategy")))

    def _adopt_audited(self, round_: Round, audited: dict[str, object]) -> None:
        """The crash came after the audit line: the file it names is the round's result (it
        is not aggregated again, which could give other bytes than the audit says)."""
        version = int(str(audited["global_version"]))
        path = self._global_path(version)
        if not path.exists() or file_sha256(path) != audited["global_sha256"]:
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
        meta: dict[str, str | int | float | bool] = {
            "round_id": round_.round_id,
            "global_version": version,
        }
        if not self.transport.outbox.holds_artifact("global", meta):  # queued before a crash
            self.transport.sender.send_artifact("global", path, list(recipients), meta=meta)
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
        meta: dict[str, str | int | float | bool] = {
            "round_id": round_id,
            "global_version": version,
        }
        self.transport.sender.send_artifact(
            "global", self._global_path(version), list(recipients), meta=meta
        )

    def _send_command(self, command: Command) -> None:
        self.transport.publish("command", command, Priority.HIGH)

    # -- global adapter files -----------------------------------------------------------------

    def _global_path(self, version: int) -> Path:
        return self.globals_dir / f"global-v{version}.gguf"

    def _load_or_create_global(self) -> GlobalAdapter:
        versions = sorted(
            int(p.stem.removeprefix("global-v")) for p in self.globals_dir.glob("global-v*.gguf")
        )
        skip = self.rollout.blocked() | self.store.unrecorded_versions()
        for version in reversed([v for v in versions if v not in skip]):
            try:
                return load_global_adapter(self._global_path(version))
            except (AdapterError, ValueError) as exc:
                quarantine(self._global_path(version), exc)
        training = self.config.training
        initial = initial_global_adapter(
            self._shapes,
            list(training.targets),
            rank=training.rank,
            alpha=training.alpha,
            seed=training.seed,
            frozen_a=training.freeze_a,
            top_layers=training.top_layers,
        )
        save_global_adapter(
            self._global_path(0),
            initial,
            self.model_info.architecture,
            self.model_info.sha256,
            "initial",
        )
        return initial


def _strategy_name(audited: dict[str, object]) -> str:
    """The strategy named in a round_aggregated record (its report's "strategy")."""
    report = audited.get("strategy")
    return str(report.get("strategy", "")) if isinstance(report, dict) else ""
