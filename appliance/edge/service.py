"""The edge box's work, one step at a time: data, rounds, updates, global adapters.

`step()` (the daemon's main loop) pulls the transport's inbound events and handles them,
polls the training thread and ingests the spool, so the model and the state are touched by
one thread only. Other threads see only what the main loop hands them: the health reporter reads
a `DaemonState` snapshot the step replaces (one immutable object, swapped whole), and the
inference API pauses the current training run through its thread-safe pause switch.
"""

import logging
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from appliance.config import EdgeConfig
from appliance.data.records import Record
from appliance.data.spool import Spool
from appliance.edge.evaluation import compare, held_out
from appliance.edge.global_intake import (
    BaseMissingError,
    BoxModel,
    rebuild,
    remove_stale_rebuilds,
)
from appliance.edge.plant_set import PlantSet, plant_fields, score_local, score_local_late
from appliance.edge.protocols import box_protocols
from appliance.edge.solo import SoloBaseline, SoloRun, activity
from appliance.edge.state import OBEYED_KEPT, EdgeState
from appliance.edge.training_run import (
    RunOutcome,
    TrainingRun,
    reap_orphaned_workers,
    write_records,
)
from appliance.errors import AdapterError, ApplianceError, ModelError
from appliance.federation.codec import ErrorFeedback
from appliance.federation.downlink import DeltaError, read_header
from appliance.federation.global_adapter import (
    deltas_from,
    initial_global_adapter,
    load_global_adapter,
)
from appliance.federation.messages import Command, Evaluation, GlobalRequest, RoundAnnouncement
from appliance.federation.protocol import BoxProtocol, LocalUpdate
from appliance.federation.updates import GlobalAdapter
from appliance.identity import TrustStore
from appliance.identity.own_key import node_key
from appliance.llm.adapters import read_adapter
from appliance.llm.gguf_file import file_sha256, open_gguf, tensor_shapes
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Adapter, Runtime
from appliance.llm.texts import chat_template
from appliance.llm.training.supervisor import TrainingRequest
from appliance.privacy.accountant import PrivacyLedgerError
from appliance.privacy.guard import PrivacyGuard
from appliance.serve.edge import EdgeServing
from appliance.system.failpoints import failpoint
from appliance.system.files import copy_durably, quarantine, write_durably
from appliance.system.journal import set_fields
from appliance.system.shutdown import flush_outbox
from appliance.telemetry.metrics import DaemonState
from appliance.telemetry.reporter import HealthReporter
from appliance.transport.events import ArtifactArrived, InboundEvent, MessageArrived
from appliance.transport.node import NodeSettings, TransportNode

log = logging.getLogger(__name__)


def incoming_round_id(path: Path) -> str:
    """The round of an older version's hand-over file `incoming.<round id>.<artifact
    id>.gguf`; a round id may contain dots, the artifact id (a uuid's hex) has none."""
    middle = path.name.removeprefix("incoming.").removesuffix(".gguf")
    round_id, dot, _artifact = middle.rpartition(".")
    return round_id if dot and round_id else "unknown"


