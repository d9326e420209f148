"""The edge box's work, one step at a time: data, rounds, updates, global adapters.

Transport callbacks only queue events; `step()` (the daemon's main loop) handles them, polls
the training thread and ingests the spool, so the model and the state are touched by one
thread only.
"""

import logging
import queue
import shutil
import time
from pathlib import Path

from appliance.config import EdgeConfig
from appliance.data.records import Record
from appliance.data.spool import Spool
from appliance.edge.evaluation import compare, held_out, nll_of_file
from appliance.edge.state import EdgeState
from appliance.edge.training_run import RunOutcome, TrainingRun, write_records
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
from appliance.system.journal import set_fields
from appliance.system.shutdown import flush_outbox
from appliance.telemetry.metrics import DaemonState
from appliance.telemetry.reporter import HealthReporter
from appliance.transport.node import NodeSettings, TransportNode
from appliance.transport.receiver import ReceivedArtifact

log = logging.getLogger(__name__)

Event = tuple[str, object]


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
        self.state = EdgeState.load(self._state_path)
        self._residual_path = self.state_dir / "residual.npz"
        self.feedback = ErrorFeedback.load(self._residual_path)
        self.privacy = PrivacyGuard(config.privacy, self.state_dir)
        self.active: Adapter | None = None
        self.training: TrainingRun | None = None
        self._waiting: RoundAnnouncement | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._next_scan = 0.0
        self._restore_active()
        for pending in sorted(self.adapters_dir.glob("incoming.*.gguf")):
            self._events.put(("global", (pending, pending.name.split(".")[1])))
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
        """Connect to the broker, start the health probes and Sparkplug reporting."""
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
            or round_.round_id in self.state.done_rounds
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

    def _global_file(self, round_: RoundAnnouncement) -> Path | None:
        if round_.global_version == 0:
            return None
        path = self.adapters_dir / f"global-v{round_.global_version}.gguf"
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
        self.feedback.save(self._residual_path)
        self.transport.sender.send_artifact(
            "update",
            encoded.blob,
            [self.config.federation.aggregator_id],
            meta={"round_id": round_.round_id},
        )
        self._mark_done(round_.round_id, local_nll)
        self.state.train_seconds[round_.round_id] = outcome.result.seconds
        self.state.save(self._state_path)
        log.info(
            "round %s: update sent, %d bytes (%.1fx smaller than dense fp32); local held-out "
            "NLL %.4f",
            round_.round_id,
            len(encoded.blob),
            encoded.ratio,
            local_nll,
        )

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
        if self.state.active_path and Path(self.state.active_path).exists():
            try:
                self.active = self.runtime.load_adapter(Path(self.state.active_path))
                self.runtime.set_adapters([(self.active, 1.0)])
                log.info("serving global adapter v%s", self.state.active_version)
            except AdapterError as exc:
                log.error("cannot restore the active adapter, serving the base model: %s", exc)
                self.state.active_path, self.state.active_version = None, None

    def _take_global(self, incoming: Path, round_id: str) -> None:
        try:
            version = load_global_adapter(incoming).version
        except (AdapterError, ValueError) as exc:
            incoming.unlink(missing_ok=True)
            log.error("refused a global adapter: %s", exc)
            return
        path = self.adapters_dir / f"global-v{version}.gguf"
        incoming.replace(path)
        candidate = self.runtime.load_adapter(path)
        held = held_out(
            self.runtime,
            self.spool.records(heldout=True),
            self._template,
            self.config.evaluation,
        )
        scores = compare(self.runtime, held, candidate, self.active, self.config.evaluation)
        nll_base, tokens, nll_global = scores.base.nll, scores.base.tokens, scores.candidate.nll
        served = self.state.active_version
        pinned = self.state.pinned_version is not None
        newer = self.state.active_version is None or version > self.state.active_version
        if version == self.state.pinned_version and version != self.state.active_version:
            self._activate(candidate, version, path)  # the file a pin waited for
        elif newer and not pinned:
            self._activate(candidate, version, path)
        else:
            self.runtime.free_adapter(candidate)
        if tokens == 0:  # no held-out records yet: no number to report (NaN is not one)
            log.warning("global adapter v%d: no held-out records to evaluate it on", version)
        else:
            self.transport.publish(
                "evaluation",
                Evaluation(
                    round_id=round_id or "unknown",
                    global_version=version,
                    node_id=self.node_id,
                    heldout_tokens=tokens,
                    nll_base=nll_base,
                    nll_local=self.state.local_nll.get(round_id),
                    nll_global=nll_global,
                    activated=self.state.active_version == version,
                    current_version=served,
                    nll_current=scores.current.nll,
                    task_records=scores.task_records,
                    task_base=scores.base.task,
                    task_current=scores.current.task,
                    task_global=scores.candidate.task,
                    train_seconds=self.state.train_seconds.get(round_id),
                ),
            )
        log.info(
            "global adapter v%d: held-out NLL %.4f (base %.4f)%s",
            version,
            nll_global,
            nll_base,
            "" if self.state.active_version == version else "; not activated",
        )
        if self._waiting is not None and self._waiting.global_version == version:
            waiting, self._waiting = self._waiting, None
            self._join(waiting)

    def _activate(self, adapter: Adapter, version: int, path: Path) -> None:
        """Hot-swap: the new adapter serves from the next request; the old one is kept."""
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
        self.state.save(self._state_path)

    def _roll_back_to(self, version: int) -> None:
        """Serve `version` again (0: the base model); a pinned box keeps its pin."""
        if self.state.pinned_version is not None:
            pinned = self.state.pinned_version
            log.warning("rollback to v%d ignored: pinned to v%d", version, pinned)
            return
        if (self.state.active_version or 0) == version:
            return
        path = self.adapters_dir / f"global-v{version}.gguf"
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
            path = self.adapters_dir / f"global-v{command.global_version}.gguf"
            self.state.pinned_version = command.global_version
            if path.exists():
                self._activate(self.runtime.load_adapter(path), command.global_version, path)
            else:
                log.warning("pinned to global v%d; waiting for its file", command.global_version)
        self.state.save(self._state_path)
