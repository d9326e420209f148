"""The audit log's events: one strict model per kind of line the aggregator writes.

Events used to be dicts built where they were written and read back by string keys where
they were read (the report, the demo summary), and the two drifted apart: secure rounds'
`round_aggregated` lines had no per-box dense sizes, which the demo read unconditionally.
A model per kind is the one schema both sides use, and a line that does not fit it is
refused with the field that is wrong instead of being guessed at.

The schema is what the aggregator writes: the JSON form of a model (`model_dump(mode="json")`)
is a line's `data`. A log is kept for years, so every shape a released aggregator wrote
stays readable: fields that came later have defaults (None where "not recorded" must differ
from "none"), and a payload whose wire message changed shape keeps its old model
(`TrainingPlanV1`). tests/federation/audit_logs holds real logs that must keep parsing.
Models are closed (`extra="forbid"`), strict (no "3" for 3), finite (no NaN, which canonical
JSON cannot hold) and frozen.
"""

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, Self, TypeAlias, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from appliance.errors import ApplianceError
from appliance.federation.codec import CodecSpec
from appliance.federation.messages import (
    SHA256,
    Evaluation,
    SecureAggregationPlan,
    TrainingPlan,
    TrainingPlanV1,
)
from appliance.federation.privacy_claim import DpReport, FleetDpReport

Sha256 = Annotated[str, Field(pattern=SHA256)]
Boxes = tuple[str, ...]


class EventError(ApplianceError):
    """A record is not a known, valid event; the message names the kind and the field."""


class _Closed(BaseModel):
    """Closed, strict, finite, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class _Event(_Closed):
    """One line's `data`; `kind` is the line's `kind`."""

    kind: ClassVar[str]


# -- rounds ------------------------------------------------------------------------------------


def _plan_version(plan: object) -> str:
    """v2 nests the LoRA shape in `lora`; v1 had its fields flat."""
    if isinstance(plan, dict):
        return "v2" if "lora" in plan else "v1"
    return "v2" if isinstance(plan, TrainingPlan) else "v1"


Plan = Annotated[
    Annotated[TrainingPlan, Tag("v2")] | Annotated[TrainingPlanV1, Tag("v1")],
    Discriminator(_plan_version),
]


class RoundOpened(_Event):
    """A round was opened (written once, also when a restart came between store and log)."""

    kind: ClassVar[str] = "round_opened"

    round_id: str = Field(description="The round.")
    global_version: int = Field(ge=0, description="The global adapter the round trains from.")
    participants: Boxes = Field(description="The boxes invited to the round.")
    plan: Plan = Field(description="What every participant trains with (v1 in older logs).")


class UpdateRejected(_Event):
    """An update was refused before aggregation (undecodable, late, from a non-participant,
    for another base model or global version, a masked update that failed its check)."""

    kind: ClassVar[str] = "update_rejected"

    node_id: str = Field(description="The box that sent it (as its envelope says).")
    round_id: str = Field(description="The round it was sent for (as its envelope says).")
    reason: str = Field(description="Why it was refused, in words.")
    bytes: int = Field(ge=0, description="Its size.")


class EvaluationReceived(Evaluation, _Event):
    """A box's evaluation, audited exactly as the box signed it (the message's own fields)."""

    kind: ClassVar[str] = "evaluation"

    @classmethod
    def of(cls, evaluation: Evaluation) -> Self:
        """The audit event of a received evaluation message."""
        return cls.model_validate(evaluation.model_dump())


class EvaluationSetPublished(_Event):
    """The plant evaluation set was queued for boxes (each box gets one content once; the
    aggregator reads these lines to know who has which)."""

    kind: ClassVar[str] = "evaluation_set_published"

    sha256: Sha256 = Field(description="sha256 of the set's file.")
    records: int = Field(ge=1, description="Records in it.")
    bytes: int = Field(ge=1, description="Its size.")
    recipients: Boxes = Field(description="The boxes it was sent to now.")


class RoundFailed(_Event):
    """A closed round ended without a global adapter."""

    kind: ClassVar[str] = "round_failed"

    round_id: str = Field(description="The round.")
    reason: str | None = Field(
        default=None,
        description="Why, in words. None only in older logs' lines for rounds where no "
        "update passed aggregation, which `rejected` explains.",
    )
    rejected: dict[str, str] | None = Field(
        default=None,
        description="No update passed aggregation: why each box's was refused (None when "
        "the round failed for another reason).",
    )

    @model_validator(mode="after")
    def _says_why(self) -> Self:
        if self.reason is None and self.rejected is None:
            raise ValueError("a failed round needs a reason or the rejected updates")
        return self


class RoundAbandoned(_Event):
    """A round closed without enough updates, even after its deadline was extended."""

    kind: ClassVar[str] = "round_abandoned"

    round_id: str = Field(description="The round.")
    reason: str | None = Field(description="The round store's close reason.")


class AggregationFacts(_Closed):
    """What a round protocol knows about the aggregation it made (plain rounds decode every
    update; secure rounds see only the masked sum); the aggregator adds the round and the
    new adapter's file to make the `RoundAggregated` line."""

    participants: Boxes = Field(description="The boxes whose updates are in the adapter.")
    update_bytes: dict[str, int] = Field(description="Size of each update that went in.")
    update_sha256: dict[str, Sha256] = Field(
        description="sha256 of each stored update (also those refused at aggregation)."
    )
    strategy: dict[str, int | float | str] = Field(
        description="The aggregation strategy's report (its name under `strategy`)."
    )
    codec: CodecSpec = Field(description="How the round's updates were coded.")
    update_dense_fp32_bytes: dict[str, int] | None = Field(
        default=None,
        description="What each update would weigh as dense fp32 (the compression baseline). "
        "None in secure rounds of older logs, which did not record it.",
    )
    rejected: dict[str, str] | None = Field(
        default=None,
        description="Updates refused at aggregation, and why (empty in a secure round: a "
        "masked update is checked, and refused, on arrival). None in secure rounds of older "
        "logs.",
    )
    privacy: dict[str, DpReport] | None = Field(
        default=None,
        description="Plain round: each DP box's claim for its update. None in a secure round "
        "(a masked update carries none) and in logs from before claims were audited.",
    )
    dropped: Boxes | None = Field(
        default=None,
        description="Secure round: reporting boxes whose masks were removed from the sum "
        "with their revealed seeds (they dropped out). None in a plain round.",
    )
    secure_aggregation: SecureAggregationPlan | None = Field(
        default=None, description="Secure round: its masking parameters. None in a plain round."
    )
    fleet_privacy: FleetDpReport | None = Field(
        default=None,
        description="Secure round with distributed DP noise: the fleet-level epsilon after it. "
        "None without noise, in plain rounds and in older logs.",
    )


