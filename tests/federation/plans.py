"""Round plans for tests that need a valid one but care about little of it."""

from appliance.config.lora import LoraSpec
from appliance.federation.codec import CodecSpec
from appliance.federation.messages import TrainingPlan


def lora(**changes: object) -> LoraSpec:
    """A small LoRA shape (rank 4 on the query projection) with `changes` applied."""
    fields: dict[str, object] = {
        "rank": 4,
        "alpha": 8.0,
        "targets": ["attn_q"],
        "top_layers": 0,
        "seed": 1,
        "freeze_a": True,
    }
    return LoraSpec.model_validate({**fields, **changes})


def training_plan(**lora_changes: object) -> TrainingPlan:
    """A plain round's plan around `lora(**lora_changes)`."""
    return TrainingPlan(
        lora=lora(**lora_changes),
        learning_rate=0.01,
        epochs=1,
        max_steps=0,
        codec=CodecSpec(),
    )
