"""The edge box's work, one step at a time: data, rounds, updates, global adapters.

Transport callbacks only queue events; `step()` (the daemon's main loop) handles them, polls
the training thread and ingests the spool, so the model and the state are touched by one
thread only.
"""

import logging
import queue
import shutil
import time
import zipfile
from pathlib import Path

from pydantic import ValidationError

from appliance.config import EdgeConfig
from appliance.data.records import Record
from appliance.data.spool import Spool
from appliance.edge.evaluation import compare, held_out, nll_of_file
from appliance.edge.state import EdgeState
from appliance.edge.training_run import (
    RunOutcome,
    TrainingRun,
    reap_orphaned_workers,
    write_records,
)
from appliance.errors import AdapterError, ApplianceError, ModelError
from appliance.federation.codec import ErrorFeedback, RoundContext, encode_update
from appliance.federation.global_adapter import (
    deltas_from,
    initial_global_adapter,
    load_global_adapter,
)
from appliance.federation.messages import Command, Evaluation, RoundAnnouncement
from appliance.federation.updates import GlobalAdapter
from appliance.identity import TrustStore
from appliance.identity.own_key import node_key
from appliance.llm.adapters import read_adapter
from appliance.llm.gguf_file import file_sha256, open_gguf, tensor_shapes
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Adapter, Runtime
from appliance.llm.texts import chat_template, record_text
from appliance.llm.training.supervisor import TrainingRequest
from appliance.privacy.accountant import PrivacyLedgerError
from appliance.privacy.guard import PrivacyGuard
from appliance.privacy.secagg.daemon import SecureBox
from appliance.serve.edge import EdgeServing
from appliance.system.failpoints import failpoint
from appliance.system.files import copy_durably, quarantine, write_durably
from appliance.system.journal import set_fields
from appliance.system.shutdown import flush_outbox
from appliance.telemetry.metrics import DaemonState
from appliance.telemetry.reporter import HealthReporter
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.receiver import ReceivedArtifact

log = logging.getLogger(__name__)

Event = tuple[str, object]
UPDATE_FILE = "update.bin"
STAGED_RESIDUAL = "residual.npz"


def incoming_round_id(path: Path) -> str:
    """The round of a hand-over file `incoming.<round id>.<artifact id>.gguf`; a round id
    may contain dots, the artifact id (a uuid's hex) has none."""
    middle = path.name.removeprefix("incoming.").removesuffix(".gguf")
    round_id, dot, _artifact = middle.rpartition(".")
    return round_id if dot and round_id else "unknown"


