"""The demo end to end with the tiny model (real broker, real processes): the aggregator
publishes the plant evaluation set over the transport, every box takes it and scores base,
local and global on it, and the summary carries the numbers; every box also trains its solo
(local-only) baseline, which the round table shows beside the others."""

import hashlib
from pathlib import Path

import pytest

from appliance.demo.fleet import AGGREGATOR
from appliance.demo.run import run_demo
from appliance.demo.summary import read_rounds, round_table
from appliance.federation.audit import read_events, verify
from appliance.federation.audit_events import EvaluationReceived, EvaluationSetPublished


def test_every_box_scores_the_plant_set_the_aggregator_published(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    summary = run_demo(2, 1, model="tiny", directory=root, timeout_s=300, quiet=True)
    plant_set = (root / AGGREGATOR / "plant-set.jsonl").read_bytes()
    sha = hashlib.sha256(plant_set).hexdigest()
    audit = root / AGGREGATOR / "state" / "audit.jsonl"
    verify(audit)
    events = list(read_events(audit))
    (published,) = [e for e in events if isinstance(e, EvaluationSetPublished)]
    assert published.sha256 == sha and set(published.recipients) == {"box-1", "box-2"}
    for box in ("box-1", "box-2"):
        assert (root / box / "state" / "plant-set.jsonl").read_bytes() == plant_set
    evaluations = [e for e in events if isinstance(e, EvaluationReceived)]
    assert {e.node_id for e in evaluations} == {"box-1", "box-2"}
    for evaluation in evaluations:
        assert evaluation.plant_set_sha256 == sha
        assert evaluation.plant_task_records > 0
        assert evaluation.plant_nll_local is not None
        assert evaluation.plant_nll_base is not None and evaluation.plant_nll_global is not None
        # trained on plant language: both adapters predict the plant's questions better
        assert evaluation.plant_nll_global < evaluation.plant_nll_base
        assert evaluation.plant_nll_local < evaluation.plant_nll_base
        # the solo baseline (the demo turns it on): scored on both, never sent as an update
        assert evaluation.nll_solo is not None and evaluation.plant_nll_solo is not None
        assert evaluation.plant_nll_solo < evaluation.plant_nll_base
        assert evaluation.plant_task_solo is not None
    (round_,) = summary["rounds"]
    for box, numbers in round_["boxes"].items():
        (evaluation,) = [e for e in evaluations if e.node_id == box]
        assert numbers["plant_nll_global"] == evaluation.plant_nll_global
        assert numbers["plant_nll_local"] == evaluation.plant_nll_local
        assert numbers["plant_nll_solo"] == evaluation.plant_nll_solo
        assert numbers["nll_solo"] == evaluation.nll_solo
    (read,) = read_rounds(audit, {}, {})
    lines = round_table(read, ("box-1", "box-2")).splitlines()
    assert lines[2].split()[1:9] == ["base", "solo", "local", "global"] * 2
    for box in ("box-1", "box-2"):
        row = next(line for line in lines if line.strip().startswith(box)).split()
        assert "-" not in row[1:9]  # every column measured, solo included
        assert float(row[2]) == pytest.approx(round_["boxes"][box]["nll_solo"], abs=5e-5)
    assert "beats the solo (local-only) one on" in lines[-1]
