"""Federation messages: what the aggregator announces and what boxes report back.

They travel signed (transport's envelope) on `appliance/v1/<plant>/msg/<sender>/<kind>`;
these are their bodies. Every schema is strict and versioned (`v`): a box refuses a message
it does not understand instead of guessing.
"""

from typing import Literal, Self

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from appliance.config.base import TopicSafeId
from appliance.config.lora import LoraSpec
from appliance.federation.codec import CodecSpec
from appliance.transport.wire import WireModel

SHA256 = r"^[0-9a-f]{64}$"
ROUND_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Message(WireModel):
    """Strict, closed, finite, immutable: a body the transport signs and sends."""


_V2_FIELDS = ("version", "threshold", "neighbours", "ring_bits", "noise_multiplier", "clip_norm")


class SecureAggregationPlan(Message):
    """Pairwise-masked updates for the round (appliance/privacy/secagg; docs/privacy.md)."""

    value_bound: float = Field(gt=0, le=1000, description="Shared int8 step x 127.")
    max_weight: int = Field(ge=1, le=1_000_000, description="Cap on a box's sample weight.")
    min_reporting: int = Field(ge=2, description="No seed reveal for fewer reporting boxes.")
    version: Literal[1, 2] = Field(
        default=1, description="1: pairwise masks; 2: SecAgg+ (Shamir shares, neighbours)."
    )
    threshold: float = Field(default=0.67, gt=0.5, le=1, description="v2: share fraction t.")
    neighbours: int = Field(default=0, ge=0, description="v2: neighbours per box (0: all).")
    ring_bits: Literal[16, 32] = Field(default=32, description="v2: bits per masked value.")
    noise_multiplier: float = Field(default=0.0, ge=0, description="v2: distributed DP z.")
    clip_norm: float = Field(default=1.0, gt=0, description="v2: L2 clip of B under DP.")

    @model_serializer(mode="wrap")
    def _version_1_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """A version-1 plan is written in its old shape (announcements, stored plans, logs)."""
        data: dict[str, object] = handler(self)
        if self.version == 1:
            for name in _V2_FIELDS:
                data.pop(name, None)
        return data


class TrainingPlan(Message):
    """The hyper-parameters every participant trains with in a round."""

    lora: LoraSpec = Field(description="The adapter's shape, as the aggregator's config has it.")
    learning_rate: float = Field(gt=0, le=1)
    epochs: int = Field(ge=1)
    max_steps: int = Field(ge=0)
    codec: CodecSpec
    secure_aggregation: SecureAggregationPlan | None = Field(
        default=None, description="Mask the update (None: a plain signed update)."
    )

    @model_validator(mode="after")
    def _codec_fits_the_rank(self) -> Self:
        """A box could not encode rank-q factors of a rank-r change with q >= r; the plan is
        refused on arrival (a clear rejection) instead of failing the round after training."""
        lowrank = self.codec.lowrank_rank
        if lowrank is not None and lowrank >= self.lora.rank:
            raise ValueError(
                f"codec.lowrank_rank {lowrank} is not below the LoRA rank {self.lora.rank}"
            )
        return self

    @property
    def protocol(self) -> str:
        """The round protocol the plan asks for (appliance/federation/protocol.py)."""
        return "plain" if self.secure_aggregation is None else "secure"


class TrainingPlanV1(Message):
    """A round plan as v1 announcements carried it, and as older logs hold it: the LoRA
    shape's fields flat, with `frozen_a` (v2, `TrainingPlan`, nests them in `lora`)."""

    rank: int = Field(ge=1, le=256, description="LoRA rank.")
    alpha: float = Field(gt=0, description="LoRA alpha.")
    targets: tuple[str, ...] = Field(min_length=1, description="Adapted weights in a block.")
    top_layers: int = Field(default=0, ge=0, description="Adapt only the top N blocks (0: all).")
    seed: int = Field(ge=0, description="Seed of A and of the shuffling.")
    frozen_a: bool = Field(description="A derived from the seed, only B trained.")
    learning_rate: float = Field(gt=0, le=1, description="Learning rate.")
    epochs: int = Field(ge=1, description="Passes over the box's records.")
    max_steps: int = Field(ge=0, description="Cap on optimiser steps (0: none).")
    codec: CodecSpec = Field(description="How updates are coded.")
    secure_aggregation: SecureAggregationPlan | None = Field(
        default=None, description="Mask the update (None: a plain signed update)."
    )

    def upgraded(self) -> TrainingPlan:
        """The same plan in the v2 shape."""
        lora = LoraSpec(
            rank=self.rank,
            alpha=self.alpha,
            targets=list(self.targets),
            top_layers=self.top_layers,
            seed=self.seed,
            freeze_a=self.frozen_a,
        )
        return TrainingPlan(
            lora=lora,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            max_steps=self.max_steps,
            codec=self.codec,
            secure_aggregation=self.secure_aggregation,
        )


