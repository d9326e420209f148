"""The plant-wide numbers where people read them: the demo's round table and JSON summary,
and the scores table of `appliance fleet status` (read from a real audit log)."""

from pathlib import Path

from appliance.demo.summary import RoundSummary, plant_verdict, round_table
from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import EvaluationReceived
from appliance.federation.messages import Evaluation
from appliance.telemetry.scores import latest_scores, render_scores

SHA = "ab" * 32


def evaluation(
    box: str,
    version: int,
    local: float,
    global_: float,
    nll_solo: float | None = None,
    **plant: float,
) -> Evaluation:
    return Evaluation(
        nll_solo=nll_solo,
        round_id=f"r{version}-abc",
        global_version=version,
        node_id=box,
        heldout_tokens=100,
        nll_base=4.5,
        nll_local=local,
        nll_global=global_,
        activated=True,
        plant_set_sha256=SHA if plant else None,
        plant_tokens=300 if plant else None,
        **plant,
    )


def summary() -> RoundSummary:
    boxes = {
        "box-1": evaluation(
            "box-1", 1, 3.82, 3.86, plant_nll_base=4.6, plant_nll_local=4.1, plant_nll_global=3.9
        ),
        "box-2": evaluation(
            "box-2", 1, 3.7, 3.75, plant_nll_base=4.6, plant_nll_local=4.3, plant_nll_global=4.0
        ),
        "box-3": evaluation("box-3", 1, 3.9, 3.95),  # an older box: no plant set
    }
    return RoundSummary(
        "r1-abc",
        global_version=1,
        bytes_up={"box-1": 1000},
        boxes={box: EvaluationReceived.of(e) for box, e in boxes.items()},
    )


def test_the_json_summary_carries_the_plant_numbers_of_every_box() -> None:
    boxes = summary().as_json()["boxes"]
    assert boxes["box-1"] == {
        "nll_base": 4.5,
        "nll_solo": None,  # this box trains no solo baseline
        "nll_local": 3.82,
        "nll_global": 3.86,
        "plant_nll_base": 4.6,
        "plant_nll_solo": None,
        "plant_nll_local": 4.1,
        "plant_nll_global": 3.9,
    }
    assert boxes["box-3"]["plant_nll_global"] is None


def test_the_round_table_shows_both_comparisons_and_who_gains_plant_wide() -> None:
    table = round_table(summary(), ("box-1", "box-2", "box-3", "box-4"))
    lines = table.splitlines()
    assert "own held-out data (NLL)" in lines[1] and "plant evaluation set (NLL)" in lines[1]
    assert lines[2].split()[1:9] == ["base", "solo", "local", "global"] * 2
    row = next(line for line in lines if line.strip().startswith("box-1"))
    assert row.split()[1:9] == [
        "4.5000", "-", "3.8200", "3.8600", "4.6000", "-", "4.1000", "3.9000",
    ]  # fmt: skip
    row = next(line for line in lines if line.strip().startswith("box-3"))
    assert row.split()[5:9] == ["-", "-", "-", "-"]
    assert "box-4" in table  # a box that did not report yet has a row of dashes
    assert lines[-1].strip() == (
        "plant-wide: the global adapter beats the local one on 2 of 2 boxes, by +0.2500 "
        "nats/token on average"
    )


def test_with_solo_baselines_the_table_shows_them_and_the_verdict_compares_with_them() -> None:
    boxes = {
        "box-1": evaluation(
            "box-1",
            2,
            3.82,
            3.86,
            nll_solo=3.80,
            plant_nll_base=4.6,
            plant_nll_solo=4.3,
            plant_nll_local=4.0,
            plant_nll_global=3.9,
        ),
        "box-2": evaluation(  # alone, this box does better on the plant set than the fleet
            "box-2",
            2,
            3.7,
            3.75,
            nll_solo=3.72,
            plant_nll_base=4.6,
            plant_nll_solo=3.95,
            plant_nll_local=4.1,
            plant_nll_global=4.0,
        ),
    }
    summary = RoundSummary(
        "r2-abc", global_version=2, boxes={b: EvaluationReceived.of(e) for b, e in boxes.items()}
    )
    numbers = summary.as_json()["boxes"]["box-2"]
    assert (numbers["nll_solo"], numbers["plant_nll_solo"]) == (3.72, 3.95)
    lines = round_table(summary, ("box-1", "box-2")).splitlines()
    row = next(line for line in lines if line.strip().startswith("box-1"))
    assert row.split()[1:9] == [
        "4.5000", "3.8000", "3.8200", "3.8600", "4.6000", "4.3000", "4.0000", "3.9000",
    ]  # fmt: skip
    # against solo: +0.4 on box-1, -0.05 on box-2 (against local it would be +0.1 and +0.1)
    assert lines[-1].strip() == (
        "plant-wide: the global adapter beats the solo (local-only) one on 1 of 2 boxes, by "
        "+0.1750 nats/token on average"
    )


def test_no_verdict_without_plant_numbers() -> None:
    plain = RoundSummary(
        "r1-x", boxes={"box-1": EvaluationReceived.of(evaluation("box-1", 1, 3, 3))}
    )
    assert plant_verdict(plain, ("box-1",)) is None
    assert "plant-wide" not in round_table(plain, ("box-1",))


def test_fleet_status_shows_each_boxs_latest_evaluation(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    assert latest_scores(log_path) == [] and render_scores([]) == ""
    audit = AuditLog(log_path)
    for event in (
        evaluation(
            "box-2", 1, 3.7, 3.75, plant_nll_base=4.6, plant_nll_local=4.3, plant_nll_global=4.0
        ),
        evaluation(
            "box-1",
            2,
            3.6,
            3.65,
            nll_solo=3.4,
            plant_nll_base=4.6,
            plant_nll_solo=4.4,
            plant_nll_local=4.2,
            plant_nll_global=3.8,
        ),
        evaluation("box-1", 1, 3.8, 3.9),  # delivered late: an older version
    ):
        audit.append_event(EvaluationReceived.of(event))
    scores = latest_scores(log_path)
    assert [(s.box, s.evaluation.global_version) for s in scores] == [("box-1", 2), ("box-2", 1)]
    assert scores[0].as_json()["plant_nll_global"] == 3.8
    assert scores[0].as_json()["plant_set_sha256"] == SHA
    lines = render_scores(scores).splitlines()
    assert lines[0].split() == [
        "SCORES",
        "GLOBAL",
        "OWN",
        "BASE",
        "SOLO",
        "LOCAL",
        "GLOBAL",
        "PLANT",
        "BASE",
        "SOLO",
        "LOCAL",
        "GLOBAL",
    ]
    assert lines[1].split() == [
        "box-1",
        "v2",
        "4.5000",
        "3.4000",
        "3.6000",
        "3.6500",
        "4.6000",
        "4.4000",
        "4.2000",
        "3.8000",
    ]
    assert scores[0].as_json()["plant_nll_solo"] == 4.4
    assert lines[2].split()[3] == "-"  # box-2 trains no solo baseline
