"""A harmful update is stopped at the canary: real broker, aggregator and boxes as processes.

Round 1: three boxes with honest data; the canary (box-1) finds v1 better than the base model
and v1 is promoted to every box. Then box-3 receives many records shaped like the canary
line's, labels shuffled and turned into noise (tests/rollout/harmful.py says why plain
shuffled labels are not harmful on the tiny model), and round 2 runs: its sample count makes
box-3 dominate the average, v2 goes to the canary only, the canary's held-out NLL rises, v2
is rejected and rolled back there, box-2 and box-3 never receive it, and the audit log and
`fleet status` say why. Without the canary gate box-2 would serve v2 and the test fails.
"""

import subprocess
import sys
from pathlib import Path

from appliance.data.synthetic import line_for, write_jsonl
from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.federation.audit import verify
from appliance.llm.tiny import make_tiny_model
from tests.rollout.fleet import (
    add_section,
    audit_records,
    edge_state,
    set_aggregator,
    stop_all,
    wait_until,
)
from tests.rollout.harmful import harmful_records

HARMFUL_RECORDS = 800
ROLLOUT = '\n[rollout]\ncanaries = ["box-1"]\ncanary_timeout_s = 600.0\n'


def test_shuffled_labels_are_rejected_by_the_canary_and_never_reach_the_fleet(
    tmp_path: Path,
) -> None:
    broker, port = start_broker(tmp_path / "broker")
    options = FleetOptions(
        3, 1, str(make_tiny_model(tmp_path / "tiny.gguf")), port, 60, TINY_TRAINING
    )
    layout = lay_out(tmp_path, options)
    add_section(layout, AGGREGATOR, ROLLOUT)
    audit = layout.audit_log
    boxes = [spawn_node(layout, box) for box in layout.boxes]
    aggregator = spawn_node(layout, AGGREGATOR)
    try:
        every = [*boxes, aggregator]
        wait_until(lambda: audit_records(audit, "rollout_promoted"), "v1 promoted", every)
        promoted = audit_records(audit, "rollout_promoted")[0]
        assert promoted["global_version"] == 1
        assert promoted["canaries"] == ["box-1"]
        assert sorted(promoted["recipients"]) == ["box-2", "box-3"]
        wait_until(
            lambda: all(edge_state(layout, b).get("active_version") == 1 for b in layout.boxes),
            "every box serving v1",
            every,
        )
        stop_process(aggregator)

        harmful = layout.root / "box-3" / "spool" / "harmful.jsonl"
        write_jsonl(harmful, harmful_records(line_for(0), HARMFUL_RECORDS, seed=7))
        processed = layout.root / "box-3" / "spool" / "processed"
        wait_until(lambda: not harmful.exists() and processed.exists(), "box-3 ingest", boxes)

        set_aggregator(layout, **{"max_rounds = 1": "max_rounds = 2"})
        aggregator = spawn_node(layout, AGGREGATOR)
        every = [*boxes, aggregator]
        wait_until(
            lambda: audit_records(audit, "rollout_rejected")
            or len(audit_records(audit, "rollout_promoted")) > 1,
            "the canary's verdict on v2",
            every,
        )
        rejected = audit_records(audit, "rollout_rejected")
        assert rejected, f"v2 was promoted: {audit_records(audit, 'rollout_promoted')[-1]}"
        verdict = rejected[0]
        assert verdict["global_version"] == 2
        assert verdict["rolled_back_to"] == 1
        assert sorted(verdict["never_sent_to"]) == ["box-2", "box-3"]
        assert verdict["regressions"] and verdict["regressions"][0].startswith("box-1: held-out NLL")
        canary = verdict["reports"]["box-1"]
        assert canary["current_version"] == 1
        assert canary["nll_candidate"] > canary["nll_current"]
        print(f"canary box-1: v1 NLL {canary['nll_current']:.4f}, v2 {canary['nll_candidate']:.4f}")

        wait_until(
            lambda: edge_state(layout, "box-1").get("active_version") == 1,
            "the canary back on v1",
            every,
        )
        for box in ("box-2", "box-3"):
            assert edge_state(layout, box)["active_version"] == 1
            assert not (layout.state_dir(box) / "adapters" / "global-v2.gguf").exists()
        assert not [
            e
            for e in audit_records(audit, "evaluation")
            if e["global_version"] == 2 and e["node_id"] != "box-1"
        ]
        config = str(layout.config(AGGREGATOR))
        status = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "fleet", "status", "--config", config],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ROLLOUT v2" in status and "rejected: v2 regressed on canaries: box-1" in status
        verify(audit)
    finally:
        stop_all([aggregator, *boxes, broker])
