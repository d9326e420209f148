"""Audit event models: every kind the aggregator writes parses as written, and a record that
does not fit its kind (missing, mistyped, extra or non-finite field, unknown kind) is refused
with the field named."""

import json
import re
from typing import Any

import pytest

from appliance.federation.audit_events import (
    EVENTS,
    AggregationFacts,
    EvaluationReceived,
    EventError,
    RoundAggregated,
    RoundFailed,
    RoundOpened,
    parse_as,
    parse_event,
)
from appliance.federation.messages import Evaluation, TrainingPlan, TrainingPlanV1

SHA = "ab" * 32
CODEC = {"values": "int8", "block": 64, "top_k_fraction": None, "compression": "zstd"}
LORA = {
    "rank": 4,
    "alpha": 8.0,
    "targets": ["attn_q", "attn_v"],
    "top_layers": 0,
    "seed": 0,
    "freeze_a": True,
}
PLAN = {
    "lora": LORA,
    "learning_rate": 0.01,
    "epochs": 3,
    "max_steps": 0,
    "codec": CODEC,
    "secure_aggregation": None,
}
# v1: the LoRA fields flat, `frozen_a` for `freeze_a` (announcements and logs before v2)
PLAN_V1 = {
    "rank": 4,
    "alpha": 8.0,
    "targets": ["attn_q", "attn_v"],
    "top_layers": 0,
    "seed": 0,
    "frozen_a": True,
    "learning_rate": 0.01,
    "epochs": 3,
    "max_steps": 0,
    "codec": CODEC,
    "secure_aggregation": None,
}
SECURE = {"value_bound": 2.0, "max_weight": 1000, "min_reporting": 2}
NUMBERS = {
    "nll_base": 4.0,
    "nll_current": 3.0,
    "nll_candidate": 2.9,
    "current_version": 1,
    "task_base": 0.1,
    "task_current": 0.2,
    "task_candidate": 0.3,
    "task_records": 10,
}
DECISION = {
    "global_version": 2,
    "round_id": "r2-a",
    "canaries": ["box-1"],
    "reports": {"box-1": NUMBERS},
    "reason": "no canary got worse",
}
AGGREGATED_COMMON = {
    "round_id": "r1-a",
    "close_reason": "3 updates arrived",
    "update_bytes": {"box-1": 1525, "box-2": 1525},
    "update_sha256": {"box-1": SHA, "box-2": SHA},
    "strategy": {"samples": 277, "strategy": "fedavg-frozen-a", "updates": 2},
    "codec": CODEC,
    "global_version": 1,
    "global_sha256": SHA,
    "global_bytes": 8128,
    "signer": "aggregator",
}

# Each kind's data as appliance/aggregator/service.py and appliance/rollout/controller.py
# write it today (the dict forms, before the typed calls).
WRITTEN: dict[str, dict[str, Any]] = {
    "round_opened": {
        "round_id": "r1-a",
        "global_version": 0,
        "participants": ["box-1", "box-2"],
        "plan": PLAN,
    },
    "update_rejected": {"node_id": "box-9", "round_id": "r1-a", "reason": "late", "bytes": 4},
    "evaluation": {
        "v": 1,
        "round_id": "r1-a",
        "global_version": 1,
        "node_id": "box-1",
        "heldout_tokens": 50,
        "nll_base": 4.0,
        "nll_local": 3.5,
        "nll_global": 3.0,
        "activated": True,
        "current_version": None,
        "nll_current": None,
        "task_records": 0,
        "task_base": None,
        "task_current": None,
        "task_global": None,
        "train_seconds": 12.5,
        "plant_task_records": 0,
    },
    "evaluation_set_published": {
        "sha256": "cd" * 32,
        "records": 24,
        "bytes": 5120,
        "recipients": ["box-1", "box-2"],
    },
    "round_failed": {"round_id": "r1-a", "reason": "secure aggregation: reveal_timeout"},
    "round_abandoned": {"round_id": "r1-a", "reason": "abandoned: 0 updates"},
    "round_aggregated": {
        **AGGREGATED_COMMON,
        "participants": ["box-2", "box-1"],
        "update_dense_fp32_bytes": {"box-1": 3072, "box-2": 3072},
        "rejected": {},
        "privacy": {},
    },
    "global_sent": {
        "round_id": "r2-a",
        "global_version": 2,
        "why": "round",
        "delta_to": ["box-1"],
        "delta_bytes": 51234,
        "full_to": ["box-2"],
        "full_bytes": 1482240,
    },
    "rollout_started": {
        "global_version": 2,
        "round_id": "r2-a",
        "base_version": 1,
        "canaries": ["box-1"],
        "waiting": ["box-2"],
    },
    "rollout_promoted": {**DECISION, "recipients": ["box-2"]},
    "rollout_rejected": {
        **DECISION,
        "regressions": ["box-1: held-out NLL 3.5 with v2"],
        "rolled_back_to": 1,
        "never_sent_to": ["box-2"],
    },
    "operator_command": {
        "command_id": 3,
        "action": "pin",
        "nodes": ["box-3"],
        "global_version": 1,
        "outcome": "box-3 pinned to v1",
    },
}