class RoundAggregated(AggregationFacts, _Event):
    """A round made a new global adapter (written before the round store says aggregated,
    so a restart adopts this file instead of aggregating again)."""

    kind: ClassVar[str] = "round_aggregated"

    round_id: str = Field(description="The round.")
    close_reason: str | None = Field(description="Why the round closed (the round store's).")
    global_version: int = Field(ge=1, description="The new global adapter's version.")
    global_sha256: Sha256 = Field(description="sha256 of the new global adapter's file.")
    global_bytes: int = Field(ge=0, description="Size of the new global adapter's file.")
    signer: str = Field(description="The aggregator that signed the adapter.")

    @classmethod
    def of(
        cls,
        facts: AggregationFacts,
        *,
        round_id: str,
        close_reason: str | None,
        global_version: int,
        global_sha256: str,
        global_bytes: int,
        signer: str,
    ) -> Self:
        """The audit line of a protocol's facts and the adapter file it led to."""
        return cls.model_validate(
            {
                **dict(facts),
                "round_id": round_id,
                "close_reason": close_reason,
                "global_version": global_version,
                "global_sha256": global_sha256,
                "global_bytes": global_bytes,
                "signer": signer,
            }
        )


class GlobalSent(_Event):
    """A global adapter was queued for boxes: as a delta to the round's base version to those
    known to hold it, as the whole file to the others (the bytes down of a round)."""

    kind: ClassVar[str] = "global_sent"

    round_id: str = Field(description="The round that made the adapter.")
    global_version: int = Field(ge=1, description="The adapter's version.")
    why: Literal["round", "rollout", "requested"] = Field(
        description="After its round, by the staged rollout, or asked for by a box."
    )
    delta_to: Boxes = Field(description="Boxes sent the delta.")
    delta_bytes: int | None = Field(ge=0, description="Size of the delta (None: none made).")
    full_to: Boxes = Field(description="Boxes sent the whole file.")
    full_bytes: int = Field(ge=0, description="Size of the whole file.")

    @property
    def bytes_down(self) -> int:
        """Bytes queued for all its boxes together."""
        return len(self.delta_to) * (self.delta_bytes or 0) + len(self.full_to) * self.full_bytes


