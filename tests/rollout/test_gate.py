"""The promotion rule and canary choice, on evaluations as boxes send them."""

import pytest
from pydantic import ValidationError

from appliance.config.rollout import RolloutSettings
from appliance.federation.messages import Evaluation
from appliance.rollout.canary import pick_canaries
from appliance.rollout.gate import judge


def report(box: str, candidate: float, current: float | None = 3.0, **task: float) -> Evaluation:
    return Evaluation(
        round_id="r2-abc",
        global_version=2,
        node_id=box,
        heldout_tokens=100,
        nll_base=4.0,
        nll_global=candidate,
        nll_current=current,
        current_version=1,
        activated=True,
        task_records=10,
        **task,
    )


SETTINGS = RolloutSettings(canaries=["a", "b"])


def test_waits_until_every_canary_reported() -> None:
    assert judge(2, ("a", "b"), {"a": report("a", 2.9)}, SETTINGS, timed_out=False) is None


def test_promotes_when_no_canary_got_worse() -> None:
    verdict = judge(
        2, ("a", "b"), {"a": report("a", 2.9), "b": report("b", 3.0)}, SETTINGS, timed_out=False
    )
    assert verdict is not None and verdict.promote
    assert verdict.reason == "v2: no regression on a, b"


def test_one_worse_canary_rejects_and_says_by_how_much() -> None:
    verdict = judge(
        2, ("a", "b"), {"a": report("a", 2.9), "b": report("b", 3.25)}, SETTINGS, timed_out=False
    )
    assert verdict is not None and not verdict.promote
    assert verdict.regressions == (
        "b: held-out NLL 3.2500 with v2 against 3.0000 with v1 (+0.2500 > 0.0000 allowed)",
    )


def test_tolerance_allows_small_increases() -> None:
    loose = RolloutSettings(canaries=["a"], max_nll_increase=0.3)
    verdict = judge(2, ("a",), {"a": report("a", 3.25)}, loose, timed_out=False)
    assert verdict is not None and verdict.promote


def test_task_metric_drop_rejects_even_when_nll_improves() -> None:
    worse = report("a", 2.5, task_current=0.8, task_global=0.5, task_base=0.1)
    verdict = judge(2, ("a",), {"a": worse}, RolloutSettings(canaries=["a"]), timed_out=False)
    assert verdict is not None and not verdict.promote
    assert "exact match 50.0% with v2 against 80.0% with v1 on 10 prompts" in verdict.reason


def test_an_old_box_without_current_numbers_is_judged_against_the_base() -> None:
    verdict = judge(2, ("a",), {"a": report("a", 4.2, None)}, SETTINGS, timed_out=True)
    assert verdict is not None and not verdict.promote
    assert "against 4.0000" in verdict.reason


def test_timeout_decides_on_the_reports_that_came_and_names_the_silent() -> None:
    verdict = judge(2, ("a", "b"), {"a": report("a", 2.0)}, SETTINGS, timed_out=True)
    assert verdict is not None and verdict.promote
    assert verdict.reason.endswith("; no report from b")


def test_no_report_at_all_rejects() -> None:
    verdict = judge(2, ("a", "b"), {}, SETTINGS, timed_out=True)
    assert verdict is not None and not verdict.promote
    assert "no canary reported" in verdict.reason


def test_named_canaries_are_used_as_configured() -> None:
    assert pick_canaries(["x", "y", "z"], RolloutSettings(canaries=["y"])) == ("y",)


def test_fraction_picks_the_same_boxes_every_time_rounded_up() -> None:
    boxes = [f"box-{i}" for i in range(10)]
    settings = RolloutSettings(canary_fraction=0.25)
    first = pick_canaries(boxes, settings)
    assert len(first) == 3
    assert pick_canaries(list(reversed(boxes)), settings) == first
    assert len(pick_canaries(boxes[:1], RolloutSettings(canary_fraction=0.01))) == 1


def test_off_by_default() -> None:
    assert pick_canaries(["x", "y"], RolloutSettings()) == ()
    assert not RolloutSettings().enabled


@pytest.mark.parametrize(
    "bad",
    [
        {"canaries": ["a", "a"]},
        {"canaries": ["a/b"]},
        {"canary_fraction": 1.5},
        {"canary_fraction": float("nan")},
        {"max_nll_increase": -0.1},
        {"max_task_drop": 2.0},
        {"canary_timeout_s": 0},
        {"canaries": "a"},
    ],
)
def test_bad_rollout_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        RolloutSettings(**bad)


@pytest.mark.parametrize(
    "field",
    [
        {"nll_global": float("nan")},
        {"nll_current": float("inf")},
        {"task_global": 1.5},
        {"task_current": -0.1},
        {"train_seconds": -1.0},
        {"task_records": -1},
        {"nll_global": "3.0"},
    ],
)
def test_malformed_evaluations_are_refused(field: dict) -> None:
    body = report("a", 3.0).model_dump() | field
    with pytest.raises(ValidationError):
        Evaluation(**body)