# A required field of each kind (what a truncated or hand-edited line would lack).
REQUIRED = {
    "round_opened": "plan",
    "update_rejected": "reason",
    "evaluation": "nll_global",
    "evaluation_set_published": "sha256",
    "round_failed": "round_id",
    "round_abandoned": "reason",
    "round_aggregated": "global_sha256",
    "global_sent": "full_to",
    "rollout_started": "canaries",
    "rollout_promoted": "recipients",
    "rollout_rejected": "rolled_back_to",
    "operator_command": "outcome",
}


def test_every_kind_has_a_written_sample() -> None:
    assert set(WRITTEN) == set(EVENTS) == set(REQUIRED)


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_each_kind_parses_as_written_and_round_trips(kind: str) -> None:
    event = parse_event(kind, WRITTEN[kind])
    assert type(event) is EVENTS[kind]
    assert event.kind == kind
    dumped = event.model_dump(mode="json")
    assert {k: dumped[k] for k in WRITTEN[kind]} == WRITTEN[kind]  # the schema is what is written
    assert all(dumped[k] is None for k in set(dumped) - set(WRITTEN[kind]))  # and only that
    assert parse_event(kind, event.model_dump(mode="json")) == event


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_a_missing_field_is_named(kind: str) -> None:
    data = {k: v for k, v in WRITTEN[kind].items() if k != REQUIRED[kind]}
    with pytest.raises(EventError, match=rf"^{kind}: {REQUIRED[kind]}: Field required$"):
        parse_event(kind, data)


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_an_extra_field_is_refused(kind: str) -> None:
    with pytest.raises(EventError, match=rf"^{kind}: surprise: Extra inputs are not permitted"):
        parse_event(kind, WRITTEN[kind] | {"surprise": 1})