class RoundAnnouncement(Message):
    """The aggregator opens a round (kind `round`). v2: the plan's LoRA shape is one
    `lora` object (v1 had its fields flat, with `frozen_a`)."""

    v: Literal[2] = 2
    round_id: str = Field(pattern=ROUND_ID)
    base_sha256: str = Field(pattern=SHA256)
    global_version: int = Field(ge=0)
    global_artifact_sha256: str | None = Field(
        default=None, pattern=SHA256, description="The global adapter to start from (None: v0)."
    )
    plan: TrainingPlan
    participants: tuple[TopicSafeId, ...] = Field(min_length=1, max_length=10_000)
    min_updates: int = Field(ge=1)
    deadline: float = Field(ge=0, description="Unix time after which updates are late.")


class GlobalPublished(Message):
    """A new global adapter was aggregated and sent as an artifact (kind `global`)."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    global_version: int = Field(ge=1)
    artifact_sha256: str = Field(pattern=SHA256)
    participants: tuple[TopicSafeId, ...]
    strategy: str = Field(max_length=100)


class Evaluation(Message):
    """A box's held-out numbers for an adapter (kind `evaluation`)."""

    v: Literal[1] = 1
    round_id: str = Field(pattern=ROUND_ID)
    global_version: int = Field(ge=0)
    node_id: TopicSafeId
    heldout_tokens: int = Field(ge=0)
    nll_base: float
    nll_local: float | None = None
    nll_global: float
    activated: bool
    current_version: int | None = Field(
        default=None, ge=0, description="The adapter served when evaluated (None: the base)."
    )
    nll_current: float | None = None
    task_records: int = Field(default=0, ge=0, description="Records the task metric scored.")
    task_base: float | None = Field(default=None, ge=0, le=1, description="Exact-match rate.")
    task_current: float | None = Field(default=None, ge=0, le=1)
    task_global: float | None = Field(default=None, ge=0, le=1)
    train_seconds: float | None = Field(
        default=None, ge=0, description="The box's local training time in this round."
    )
    task_local: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Exact-match rate of the box's own adapter of the round (trained on its "
        "data alone), on its held-out records.",
    )
    plant_set_sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="The plant evaluation set the plant_* numbers were measured on (None: "
        "the box holds none; every plant_* field is then None or 0).",
    )
    plant_tokens: int | None = Field(default=None, ge=0, description="Tokens of the set.")
    plant_nll_base: float | None = Field(default=None, description="NLL of the base model.")
    plant_nll_local: float | None = Field(
        default=None,
        description="NLL of the box's own adapter of the round (None: it trained none, or "
        "measured it on another set).",
    )
    plant_nll_global: float | None = Field(default=None, description="NLL of the adapter.")
    plant_task_records: int = Field(
        default=0, ge=0, description="Records of the set the plant_task rates scored."
    )
    plant_task_base: float | None = Field(default=None, ge=0, le=1)
    plant_task_local: float | None = Field(default=None, ge=0, le=1)
    plant_task_global: float | None = Field(default=None, ge=0, le=1)
    nll_solo: float | None = Field(
        default=None,
        description="Held-out NLL of the box's local-only baseline of the round: trained on "
        "its data alone, round after round, never from a global adapter (None: the box does "
        "not train one, `[evaluation] solo_baseline`, or its run failed).",
    )
    task_solo: float | None = Field(
        default=None, ge=0, le=1, description="Its exact-match rate on the held-out records."
    )
    plant_nll_solo: float | None = Field(
        default=None, description="Its NLL on the plant evaluation set (plant_set_sha256)."
    )
    plant_task_solo: float | None = Field(default=None, ge=0, le=1)


class Command(Message):
    """An operator's instruction to boxes (kind `command`)."""

    v: Literal[1] = 1
    action: Literal["rollback", "pin", "unpin"]
    nodes: tuple[TopicSafeId, ...] = Field(min_length=1)
    global_version: int | None = Field(default=None, ge=0)
    command_id: int | None = Field(
        default=None,
        ge=0,
        description="The operator command's id in the aggregator's rollout store: a box "
        "carries each out once, also when the broker delivers it twice (a rollback to the "
        "previous adapter done twice would undo itself).",
    )


class GlobalRequest(Message):
    """A box asks for the whole file of a global adapter (kind `global_request`): it got a
    delta to a version it does not hold, or one that did not rebuild the announced file."""

    v: Literal[1] = 1
    global_version: int = Field(ge=1)
    reason: str = Field(max_length=300, description="Why the delta could not be used.")