class EdgeService:
    """One box."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.node_id = config.identity.node_id
        self.state_dir = config.paths.state_dir
        self.adapters_dir = self.state_dir / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = Runtime.from_settings(config.model)
        self._template = chat_template(Path(self.runtime.info.path))
        self._shapes = tensor_shapes(open_gguf(Path(self.runtime.info.path), ModelError))
        self.spool = Spool(
            config.paths.spool_dir,
            self.state_dir,
            self.node_id,
            config.training.validation_fraction,
        )
        self._state_path = self.state_dir / "edge-state.json"
        self.state = EdgeState.load(self._state_path)  # a bad file is moved aside
        self._rounds_dir = self.state_dir / "rounds"
        reap_orphaned_workers(self._rounds_dir)  # a trainer the killed daemon left running
        self._residual_path = self.state_dir / "residual.npz"
        for round_id in self.state.sending:  # prepared before a crash: its residual is final
            self._promote_residual(round_id)
        self.feedback = self._load_feedback()
        self.privacy = PrivacyGuard(config.privacy, self.state_dir)
        self.active: Adapter | None = None
        self.training: TrainingRun | None = None
        self._waiting: RoundAnnouncement | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._next_scan = 0.0
        self._restore_active()
        for pending in sorted(self.adapters_dir.glob("incoming.*.gguf")):  # handed over, not
            self._events.put(("global", (pending, incoming_round_id(pending))))  # yet taken
        aggregator = config.federation.aggregator_id
        settings = NodeSettings(
            config.identity.plant_id,
            config.mqtt,
            config.outbox,
            config.transfer,
            self.state_dir / "transport",
        )
        self.transport = TransportNode(
            node_key(config.identity),
            TrustStore(config.identity.trust_dir),
            settings,
            self._on_artifact,
            artifact_senders=(aggregator,),
        )
        self.transport.on_message(
            aggregator, "round", RoundAnnouncement, lambda m, _s: self._events.put(("round", m))
        )
        self.transport.on_message(
            aggregator, "command", Command, lambda m, _s: self._events.put(("command", m))
        )
        self.health = HealthReporter(config, daemon_state=self._daemon_state)
        self.secure = SecureBox(self.transport, aggregator)  # pairwise-masked rounds
        self.serving = EdgeServing(config, lambda: self.training)  # inference API, if enabled

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker, start the health probes and Sparkplug reporting; first
        queue what a crash left prepared but unsent (an update, an evaluation)."""
        for round_id in list(self.state.sending):
            self._queue_prepared_update(round_id)
        self._publish_evaluations()
        self.transport.start()
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
        doing = f"training {self.training.round_id}" if self.training else "idle"
        return f"{doing}; serving {version}; {train} training / {held} held-out records"

    def step(self, now: float | None = None) -> str:
        """Ingest, handle events, follow training; returns the status line."""
        now = time.monotonic() if now is None else now
        if now >= self._next_scan:
            self.spool.ingest()
            self._next_scan = now + self.config.federation.spool_scan_s
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                break
            self._handle(kind, payload)
        self.serving.follow(self.state.active_version, self.state.active_path)
        self._follow_gate()
        self.secure.tick()  # a masked update waits for its round's key set
        if self.training is not None and (outcome := self.training.outcome()) is not None:
            run, self.training = self.training, None
            self._finish_round(run, outcome)
            set_fields(ROUND=None)
        return self.status()

    def _follow_gate(self) -> None:
        """Pause training while the hardware says no (hot, full disk, memory pressure)."""
        if self.training is None:
            return
        decision = self.health.gate()
        # one vote of two: the inference API also pauses training while it serves
        self.serving.gate(None if decision.allowed else decision.summary())

    def _daemon_state(self) -> DaemonState:
        """What the health reporter publishes about the daemon (read from its thread)."""
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

    def _handle(self, kind: str, payload: object) -> None:
        try:
            if kind == "round":
                self._join(payload)  # type: ignore[arg-type]
            elif kind == "global":
                self._take_global(*payload)  # type: ignore[misc]
            elif kind == "command":
                self._obey(payload)  # type: ignore[arg-type]
        except ApplianceError as exc:
            log.error("%s: %s", kind, exc)

    def _on_artifact(self, artifact: ReceivedArtifact) -> None:
        manifest = artifact.manifest
        if manifest.kind != "global":
            log.warning("ignored artifact of kind %r from %s", manifest.kind, manifest.sender)
            return
        # acknowledged once this returns: the file is the hand-over and survives a crash
        round_id = str(manifest.meta.get("round_id", "unknown"))
        target = self.adapters_dir / f"incoming.{round_id}.{manifest.artifact_id}.gguf"
        shutil.move(artifact.path, target)
        self._events.put(("global", (target, round_id)))

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
                    "round %s: still training %s; not joining",
                    round_.round_id,
                    self.training.round_id,
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
            self._waiting = round_
            return
        records = self.spool.records(heldout=False)
        if not records:
            log.warning("round %s: no training data in the spool yet; not joining", round_.round_id)
            return
        self.secure.join(round_)  # a secure round: publish this box's mask key
        self._start_training(round_, base_path, records)

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
                "rank": plan.rank,
                "alpha": plan.alpha,
                "targets": list(plan.targets),
                "top_layers": plan.top_layers,
                "seed": plan.seed,
                "freeze_a": plan.frozen_a,
                "learning_rate": plan.learning_rate,
                "epochs": plan.epochs,
                "max_steps": plan.max_steps,
                "validation_fraction": 0.0,
            }
        )
        work = self.state_dir / "rounds" / round_.round_id
        request = TrainingRequest(
            model=self.runtime.info.path,
            data=write_records(work / "train.jsonl", records),
            out=work / "local.gguf",
            settings=settings,
            cache_dir=self.config.paths.cache_dir or self.state_dir / "cache",
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
        local_nll = nll_of_file(self.runtime, self._heldout_texts(), out)
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
        if round_.plan.secure_aggregation is not None:  # masked, sent once the key set is here
            credited, _ = self.secure.submit(round_, corrected, run.records, base)
            self.feedback.remember(corrected, credited)
            self.feedback.save(self._residual_path)
            self._mark_done(round_.round_id, local_nll)
            self.state.train_seconds[round_.round_id] = outcome.result.seconds
            self.state.save(self._state_path)
            return
        context = RoundContext(
            self.node_id, round_.round_id, round_.base_sha256, round_.global_version
        )
        encoded = encode_update(corrected, run.records, round_.plan.codec, context, dp)
        self.feedback.remember(corrected, encoded.sent)
        self._prepare_update(round_.round_id, encoded.blob, local_nll, outcome.result.seconds)
        self._queue_prepared_update(round_.round_id)
        log.info(
            "round %s: update sent, %d bytes (%.1fx smaller than dense fp32); local held-out "
            "NLL %.4f",
            round_.round_id,
            len(encoded.blob),
            encoded.ratio,
            local_nll,
        )

    def _prepare_update(self, round_id: str, blob: bytes, local_nll: float, seconds: float) -> None:
        """Write the update and its residual beside the round, then mark the round done and
        'sending' in one state write: from there a restart sends these bytes (never a
        retrained, different update the aggregator would refuse), and the residual belongs
        to an update that is sent."""
        work = self._rounds_dir / round_id
        work.mkdir(parents=True, exist_ok=True)
        write_durably(work / UPDATE_FILE, blob)
        self.feedback.save(work / STAGED_RESIDUAL)
        self.state.done_rounds.append(round_id)
        self.state.local_nll[round_id] = local_nll
        self.state.train_seconds[round_id] = seconds
        self.state.sending.append(round_id)
        self.state.save(self._state_path)  # the commit point

    def _queue_prepared_update(self, round_id: str) -> None:
        """Put a prepared update in the outbox unless it is there already; repeatable, so a
        restart finishes whatever step a crash interrupted."""
        self._promote_residual(round_id)
        update = self._rounds_dir / round_id / UPDATE_FILE
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
        staged = self._rounds_dir / round_id / STAGED_RESIDUAL
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
        plan = round_.plan
        return initial_global_adapter(
            self._shapes,
            list(plan.targets),
            rank=plan.rank,
            alpha=plan.alpha,
            seed=plan.seed,
            frozen_a=plan.frozen_a,
            top_layers=plan.top_layers,
        )

    def _mark_done(self, round_id: str, local_nll: float | None) -> None:
        self.state.done_rounds.append(round_id)
        if local_nll is not None:
            self.state.local_nll[round_id] = local_nll
        self.state.save(self._state_path)

    def _heldout_texts(self) -> list[str]:
        return [record_text(r, self._template) for r in self.spool.records(heldout=True)]

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
        return self.adapters_dir / f"global-v{version}.gguf"

    def _take_global(self, incoming: Path, round_id: str) -> None:
        """Take a delivered global adapter. The hand-over file goes only once the state
        names the outcome, so a crash at any step repeats the work at the next start; a
        version already evaluated is not taken twice (the aggregator may send one again
        after a crash of its own), so its evaluation is published once."""
        try:
            version = load_global_adapter(incoming).version
        except (AdapterError, ValueError) as exc:
            quarantine(incoming, exc)
            log.error("refused a global adapter: %s", exc)
            return
        if version in self.state.evaluated_versions and self._global_path(version).exists():
            log.info(
                "global adapter v%d delivered again: already installed and evaluated; ignored",
                version,
            )
        else:
            self._install(incoming, version, round_id)
        incoming.unlink(missing_ok=True)
        if self._waiting is not None and self._waiting.global_version == version:
            waiting, self._waiting = self._waiting, None
            self._join(waiting)

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
            )
            self.state.unsent_evaluations.append(evaluation.model_dump(mode="json"))
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

    def _obey(self, command: Command) -> None:
        if self.node_id not in command.nodes:
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