@pytest.mark.parametrize(
    ("kind", "field", "value", "message"),
    [
        ("round_aggregated", "global_version", "1", "global_version: Input should be a valid integer"),
        ("round_aggregated", "global_version", True, "global_version: Input should be a valid integer"),
        ("round_aggregated", "global_sha256", "xyz", "global_sha256: String should match pattern"),
        ("round_aggregated", "update_bytes", {"box-1": 1.5}, "update_bytes.box-1: Input should be a valid integer"),
        ("evaluation", "nll_global", "3.0", "nll_global: Input should be a valid number"),
        ("round_opened", "participants", "box-1", "participants: Input should be a valid array"),
        ("update_rejected", "bytes", -1, "bytes: Input should be greater than or equal to 0"),
        ("operator_command", "action", "reboot", "action: String should match pattern"),
        ("operator_command", "nodes", "everybody", "nodes.tuple[str, ...]: Input should be a valid array"),
        ("rollout_promoted", "reports", {"box-1": {**NUMBERS, "nll_base": None}}, "reports.box-1.nll_base: Input should be a valid number"),
    ],
)  # fmt: skip
def test_a_wrong_type_is_named(kind: str, field: str, value: object, message: str) -> None:
    with pytest.raises(EventError, match=rf"^{kind}: ") as caught:
        parse_event(kind, WRITTEN[kind] | {field: value})
    assert message in str(caught.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_number_is_refused(value: float) -> None:
    with pytest.raises(EventError, match=r"^evaluation: data is not finite JSON$"):
        parse_event("evaluation", WRITTEN["evaluation"] | {"nll_base": value})


def test_several_problems_are_counted() -> None:
    with pytest.raises(EventError, match=r"\(and 2 more\)$"):
        parse_event("update_rejected", {"node_id": "box-1"})


@pytest.mark.parametrize("kind", ["round", "", "Round_Opened"])
def test_an_unknown_kind_is_named_with_the_known_ones(kind: str) -> None:
    with pytest.raises(EventError, match=rf"unknown event kind {kind!r} \(known: evaluation, "):
        parse_event(kind, {})


def test_data_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(EventError, match=r"^round_abandoned: data: Input should be an object"):
        parse_event("round_abandoned", ["r1-a", "abandoned"])


SECURE_ROUND = {
    **AGGREGATED_COMMON,
    "participants": ["box-1", "box-2"],
    "dropped": ["box-3"],
    "secure_aggregation": SECURE,
}


def test_a_secure_round_as_older_logs_hold_it() -> None:
    """As `_finish_secure` wrote it before the round protocols: dropped boxes and the
    masking plan, but no dense sizes, rejections or DP claims."""
    event = parse_event("round_aggregated", SECURE_ROUND)
    assert isinstance(event, RoundAggregated)
    assert event.dropped == ("box-3",) and event.secure_aggregation is not None
    assert event.update_dense_fp32_bytes is None and event.rejected is None
    assert event.privacy is None
    plain = parse_event("round_aggregated", WRITTEN["round_aggregated"])
    assert isinstance(plain, RoundAggregated)
    assert plain.dropped is None and plain.secure_aggregation is None


def test_a_secure_round_as_the_round_protocol_writes_it() -> None:
    """appliance/privacy/secagg/protocol.py: dense sizes and an empty rejection map too."""
    dense = {"box-1": 3072, "box-2": 3072}
    data = SECURE_ROUND | {"update_dense_fp32_bytes": dense, "rejected": {}}
    event = parse_event("round_aggregated", data)
    assert isinstance(event, RoundAggregated)
    assert (event.update_dense_fp32_bytes, event.rejected, event.privacy) == (dense, {}, None)


def test_a_line_is_made_of_the_protocol_s_facts_and_the_adapter_file() -> None:
    line = parse_as(RoundAggregated, WRITTEN["round_aggregated"])
    facts = parse_as_facts(WRITTEN["round_aggregated"])
    made = RoundAggregated.of(
        facts,
        round_id=line.round_id,
        close_reason=line.close_reason,
        global_version=line.global_version,
        global_sha256=line.global_sha256,
        global_bytes=line.global_bytes,
        signer=line.signer,
    )
    assert made == line


def parse_as_facts(data: dict[str, Any]) -> AggregationFacts:
    own = set(RoundAggregated.model_fields) - set(AggregationFacts.model_fields)
    return AggregationFacts.model_validate_json(
        json.dumps({k: v for k, v in data.items() if k not in own})
    )


def test_a_dp_claim_is_typed() -> None:
    claim = {
        "mechanism": "gaussian-local",
        "clip_norm": 1.0,
        "noise_multiplier": 1.1,
        "delta": 1e-5,
        "epsilon": 0.5,
        "releases": 1,
    }
    data = WRITTEN["round_aggregated"] | {"privacy": {"box-1": claim}}
    event = parse_event("round_aggregated", data)
    assert isinstance(event, RoundAggregated) and event.privacy is not None
    assert event.privacy["box-1"].epsilon == 0.5
    with pytest.raises(EventError, match=r"privacy.box-1.epsilon: Input should be greater"):
        parse_event("round_aggregated", data | {"privacy": {"box-1": claim | {"epsilon": -1}}})


def test_round_failed_in_every_written_shape_but_never_without_a_cause() -> None:
    rejected = {"box-1": "undecodable"}
    older = parse_event("round_failed", {"round_id": "r1-a", "rejected": rejected})
    assert isinstance(older, RoundFailed) and older.reason is None
    both = {"round_id": "r1-a", "reason": "no update passed aggregation", "rejected": rejected}
    assert parse_event("round_failed", both).model_dump(mode="json") == both
    with pytest.raises(EventError, match=r"^round_failed: data: Value error, a failed round"):
        parse_event("round_failed", {"round_id": "r1-a"})


def test_a_fleet_wide_operator_command() -> None:
    data = WRITTEN["operator_command"] | {"action": "rollback", "nodes": "fleet"}
    assert parse_event("operator_command", data).model_dump(mode="json") == data


def test_an_evaluation_message_becomes_its_event_unchanged() -> None:
    message = Evaluation.model_validate_json(json.dumps(WRITTEN["evaluation"]))
    event = EvaluationReceived.of(message)
    assert isinstance(event, Evaluation) and event.kind == "evaluation"
    assert event.model_dump() == message.model_dump()


def test_evaluations_from_before_rollouts_still_parse() -> None:
    """No current-adapter, task or training-time numbers then."""
    old = {
        k: v
        for k, v in WRITTEN["evaluation"].items()
        if not k.startswith(("task_", "current_", "nll_current", "train_"))
    }
    event = parse_event("evaluation", old)
    assert isinstance(event, EvaluationReceived)
    assert (event.task_records, event.current_version, event.train_seconds) == (0, None, None)


def test_aggregations_from_before_dp_claims_still_parse() -> None:
    old = {k: v for k, v in WRITTEN["round_aggregated"].items() if k != "privacy"}
    event = parse_event("round_aggregated", old)
    assert isinstance(event, RoundAggregated) and event.privacy is None


def test_v1_plans_of_older_logs_still_parse() -> None:
    event = parse_event("round_opened", WRITTEN["round_opened"] | {"plan": PLAN_V1})
    assert isinstance(event, RoundOpened) and isinstance(event.plan, TrainingPlanV1)
    assert event.model_dump(mode="json")["plan"] == PLAN_V1
    current = parse_event("round_opened", WRITTEN["round_opened"])
    assert isinstance(current, RoundOpened) and isinstance(current.plan, TrainingPlan)


def test_plans_from_before_top_layers_and_secure_aggregation_still_parse() -> None:
    plan = {k: v for k, v in PLAN_V1.items() if k not in ("top_layers", "secure_aggregation")}
    event = parse_event("round_opened", WRITTEN["round_opened"] | {"plan": plan})
    assert isinstance(event, RoundOpened) and isinstance(event.plan, TrainingPlanV1)
    assert (event.plan.top_layers, event.plan.secure_aggregation) == (0, None)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({**PLAN, "lora": {**LORA, "rank": 3}}, "plan.v2.lora.rank: Value error, must be a power of two"),
        ({**PLAN_V1, "rank": 0}, "plan.v1.rank: Input should be greater than or equal to 1"),
        ({**PLAN_V1, "freeze_a": True}, "plan.v1.freeze_a: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_plan_is_named_in_its_version(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match=rf"^round_opened: {re.escape(message)}"):
        parse_event("round_opened", WRITTEN["round_opened"] | {"plan": plan})


FLEET_DP = {
    "mechanism": "distributed-gaussian",
    "noise_multiplier": 0.8,
    "clip_norm": 0.05,
    "delta": 1e-5,
    "epsilon": 12.5,
    "rounds": 3,
}


def test_a_noised_secure_round_carries_the_fleet_epsilon_as_its_own_field() -> None:
    event = parse_event("round_aggregated", SECURE_ROUND | {"fleet_privacy": FLEET_DP})
    assert isinstance(event, RoundAggregated) and event.fleet_privacy is not None
    assert (event.fleet_privacy.epsilon, event.fleet_privacy.rounds) == (12.5, 3)
    older = parse_event("round_aggregated", SECURE_ROUND)
    assert isinstance(older, RoundAggregated) and older.fleet_privacy is None


@pytest.mark.parametrize(
    "bad",
    [
        {"epsilon": float("nan")},
        {"epsilon": -1.0},
        {"rounds": 0},
        {"delta": 1.0},
        {"noise_multiplier": "0.8"},
        {"mechanism": "gaussian-local"},
        {"extra": 1},
    ],
)
def test_a_bad_fleet_privacy_field_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(EventError, match="fleet_privacy|not finite JSON"):
        parse_event("round_aggregated", SECURE_ROUND | {"fleet_privacy": FLEET_DP | bad})
