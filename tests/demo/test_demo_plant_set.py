"""The demo end to end with the tiny model (real broker, real processes): the aggregator
publishes the plant evaluation set over the transport, every box takes it and scores base,
local and global on it, and the summary carries the numbers."""

import hashlib
from pathlib import Path

from appliance.demo.fleet import AGGREGATOR
from appliance.demo.run import run_demo
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
    (round_,) = summary["rounds"]
    for box, numbers in round_["boxes"].items():
        (evaluation,) = [e for e in evaluations if e.node_id == box]
        assert numbers["plant_nll_global"] == evaluation.plant_nll_global
        assert numbers["plant_nll_local"] == evaluation.plant_nll_local
