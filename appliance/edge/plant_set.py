"""The plant evaluation set on the box: take it from the aggregator, keep it, score on it.

A box's own held-out data can only say how well an adapter knows this box's line. The plant
publishes questions from every line (`[evaluation_set]` in the aggregator's file); each box
scores the base model, the adapter it trained in the round (local) and the new global one
on them too, so the fleet sees what federating buys: the local adapter knows its own line,
the global one the plant.

The set arrives as a signed artifact of kind `evaluation_set` (only the aggregator may send
artifacts). It is taken whole or not at all: larger than the box allows, a line that is not a
record, a cut-off end, a sha256 other than the manifest's meta says, or published before the
set held: refused with a log line saying why, and the set the box had stays. The same content
again is a no-op. The file is `plant-set.jsonl` in the state directory; when it was published
is in the box's state (a crash between the two repeats the delivery: the artifact is
acknowledged only after both).
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from appliance.config.evaluation_set import BOX_MAX_BYTES, BOX_MAX_RECORDS
from appliance.config.rollout import EvaluationSettings
from appliance.data.evaluation_set import EvaluationSet, EvaluationSetError, check_evaluation_set
from appliance.edge.evaluation import HeldOut, Scores, held_out, scores, scores_of_file
from appliance.edge.state import EdgeState
from appliance.llm.runtime import Adapter, Runtime
from appliance.system.files import quarantine, write_durably
from appliance.transport.wire import Manifest

log = logging.getLogger(__name__)

ARTIFACT_KIND = "evaluation_set"


class PlantFields(TypedDict):
    """The plant-set fields of an `Evaluation` message."""

    plant_set_sha256: str | None
    plant_tokens: int | None
    plant_nll_base: float | None
    plant_nll_local: float | None
    plant_nll_global: float | None
    plant_task_records: int
    plant_task_base: float | None
    plant_task_local: float | None
    plant_task_global: float | None


NO_PLANT_FIELDS = PlantFields(
    plant_set_sha256=None,
    plant_tokens=None,
    plant_nll_base=None,
    plant_nll_local=None,
    plant_nll_global=None,
    plant_task_records=0,
    plant_task_base=None,
    plant_task_local=None,
    plant_task_global=None,
)
"""What an evaluation says when the box holds no plant set."""


@dataclass(frozen=True)
class PlantComparison:
    """Base model and a global adapter on the plant set."""

    sha256: str
    base: Scores
    candidate: Scores
    task_records: int


class PlantSet:
    """The set this box holds (none until the aggregator sends one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = self._load()
        self._held: tuple[str, HeldOut] | None = None  # (sha256, texts and task items)
        self._base: tuple[str, Scores] | None = None  # the base model's, per content

    def _load(self) -> EvaluationSet | None:
        """The stored set; one that no longer passes the check is moved aside."""
        if not self.path.exists():
            return None
        try:
            return _checked(self.path.read_bytes())
        except EvaluationSetError as exc:
            quarantine(self.path, exc)
            return None

    # -- taking a delivery ----------------------------------------------------------------------

    def take(self, manifest: Manifest, path: Path, state: EdgeState) -> bool:
        """Check a delivered set and keep it, or refuse it (logged; the set held stays).
        Whether `state` changed (the caller saves it before acknowledging)."""
        try:
            content, published = self._accept(manifest, path, state)
        except EvaluationSetError as exc:
            log.error(
                "refused the evaluation set of artifact %s from %s: %s; keeping %s",
                manifest.artifact_id,
                manifest.sender,
                exc,
                "the set held" if self.current else "none (no plant-wide scores)",
            )
            return False
        if self.current is not None and self.current.sha256 == content.sha256:
            log.info("evaluation set %s delivered again: already held", content.sha256[:12])
        else:
            write_durably(self.path, content.data)
            self.current = content
            log.info(
                "evaluation set %s taken: %d records", content.sha256[:12], len(content.records)
            )
        if state.plant_set_published_at == published:
            return False
        state.plant_set_published_at = max(published, state.plant_set_published_at or 0.0)
        return True

    def _accept(
        self, manifest: Manifest, path: Path, state: EdgeState
    ) -> tuple[EvaluationSet, float]:
        """The delivered set and when it was published, if the box may take it."""
        claimed, published = manifest.meta.get("sha256"), manifest.meta.get("published_at")
        if not isinstance(claimed, str):
            raise EvaluationSetError("the manifest's meta has no sha256")
        if isinstance(published, bool) or not isinstance(published, int | float):
            raise EvaluationSetError("the manifest's meta has no publication time")
        size = path.stat().st_size
        if size > BOX_MAX_BYTES:
            raise EvaluationSetError(f"{size} bytes, more than the {BOX_MAX_BYTES} a box takes")
        content = _checked(path.read_bytes())
        if content.sha256 != claimed:
            raise EvaluationSetError(
                f"its sha256 {content.sha256[:12]} is not the {claimed[:12]} its meta names"
            )
        records = manifest.meta.get("records")
        if records is not None and records != len(content.records):
            raise EvaluationSetError(f"{len(content.records)} records, its meta says {records}")
        held_since = state.plant_set_published_at
        is_held = self.current is not None and self.current.sha256 == content.sha256
        if held_since is not None and published < held_since and not is_held:
            raise EvaluationSetError("published before the set held (an old one delivered again)")
        return content, float(published)

    # -- scoring --------------------------------------------------------------------------------

    def held(
        self, runtime: Runtime, template: str | None, settings: EvaluationSettings
    ) -> tuple[str, HeldOut] | None:
        """The set's texts and task items (made once per content), with its sha256."""
        if self.current is None:
            return None
        if self._held is None or self._held[0] != self.current.sha256:
            items = held_out(runtime, self.current.records, template, settings)
            self._held = (self.current.sha256, items)
        return self._held

    def compare(
        self,
        runtime: Runtime,
        candidate: Adapter,
        template: str | None,
        settings: EvaluationSettings,
    ) -> PlantComparison | None:
        """Base model (scored once per content: the base never changes) and `candidate`."""
        held = self.held(runtime, template, settings)
        if held is None:
            return None
        sha256, texts = held
        if self._base is None or self._base[0] != sha256:
            self._base = (sha256, scores(runtime, texts, None, settings))
        candidate_scores = scores(runtime, texts, candidate, settings)
        return PlantComparison(sha256, self._base[1], candidate_scores, len(texts.items))


def score_local(
    runtime: Runtime,
    adapter: Path,
    own: HeldOut,
    *,
    plant: PlantSet,
    template: str | None,
    settings: EvaluationSettings,
    state: EdgeState,
    round_id: str,
) -> float:
    """Score the adapter the box trained in a round on its held-out data and on the plant
    set; the numbers wait in `state` (saved with the round) for the round's evaluation.
    Returns the held-out NLL (the update's log line and `local_nll`)."""
    held = plant.held(runtime, template, settings)
    sets = [own] if held is None else [own, held[1]]
    measured = scores_of_file(runtime, adapter, sets, settings)
    if measured[0].task is not None:
        state.local_task[round_id] = measured[0].task
    if held is not None:
        state.plant_local_sha256[round_id] = held[0]
        state.plant_local_nll[round_id] = measured[1].nll
        if measured[1].task is not None:
            state.plant_local_task[round_id] = measured[1].task
    return measured[0].nll


def score_local_late(
    runtime: Runtime,
    adapter: Path,
    *,
    plant: PlantSet,
    template: str | None,
    settings: EvaluationSettings,
    state: EdgeState,
    round_id: str,
) -> None:
    """The local adapter on the plant set when the set came after the round's training
    ended (a box that connected after the aggregator sent it gets it at the re-announce):
    measured from the round's adapter file while it is still there."""
    held = plant.held(runtime, template, settings)
    if held is None or state.plant_local_sha256.get(round_id) == held[0] or not adapter.exists():
        return
    (measured,) = scores_of_file(runtime, adapter, [held[1]], settings)
    state.plant_local_sha256[round_id] = held[0]
    state.plant_local_nll[round_id] = measured.nll
    if measured.task is not None:
        state.plant_local_task[round_id] = measured.task


def plant_fields(
    comparison: PlantComparison | None, state: EdgeState, round_id: str
) -> PlantFields:
    """The plant-set fields of a round's evaluation; the local numbers only when they were
    measured on the same content (the set may have changed since the round trained)."""
    if comparison is None or comparison.base.tokens == 0:
        return NO_PLANT_FIELDS
    same = state.plant_local_sha256.get(round_id) == comparison.sha256
    local_nll = state.plant_local_nll.get(round_id) if same else None
    return PlantFields(
        plant_set_sha256=comparison.sha256,
        plant_tokens=comparison.base.tokens,
        plant_nll_base=comparison.base.nll,
        plant_nll_local=local_nll if local_nll is not None and math.isfinite(local_nll) else None,
        plant_nll_global=comparison.candidate.nll,
        plant_task_records=comparison.task_records,
        plant_task_base=comparison.base.task,
        plant_task_local=state.plant_local_task.get(round_id) if same else None,
        plant_task_global=comparison.candidate.task,
    )


def _checked(data: bytes) -> EvaluationSet:
    return check_evaluation_set(data, max_records=BOX_MAX_RECORDS, max_bytes=BOX_MAX_BYTES)
