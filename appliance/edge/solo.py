"""The local-only ("solo") baseline: what this box would know had it never federated.

The round's local adapter starts from the previous global one, so after the first round it
already holds the other lines' knowledge: comparing it with the global says little about
what federating buys. With `[evaluation] solo_baseline` the box also trains, after each
round's federated run, an adapter on the same plan and records that continues its own solo
adapter of the earlier rounds (`EdgeLayout.solo_adapter`) and never a global one; it starts
from scratch (version 0) when there is none yet or the round's LoRA shape changed. It is
scored on the box's held-out data and on the plant set like the local adapter, and reported
beside the global adapter in the round's evaluation. It is never sent: nothing of it goes in
the outbox.

The global adapter of a round often arrives while the solo run still trains. Its
evaluation then waits in the state (`held_evaluations`) until the solo numbers exist; if
the run fails, the box stops, or the daemon restarts while it runs, the held evaluations go
out without solo numbers (logged), so none is lost.
"""

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config.layouts import EdgeLayout
from appliance.config.rollout import EvaluationSettings
from appliance.data.spool import Spool
from appliance.edge.evaluation import held_out, scores_of_file
from appliance.edge.plant_set import PlantSet
from appliance.edge.state import EdgeState
from appliance.edge.training_run import RunOutcome, TrainingRun
from appliance.errors import ApplianceError
from appliance.federation.global_adapter import initial_global_adapter
from appliance.federation.messages import Evaluation, RoundAnnouncement
from appliance.llm.adapters import BASE_SHA256_KEY, read_adapter
from appliance.llm.runtime import Runtime
from appliance.system.files import copy_durably

log = logging.getLogger(__name__)

SOLO_FILE = "solo.gguf"
"""The solo run's output in the round's folder (copied to the box's solo path once scored)."""


class SoloRun(TrainingRun):
    """A round's solo-baseline training: the box is busy, but it makes no update."""


def activity(run: TrainingRun | None) -> str:
    """What the box is doing, for its status line."""
    if run is None:
        return "idle"
    if isinstance(run, SoloRun):
        return f"training solo baseline {run.round_id}"
    return f"training {run.round_id}"