class EdgeService:
    """One box."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.node_id = config.identity.node_id
        self.layout = config.layout
        self.layout.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = Runtime.from_settings(config.model)
        self._template = chat_template(Path(self.runtime.info.path))
        self._shapes = tensor_shapes(open_gguf(Path(self.runtime.info.path), ModelError))
        self.spool = Spool(
            config.paths.spool_dir,
            self.layout.state_dir,
            self.node_id,
            config.training.validation_fraction,
        )
        self._state_path = self.layout.state_file
        self.state = EdgeState.load(self._state_path)  # a bad file is moved aside
        reap_orphaned_workers(self.layout.rounds_dir)  # a trainer the killed daemon left running
        if removed := remove_stale_rebuilds(self.layout):  # a delta the daemon died applying
            log.info("removed %d unfinished rebuilt global adapter file(s)", removed)
        self._residual_path = self.layout.residual
        for round_id in self.state.sending:  # prepared before a crash: its residual is final
            self._promote_residual(round_id)
        self.feedback = self._load_feedback()
        self.privacy = PrivacyGuard(config.privacy, self.layout.state_dir)
        self.plant_set = PlantSet(self.layout.plant_set)  # the plant's shared questions
        self.solo = SoloBaseline(  # the local-only baseline, when [evaluation] asks for it
            settings=config.evaluation,
            layout=self.layout,
            runtime=self.runtime,
            template=self._template,
            spool=self.spool,
            plant=self.plant_set,
            state=self.state,
            save=lambda: self.state.save(self._state_path),
            publish=self._publish_evaluations,
            base_shapes=self._shapes,
        )
        self.active: Adapter | None = None
        self.training: TrainingRun | None = None
        self._waiting: RoundAnnouncement | None = None
        self._asked_for: set[int] = set()  # global versions asked for as whole files
        self._waiting_since = 0.0  # when a round began to wait for its base version
        self._box_model = BoxModel(
            self.runtime.info.sha256, self.runtime.info.architecture, self._shapes
        )
        self._next_scan = 0.0
        self._restore_active()
        # an older version's hand-over files (acknowledged, not yet taken): taken once
        self._legacy_handovers = sorted(self.layout.adapters_dir.glob("incoming.*.gguf"))
        aggregator = config.federation.aggregator_id
        settings = NodeSettings(
            config.identity.plant_id,
            config.mqtt,
            config.outbox,
            config.transfer,
            self.layout.transport_dir,
        )
        self.transport = TransportNode(
            node_key(config.identity),
            TrustStore(config.identity.trust_dir),
            settings,
            artifact_senders=(aggregator,),
        )
        self.transport.subscribe(aggregator, "round", RoundAnnouncement)
        self.transport.subscribe(aggregator, "command", Command)
        self._snapshot = DaemonState()  # replaced by each step; read by the health reporter
        self.health = HealthReporter(config, daemon_state=lambda: self._snapshot)
        self.protocols = box_protocols(self.transport, aggregator)  # plain, pairwise-masked
        self.serving = EdgeServing(config, lambda: self.training)  # inference API, if enabled

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker, start the health probes and Sparkplug reporting; first
        queue what a crash left prepared but unsent (an update, an evaluation)."""
        for round_id in list(self.state.sending):
            self._queue_prepared_update(round_id)
        self._publish_evaluations()
        self.transport.start()
        self._snapshot = self._daemon_state()  # the first health report knows the model
        self.health.start()
        self.serving.follow(self.state.active_version, self.state.active_path)
        self.serving.start()

    def stop(self) -> None:
        """Stop training at a step boundary, flush the outbox, then disconnect."""
        self.serving.stop()
        if self.training is not None:
            self.training.resume()
            self.training.stop.set()
            self.training.join(timeout_s=120)
        self.solo.abandon()  # held evaluations go out with the flush, without solo numbers
        set_fields(ROUND=None)
        flush_outbox(self.transport)
        self.health.stop()
        self.transport.stop()
        self.spool.close()
        self.runtime.close()

    def status(self) -> str:
        """One line for `systemctl status`."""
        version = (
            "base model"
            if self.state.active_version is None
            else f"global v{self.state.active_version}"
        )
        train, held = self.spool.counts()
        doing = activity(self.training)
        return f"{doing}; serving {version}; {train} training / {held} held-out records"

    def step(self, now: float | None = None) -> str:
        """Ingest, handle events, follow training; returns the status line."""
        now = time.monotonic() if now is None else now
        if now >= self._next_scan:
            self.spool.ingest()
            self._next_scan = now + self.config.federation.spool_scan_s
        self._take_legacy_handovers()
        while (event := self.transport.next_event()) is not None:
            self.handle(event)
        self.serving.follow(self.state.active_version, self.state.active_path)
        self._ask_for_missing_base(now)
        self._follow_gate()
        for protocol in self.protocols.values():
            protocol.tick()  # a masked update waits for its round's key set
        if self.training is not None and (outcome := self.training.outcome()) is not None:
            run, self.training = self.training, None
            if isinstance(run, SoloRun):
                self.solo.finish(run, outcome)
            else:
                self._finish_round(run, outcome)
                self.training = self.solo.start_after(run)  # None unless [evaluation] asks
            set_fields(ROUND=None)
        self._snapshot = self._daemon_state()
        return self.status()

    def _follow_gate(self) -> None:
        """Pause training while the hardware says no (hot, full disk, memory pressure)."""
        if self.training is None:
            return
        decision = self.health.gate()
        # one vote of two: the inference API also pauses training while it serves
        self.serving.gate(None if decision.allowed else decision.summary())

    def _daemon_state(self) -> DaemonState:
        """What the health reporter publishes about the daemon (made in the main loop)."""
        run = self.training
        progress = run.progress if run else {}
        step, total = progress.get("step"), progress.get("steps_total")
        percent = (
            100.0 * step / total
            if isinstance(step, int) and isinstance(total, int) and total
            else None
        )
        return DaemonState(
            model_sha256=self.runtime.info.sha256,
            adapter_version=None
            if self.state.active_version is None
            else str(self.state.active_version),
            training_state="idle" if run is None else ("paused" if run.paused else "training"),
            training_progress_percent=percent,
            training_gate=self.health.gate().summary(),
            last_round=self.state.done_rounds[-1] if self.state.done_rounds else None,
            outbox_depth=self.transport.outbox.count(),
            dp_epsilon_spent=self.privacy.epsilon_spent,
        )

    def _take_legacy_handovers(self) -> None:
        while self._legacy_handovers:
            path = self._legacy_handovers.pop(0)
            round_id = incoming_round_id(path)
            if self._guarded("global", partial(self._take_global, path, round_id)):
                path.unlink(missing_ok=True)  # else kept: tried again at the next start

    def handle(self, event: InboundEvent) -> None:
        """Take one inbound event (the step pulls them from the transport). A delivered
        global adapter is acknowledged once the state names its outcome; one that fails
        with an error is offered again at the next start."""
        match event:
            case ArtifactArrived(manifest=manifest) if manifest.kind == "global":
                round_id = str(manifest.meta.get("round_id", "unknown"))
                if self._guarded("global", lambda: self._take_global(event.path, round_id)):
                    self.transport.acknowledge(event)
            case ArtifactArrived(manifest=manifest) if manifest.kind == "global_delta":
                round_id = str(manifest.meta.get("round_id", "unknown"))
                if self._guarded("global", lambda: self._take_delta(event.path, round_id)):
                    self.transport.acknowledge(event)
            case ArtifactArrived(manifest=manifest) if manifest.kind == "evaluation_set":
                if self.plant_set.take(manifest, event.path, self.state):  # or refused (logged)
                    self.state.save(self._state_path)
                self.transport.acknowledge(event)
            case ArtifactArrived(manifest=manifest):
                log.warning("ignored artifact of kind %r from %s", manifest.kind, manifest.sender)
                self.transport.acknowledge(event)
            case MessageArrived(message=RoundAnnouncement() as announcement):
                self._guarded("round", lambda: self._join(announcement))
                self.transport.acknowledge(event)
            case MessageArrived(message=Command() as command):
                self._guarded("command", lambda: self._obey(command))  # saved in the state
                self.transport.acknowledge(event)
            case MessageArrived(kind=kind, signer=signer):  # not subscribed to anything else
                log.warning("ignored a %s message from %s", kind, signer)
                self.transport.acknowledge(event)

    def _guarded(self, what: str, work: Callable[[], None]) -> bool:
        """Run one event's work; an `ApplianceError` is logged (the daemon goes on)."""
        try:
            work()
        except ApplianceError as exc:
            log.error("%s: %s", what, exc)
            return False
        return True

    # -- rounds -------------------------------------------------------------------------------

    def _join(self, round_: RoundAnnouncement) -> None:
        if (
            self.node_id not in round_.participants
            or self._done_with(round_.round_id)
            or self.privacy.refusal(round_.round_id) is not None  # epsilon budget (logged)
        ):
            return
        if self.training is not None:
            if self.training.round_id != round_.round_id:
                log.info(
                    "round %s: still %s; not joining", round_.round_id, activity(self.training)
                )
            return
        decision = self.health.gate()
        if not decision.allowed:
            log.info("round %s: not joining now: %s", round_.round_id, decision.summary())
            return
        if round_.base_sha256 != self.runtime.info.sha256:
            log.error(
                "round %s is for base model %s; this box runs %s",
                round_.round_id,
                round_.base_sha256,
                self.runtime.info.sha256,
            )
            return
        base_path = self._global_file(round_)
        if round_.global_version > 0 and base_path is None:
            log.info(
                "round %s: waiting for global adapter v%d", round_.round_id, round_.global_version
            )
            if self._waiting is None or self._waiting.round_id != round_.round_id:
                self._waiting_since = time.monotonic()
            self._waiting = round_
            return
        records = self.spool.records(heldout=False)
        protocol = self._protocol(round_)  # None: logged
        if not records or protocol is None:
            if not records:
                log.warning(
                    "round %s: no training data in the spool yet; not joining", round_.round_id
                )
            return
        protocol.join(round_)  # a secure round: publish this box's mask key
        self._start_training(round_, base_path, records)

    def _protocol(self, round_: RoundAnnouncement) -> BoxProtocol | None:
        protocol = self.protocols.get(round_.plan.protocol)
        if protocol is None:
            log.error(
                "round %s asks for round protocol %r, which this box does not speak",
                round_.round_id,
                round_.plan.protocol,
            )
        return protocol

    def _done_with(self, round_id: str) -> bool:
        """Whether this box has finished the round; also when its state was lost (moved
        aside) but the update is still in the outbox: training again would make a second,
        different update, which the aggregator refuses."""
        if round_id in self.state.done_rounds:
            return True
        if self.transport.outbox.holds_artifact("update", {"round_id": round_id}):
            log.warning(
                "round %s: its update is already in the outbox; not training again", round_id
            )
            self._mark_done(round_id, None)
            return True
        return False

    def _global_file(self, round_: RoundAnnouncement) -> Path | None:
        if round_.global_version == 0:
            return None
        path = self._global_path(round_.global_version)
        if path.exists() and file_sha256(path) == round_.global_artifact_sha256:
            return path
        return None

    def _start_training(
        self, round_: RoundAnnouncement, base_path: Path | None, records: list[Record]
    ) -> None:
        plan = round_.plan
        settings = self.config.training.model_copy(
            update={
                **plan.lora.model_dump(),  # the same names in the config and the plan
                "learning_rate": plan.learning_rate,
                "epochs": plan.epochs,
                "max_steps": plan.max_steps,
                "validation_fraction": 0.0,
            }
        )
        work = self.layout.round_dir(round_.round_id)
        request = TrainingRequest(
            model=self.runtime.info.path,
            data=write_records(work / "train.jsonl", records),
            out=work / "local.gguf",
            settings=settings,
            cache_dir=self.layout.cache_dir,
            start_adapter=base_path,
            stall_timeout_s=self.config.federation.train_stall_timeout_s,
            policy=LicensePolicy.from_settings(self.config.model),
            evaluate=False,
        )
        self.training = TrainingRun(round_, request, len(records))
        set_fields(ROUND=round_.round_id)  # journal field of the lines that follow
        self.training.start()
        log.info(
            "round %s: training on %d records (global v%d)",
            round_.round_id,
            len(records),
            round_.global_version,
        )

    def _finish_round(self, run: TrainingRun, outcome: RunOutcome) -> None:
        round_ = run.announcement
        if outcome.result is None or outcome.result.adapter is None:
            log.error("round %s: training failed: %s", run.round_id, outcome.error or "no adapter")
            self._mark_done(round_.round_id, None)
            return
        out = Path(outcome.result.adapter)
        own = held_out(
            self.runtime, self.spool.records(heldout=True), self._template, self.config.evaluation
        )
        local_nll = score_local(  # the numbers wait in the state, saved with the round
            self.runtime,
            out,
            own,
            plant=self.plant_set,
            template=self._template,
            settings=self.config.evaluation,
            state=self.state,
            round_id=round_.round_id,
        )
        base = self._round_base(round_)
        try:  # DP (when on) noises the raw delta before error feedback sees it
            deltas, dp = self.privacy.privatize(
                round_.round_id, deltas_from(read_adapter(out), base)
            )
        except PrivacyLedgerError as exc:
            log.error("%s", exc)
            self._mark_done(round_.round_id, local_nll)
            return
        corrected = self.feedback.corrected(deltas)
        protocol = self._protocol(round_)
        assert protocol is not None  # checked when the box joined
        local = LocalUpdate(corrected, run.records, base, dp)
        prepared = protocol.prepare(round_, local)
        self.feedback.remember(corrected, prepared.credited)
        self._prepare_update(round_.round_id, prepared.blob, local_nll, outcome.result.seconds)
        if prepared.blob is None:
            log.info("round %s: update prepared; the round protocol sends it", round_.round_id)
            return
        self._queue_prepared_update(round_.round_id)
        log.info(
            "round %s: update sent, %d bytes (%.1fx smaller than dense fp32); local held-out "
            "NLL %.4f",
            round_.round_id,
            len(prepared.blob),
            prepared.dense_fp32_bytes / max(1, len(prepared.blob)),
            local_nll,
        )

    def _prepare_update(
        self, round_id: str, blob: bytes | None, local_nll: float, seconds: float
    ) -> None:
        """Write the update and its residual beside the round, then mark the round done and
        'sending' in one state write: from there a restart sends these bytes (never a
        retrained, different update the aggregator would refuse), and the residual belongs
        to an update that is sent. Without a blob (the protocol sends it itself) the residual
        is the box's at once."""
        self.layout.round_dir(round_id).mkdir(parents=True, exist_ok=True)
        if blob is None:
            self.feedback.save(self._residual_path)
        else:
            write_durably(self.layout.staged_update(round_id), blob)
            self.feedback.save(self.layout.staged_residual(round_id))
            self.state.sending.append(round_id)
        self.state.done_rounds.append(round_id)
        self.state.local_nll[round_id] = local_nll
        self.state.train_seconds[round_id] = seconds
        self.state.save(self._state_path)  # the commit point

    def _queue_prepared_update(self, round_id: str) -> None:
        """Put a prepared update in the outbox unless it is there already; repeatable, so a
        restart finishes whatever step a crash interrupted."""
        self._promote_residual(round_id)
        update = self.layout.staged_update(round_id)
        if self.transport.outbox.holds_artifact("update", {"round_id": round_id}):
            log.info("round %s: update already in the outbox", round_id)
        elif update.exists():  # else: sent and acknowledged before the crash, or lost
            self.transport.sender.send_artifact(
                "update",
                update.read_bytes(),
                [self.config.federation.aggregator_id],
                meta={"round_id": round_id},
            )
        else:
            log.error("round %s: the prepared update %s is gone; not sent", round_id, update)
        failpoint("edge.update_queued")
        self.state.sending.remove(round_id)
        self.state.save(self._state_path)
        update.unlink(missing_ok=True)

    def _promote_residual(self, round_id: str) -> None:
        """The residual staged with a prepared update becomes the box's residual."""
        staged = self.layout.staged_residual(round_id)
        if staged.exists():
            staged.replace(self._residual_path)

    def _load_feedback(self) -> ErrorFeedback:
        """The residual; one that cannot be read is moved aside (the next update carries
        less correction, which costs a little accuracy and nothing else)."""
        try:
            return ErrorFeedback.load(self._residual_path)
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            quarantine(self._residual_path, exc)
            return ErrorFeedback()

    def _round_base(self, round_: RoundAnnouncement) -> GlobalAdapter:
        path = self._global_file(round_)
        if path is not None:
            return load_global_adapter(path)
        return initial_global_adapter(self._shapes, round_.plan.lora)

    def _mark_done(self, round_id: str, local_nll: float | None) -> None:
        self.state.done_rounds.append(round_id)
        if local_nll is not None:
            self.state.local_nll[round_id] = local_nll
        self.state.save(self._state_path)

    # -- global adapters ------------------------------------------------------------------------

    def _restore_active(self) -> None:
        """Serve what the state names; an adapter file that cannot be loaded is moved aside
        and the box serves the base model (rather than failing at every start)."""
        if not self.state.active_path:
            return
        path = Path(self.state.active_path)
        try:
            self.active = self.runtime.load_adapter(path)
        except AdapterError as exc:
            if path.exists():
                quarantine(path, exc)
            log.error(
                "cannot restore global adapter v%s; serving the base model",
                self.state.active_version,
            )
            self.state.active_path, self.state.active_version = None, None
            self.state.save(self._state_path)
            return
        self.runtime.set_adapters([(self.active, 1.0)])
        log.info("serving global adapter v%s", self.state.active_version)

    def _global_path(self, version: int) -> Path:
        return self.layout.global_adapter(version)

    def _take_global(self, incoming: Path, round_id: str) -> None:
        """Take a delivered global adapter. It is acknowledged only once the state names
        the outcome, so a crash at any step repeats the work at the next start; a
        version already evaluated is not taken twice (the aggregator may send one again
        after a crash of its own), so its evaluation is published once."""
        try:
            version = load_global_adapter(incoming).version
        except (AdapterError, ValueError) as exc:
            quarantine(incoming, exc)
            log.error("refused a global adapter: %s", exc)
            return
        if self._already_taken(version):
            log.info(
                "global adapter v%d delivered again: already installed and evaluated; ignored",
                version,
            )
        else:
            self._install(incoming, version, round_id)
        if self._waiting is not None and self._waiting.global_version == version:
            waiting, self._waiting = self._waiting, None
            self._join(waiting)

    def _already_taken(self, version: int) -> bool:
        """Whether global `version` is installed and evaluated (a repeat delivery, as a file
        or a delta, is then ignored and its evaluation not published twice)."""
        return version in self.state.evaluated_versions and self._global_path(version).exists()

    def _take_delta(self, incoming: Path, round_id: str) -> None:
        """Rebuild a global adapter from a delta and take it like a delivered file; a delta
        this box cannot use (base missing or different, corrupt) is answered by asking for
        the whole file, and a version already installed and evaluated is ignored."""
        blob = incoming.read_bytes()
        try:
            header, body_at = read_header(blob, self.config.transfer.max_artifact_mb * 1024 * 1024)
        except DeltaError as exc:
            log.error("refused a global delta: %s", exc)  # no version to ask for: the
            return  # next round's announcement names it, and _join asks then
        version = header.to_version
        if self._already_taken(version):
            log.info("global adapter v%d delivered again as a delta; ignored", version)
            return
        try:
            rebuilt = rebuild(header, blob[body_at:], self.layout, self._box_model)
        except DeltaError as exc:
            level = logging.INFO if isinstance(exc, BaseMissingError) else logging.ERROR
            log.log(level, "global delta to v%d not used: %s", version, exc)
            self._ask_for_global(version, str(exc))
            return
        try:
            self._take_global(rebuilt, round_id)
        finally:
            rebuilt.unlink(missing_ok=True)

    def _ask_for_missing_base(self, now: float) -> None:
        """A round waiting longer for its base version than a sender takes to re-announce an
        artifact: this box missed it (it was away, or lost the file); ask for the whole file.
        Not at once: the delta is usually still on its way when the next round opens."""
        waiting = self._waiting
        patience = self.config.transfer.resend_after_s
        if waiting is not None and now - self._waiting_since >= patience:
            self._ask_for_global(waiting.global_version, "a round starts from it; not here")

    def _ask_for_global(self, version: int, reason: str) -> None:
        """Ask the aggregator for the whole file of `version` (once per version per run)."""
        if version in self._asked_for:
            return
        self._asked_for.add(version)
        log.info("asking the aggregator for the whole global adapter v%d (%s)", version, reason)
        request = GlobalRequest(global_version=version, reason=reason[:300])
        self.transport.publish("global_request", request)

    def _install(self, incoming: Path, version: int, round_id: str) -> None:
        """Copy into place, evaluate against what is served, activate if newer; activation
        and the evaluation to send are saved in one state write."""
        path = copy_durably(incoming, self._global_path(version))
        failpoint("edge.global_installing")
        try:
            candidate = self.runtime.load_adapter(path)
        except AdapterError as exc:
            quarantine(path, exc)
            return
        held = held_out(
            self.runtime,
            self.spool.records(heldout=True),
            self._template,
            self.config.evaluation,
        )
        scores = compare(self.runtime, held, candidate, self.active, self.config.evaluation)
        plant = self.plant_set.compare(
            self.runtime, candidate, self._template, self.config.evaluation
        )
        score_local_late(  # saved with the evaluation below
            self.runtime,
            self.layout.round_dir(round_id) / "local.gguf",
            plant=self.plant_set,
            template=self._template,
            settings=self.config.evaluation,
            state=self.state,
            round_id=round_id,
        )
        served = self.state.active_version
        pinned = self.state.pinned_version is not None
        newer = self.state.active_version is None or version > self.state.active_version
        if version == self.state.pinned_version and version != self.state.active_version:
            self._activate(candidate, version, path)  # the file a pin waited for
        elif newer and not pinned:
            self._activate(candidate, version, path)
        else:
            self.runtime.free_adapter(candidate)
        activated = self.state.active_version == version
        self.state.evaluated_versions.append(version)
        if scores.base.tokens == 0:  # no held-out records yet: no number (NaN is not one)
            log.warning("global adapter v%d: no held-out records to evaluate it on", version)
        else:
            evaluation = Evaluation(
                round_id=round_id or "unknown",
                global_version=version,
                node_id=self.node_id,
                heldout_tokens=scores.base.tokens,
                nll_base=scores.base.nll,
                nll_local=self.state.local_nll.get(round_id),
                nll_global=scores.candidate.nll,
                activated=activated,
                current_version=served,
                nll_current=scores.current.nll,
                task_records=scores.task_records,
                task_base=scores.base.task,
                task_current=scores.current.task,
                task_global=scores.candidate.task,
                train_seconds=self.state.train_seconds.get(round_id),
                task_local=self.state.local_task.get(round_id),
                **plant_fields(plant, self.state, round_id),
            )
            self.solo.add_evaluation(evaluation)  # held while the round's solo run trains
        self.state.save(self._state_path)  # the commit point
        failpoint("edge.global_activated")
        self._publish_evaluations()
        log.info(
            "global adapter v%d: held-out NLL %.4f (base %.4f)%s",
            version,
            scores.candidate.nll,
            scores.base.nll,
            "" if activated else "; not activated",
        )

    def _publish_evaluations(self) -> None:
        """Queue the evaluations the state holds, then forget them (a crash in between
        sends one twice: the one window left, a fraction of a millisecond wide)."""
        if not self.state.unsent_evaluations:
            return
        for raw in self.state.unsent_evaluations:
            try:
                evaluation = Evaluation.model_validate(raw)
            except ValidationError as exc:
                log.error("dropped an evaluation the state holds but cannot send: %s", exc)
                continue
            self.transport.publish("evaluation", evaluation)
        self.state.unsent_evaluations = []
        self.state.save(self._state_path)

    def _activate(self, adapter: Adapter, version: int, path: Path) -> None:
        """Hot-swap: the new adapter serves from the next request; the old one is kept.
        The caller saves the state (with whatever else belongs to the same step)."""
        previous = self.active
        self.runtime.set_adapters([(adapter, 1.0)])
        if previous is not None:
            self.runtime.free_adapter(previous)
        self.state.previous_version, self.state.previous_path = (
            self.state.active_version,
            self.state.active_path,
        )
        self.state.active_version, self.state.active_path = version, str(path)
        self.active = adapter

    def _roll_back_to(self, version: int) -> None:
        """Serve `version` again (0: the base model); a pinned box keeps its pin."""
        if self.state.pinned_version is not None:
            pinned = self.state.pinned_version
            log.warning("rollback to v%d ignored: pinned to v%d", version, pinned)
            return
        if (self.state.active_version or 0) == version:
            return
        path = self._global_path(version)
        if version > 0 and path.exists():
            self._activate(self.runtime.load_adapter(path), version, path)
        elif version == 0:  # version 0 has B = 0: the base model itself
            self.runtime.set_adapters([])
            if self.active is not None:
                self.runtime.free_adapter(self.active)
            self.state.previous_version, self.state.previous_path = (
                self.state.active_version,
                self.state.active_path,
            )
            self.active, self.state.active_version, self.state.active_path = None, None, None
        else:
            log.error("cannot roll back to global adapter v%d: its file is not here", version)
            return
        log.warning("rolled back to global adapter v%d on command", version)

    def _first_delivery(self, command: Command) -> bool:
        """Whether an operator command is new; it is remembered as carried out (saved with
        the state the command changes)."""
        if command.command_id is None:
            return True
        if command.command_id in self.state.obeyed_commands:
            log.info("command %d delivered again: already carried out", command.command_id)
            return False
        kept = self.state.obeyed_commands[-(OBEYED_KEPT - 1) :]
        self.state.obeyed_commands = [*kept, command.command_id]
        return True

    def _obey(self, command: Command) -> None:
        if self.node_id not in command.nodes or not self._first_delivery(command):
            return
        if command.action == "unpin":
            self.state.pinned_version = None
        elif command.action == "rollback" and command.global_version is not None:
            self._roll_back_to(command.global_version)
        elif command.action == "rollback" and self.state.previous_path:
            adapter = self.runtime.load_adapter(Path(self.state.previous_path))
            self._activate(
                adapter, self.state.previous_version or 0, Path(self.state.previous_path)
            )
            log.warning("rolled back to global adapter v%s on command", self.state.active_version)
        elif command.action == "pin" and command.global_version is not None:
            path = self._global_path(command.global_version)
            self.state.pinned_version = command.global_version
            if path.exists():
                self._activate(self.runtime.load_adapter(path), command.global_version, path)
            else:
                log.warning("pinned to global v%d; waiting for its file", command.global_version)
        self.state.save(self._state_path)