# -- rollouts ----------------------------------------------------------------------------------


class RolloutStarted(_Event):
    """A new global adapter went to its canaries first."""

    kind: ClassVar[str] = "rollout_started"

    global_version: int = Field(ge=1, description="The candidate global adapter.")
    round_id: str = Field(description="The round that made it.")
    base_version: int = Field(ge=0, description="The version it was trained from.")
    canaries: Boxes = Field(description="The boxes that got it now.")
    waiting: Boxes = Field(description="The boxes that get it once the canaries approve.")


class CanaryNumbers(_Closed):
    """What one canary reported about a candidate: held-out NLL and exact-match rates of the
    base model, the adapter it serves and the candidate."""

    nll_base: float = Field(description="Held-out NLL of the base model.")
    nll_current: float | None = Field(description="Of the served adapter (None: the base).")
    nll_candidate: float = Field(description="Of the candidate.")
    current_version: int | None = Field(description="The served version (None: the base).")
    task_base: float | None = Field(description="Exact-match rate of the base model.")
    task_current: float | None = Field(description="Of the served adapter.")
    task_candidate: float | None = Field(description="Of the candidate.")
    task_records: int = Field(ge=0, description="Records the exact-match rates scored.")


class _RolloutDecision(_Event):
    """What a promotion or rejection rests on: the canaries' numbers and the reason."""

    global_version: int = Field(ge=1, description="The candidate global adapter.")
    round_id: str = Field(description="The round that made it.")
    canaries: Boxes = Field(description="Its canaries.")
    reports: dict[str, CanaryNumbers] = Field(description="Each reporting canary's numbers.")
    reason: str = Field(description="The decision's reason, in words.")


class RolloutPromoted(_RolloutDecision):
    """The canaries approved a candidate: it went to the waiting boxes."""

    kind: ClassVar[str] = "rollout_promoted"

    recipients: Boxes = Field(description="The waiting boxes it was sent to.")


class RolloutRejected(_RolloutDecision):
    """A candidate regressed on its canaries: they go back, the others never get it."""

    kind: ClassVar[str] = "rollout_rejected"

    regressions: tuple[str, ...] = Field(description="What regressed, per canary, in words.")
    rolled_back_to: int = Field(ge=0, description="The version the canaries go back to.")
    never_sent_to: Boxes = Field(description="The waiting boxes, which never got it.")


class OperatorCommandCarriedOut(_Event):
    """An operator's queued rollback, pin or unpin was sent to the boxes."""

    kind: ClassVar[str] = "operator_command"

    command_id: int = Field(description="The command's id in the rollout store.")
    action: str = Field(
        pattern=r"^(rollback|pin|unpin)$", description="What was asked (the store allows these)."
    )
    nodes: Boxes | Literal["fleet"] = Field(description="The boxes it was for, or every box.")
    global_version: int | None = Field(description="The version pinned to (pin only).")
    outcome: str = Field(description="What was done, in words.")


# -- parsing -----------------------------------------------------------------------------------

AuditEvent: TypeAlias = (
    RoundOpened
    | UpdateRejected
    | EvaluationReceived
    | EvaluationSetPublished
    | RoundFailed
    | RoundAbandoned
    | RoundAggregated
    | GlobalSent
    | RolloutStarted
    | RolloutPromoted
    | RolloutRejected
    | OperatorCommandCarriedOut
)

EVENTS: Mapping[str, type[AuditEvent]] = MappingProxyType(
    {model.kind: model for model in get_args(AuditEvent)}
)
"""Every event model by its kind."""

EventT = TypeVar("EventT", bound=_Event)


def parse_as(model: type[EventT], data: object) -> EventT:
    """`data` (a line's `data`, as JSON gives it) as an event of `model`; `EventError` names
    the first wrong field."""
    try:
        return model.model_validate_json(json.dumps(data, allow_nan=False))
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "data"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise EventError(f"{model.kind}: {where}: {problem['msg']}{more}") from None
    except (TypeError, ValueError):  # not JSON at all, or NaN/Infinity, which JSON cannot hold
        raise EventError(f"{model.kind}: data is not finite JSON") from None


def parse_event(kind: str, data: object) -> AuditEvent:
    """A line's `kind` and `data` as its event; `EventError` for an unknown kind or data
    that does not fit the kind's model."""
    model = EVENTS.get(kind)
    if model is None:
        raise EventError(f"unknown event kind {kind!r:.60} (known: {', '.join(sorted(EVENTS))})")
    return parse_as(model, data)