class SoloBaseline:
    """Starts, scores and reports the solo runs of one box (a no-op when not enabled)."""

    def __init__(
        self,
        *,
        settings: EvaluationSettings,
        layout: EdgeLayout,
        runtime: Runtime,
        template: str | None,
        spool: Spool,
        plant: PlantSet,
        state: EdgeState,
        save: Callable[[], None],
        publish: Callable[[], None],
        base_shapes: dict[str, tuple[int, ...]],
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.runtime = runtime
        self.template = template
        self.spool = spool
        self.plant = plant
        self.state = state
        self._save = save
        self._publish = publish
        self._shapes = base_shapes
        if state.solo_round is not None or state.held_evaluations:
            # the worker itself was reaped with the round's pid file
            self._release("the daemon restarted while its solo baseline trained")
            save()  # sent by start(), with the other unsent evaluations

    @property
    def enabled(self) -> bool:
        """Whether this box trains a solo baseline each round."""
        return self.settings.solo_baseline

    # -- training --------------------------------------------------------------------------

    def start_after(self, run: TrainingRun) -> SoloRun | None:
        """Start the solo run of the round `run` trained, when enabled and the round's update
        was prepared (a failed round has nothing to compare with); None otherwise."""
        round_id = run.round_id
        if not self.enabled or isinstance(run, SoloRun) or round_id not in self.state.train_seconds:
            return None
        start = self._start_adapter(run.announcement)
        request = dataclasses.replace(
            run.request, out=run.request.out.with_name(SOLO_FILE), start_adapter=start
        )
        self.state.solo_round = round_id
        self._save()  # from here a restart sends the round's held evaluations
        solo = SoloRun(run.announcement, request, run.records)
        solo.start()
        log.info(
            "round %s: training the solo baseline on %d records (%s; never sent)",
            round_id,
            run.records,
            "continuing its own earlier one" if start else "from scratch",
        )
        return solo

    def _start_adapter(self, round_: RoundAnnouncement) -> Path | None:
        """The box's solo adapter when it fits the round's LoRA shape and base model, else
        None (from scratch: version 0, like a fleet's first round)."""
        path = self.layout.solo_adapter
        if not path.exists():
            return None
        try:
            held = read_adapter(path)
        except ApplianceError as exc:
            log.warning("the solo adapter %s cannot be read (%s); starting it again", path, exc)
            return None
        wanted = initial_global_adapter(self._shapes, round_.plan.lora)
        fits = (
            held.metadata.get(BASE_SHA256_KEY) in (None, self.runtime.info.sha256)
            and held.alpha == wanted.alpha
            and set(held.factors) == set(wanted.factors)
            and all(
                held.factors[name][0].shape == a.shape and held.factors[name][1].shape == b.shape
                for name, (a, b) in wanted.factors.items()
            )
        )
        if not fits:
            log.info(
                "round %s: the solo adapter was made for another LoRA shape or base model; "
                "the solo baseline starts again from scratch",
                round_.round_id,
            )
            return None
        return path

    def finish(self, run: SoloRun, outcome: RunOutcome) -> None:
        """Score the solo run, keep it as the box's solo adapter, fill its round's held
        evaluations in and send them; a failed run sends them without solo numbers."""
        round_id = run.round_id
        result = outcome.result
        if result is None or result.adapter is None or result.stopped:
            why = outcome.error or ("stopped" if result and result.stopped else "no adapter")
            log.error("round %s: the solo baseline failed: %s", round_id, why)
            self._release(f"its solo baseline failed ({why})")
        else:
            try:
                self._score(round_id, Path(result.adapter))
            except ApplianceError as exc:
                log.error("round %s: the solo baseline cannot be scored: %s", round_id, exc)
                self._release(f"its solo baseline could not be scored ({exc})")
            else:
                self._release(None)
        self._save()  # the commit point
        self._publish()

    def _score(self, round_id: str, adapter: Path) -> None:
        """The solo adapter on the box's held-out data and the plant set, into the state; the
        file becomes the box's solo adapter (the next round's solo run continues it)."""
        own = held_out(self.runtime, self.spool.records(heldout=True), self.template, self.settings)
        plant = self.plant.held(self.runtime, self.template, self.settings)
        sets = [own] if plant is None else [own, plant[1]]
        measured = scores_of_file(self.runtime, adapter, sets, self.settings)
        copy_durably(adapter, self.layout.solo_adapter)
        if measured[0].tokens > 0:  # no held-out records: no number (NaN is not one)
            self.state.solo_nll[round_id] = measured[0].nll
        if measured[0].task is not None:
            self.state.solo_task[round_id] = measured[0].task
        if plant is not None and measured[1].tokens > 0:
            self.state.plant_solo_sha256[round_id] = plant[0]
            self.state.plant_solo_nll[round_id] = measured[1].nll
            if measured[1].task is not None:
                self.state.plant_solo_task[round_id] = measured[1].task
        log.info(
            "round %s: solo baseline held-out NLL %.4f%s",
            round_id,
            measured[0].nll,
            "" if plant is None else f", plant set {measured[1].nll:.4f}",
        )

    def abandon(self) -> None:
        """The box stops while a solo run trains: its round's held evaluations are queued
        now (without solo numbers), so the outbox flush sends them."""
        if self.state.solo_round is None and not self.state.held_evaluations:
            return
        self._release("the box stopped before its solo baseline finished")
        self._save()
        self._publish()

    # -- evaluations -----------------------------------------------------------------------

    def add_evaluation(self, evaluation: Evaluation) -> None:
        """Queue a round's evaluation (the caller saves the state): with the round's solo
        numbers when they exist, held while its solo run still trains, else as it is."""
        raw = evaluation.model_dump(mode="json")
        if self.state.solo_round is not None and evaluation.round_id == self.state.solo_round:
            log.info(
                "round %s: the evaluation of global v%d waits for the solo baseline",
                evaluation.round_id,
                evaluation.global_version,
            )
            self.state.held_evaluations.append(raw)
        else:
            self.state.unsent_evaluations.append(self._filled(raw))

    def _release(self, why: str | None) -> None:
        """Move every held evaluation to the unsent ones (filled in when `why` is None, else
        without solo numbers, said why); the solo run is over."""
        for raw in self.state.held_evaluations:
            if why is not None:
                log.warning(
                    "round %s: sending the evaluation of global v%s without solo numbers: %s",
                    raw.get("round_id"),
                    raw.get("global_version"),
                    why,
                )
            self.state.unsent_evaluations.append(raw if why else self._filled(raw))
        self.state.held_evaluations = []
        self.state.solo_round = None

    def _filled(self, raw: dict[str, Any]) -> dict[str, Any]:
        """`raw` with its round's solo numbers (the plant ones only when measured on the
        set the evaluation names)."""
        state, round_id = self.state, raw.get("round_id")
        if not isinstance(round_id, str) or round_id not in (
            state.solo_nll.keys() | state.plant_solo_sha256.keys()
        ):
            return raw
        same = (
            raw.get("plant_set_sha256") is not None
            and state.plant_solo_sha256.get(round_id) == raw["plant_set_sha256"]
        )
        return raw | {
            "nll_solo": state.solo_nll.get(round_id),
            "task_solo": state.solo_task.get(round_id),
            "plant_nll_solo": state.plant_solo_nll.get(round_id) if same else None,
            "plant_task_solo": state.plant_solo_task.get(round_id) if same else None,
        }
