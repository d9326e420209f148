"""A box with DP on: its first update goes out clipped and noised with its epsilon in the audit
log and its metrics; the next round would exceed its budget, so it declines and says why."""

import json
from pathlib import Path

import pytest

from appliance.config.layouts import AggregatorLayout
from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.federation.audit import check
from appliance.identity import load_public_key
from appliance.llm.tiny import make_tiny_model
from appliance.privacy.accountant import Release, epsilon
from appliance.telemetry.metrics import DP_EPSILON_SPENT
from appliance.telemetry.store import FleetStore
from tests.federation.test_end_to_end import audit_records, wait_until

DELTA = 1e-5


def dp_metric(store_file: Path, box: str) -> float | None:
    if not store_file.exists():
        return None
    store = FleetStore(store_file, read_only=True)
    try:
        value = store.latest(box).get(DP_EPSILON_SPENT)
    except Exception:  # the aggregator is still creating its tables
        return None
    finally:
        store.close()
    return value if isinstance(value, float) else None


def test_a_box_refuses_the_round_that_would_exceed_its_budget(tmp_path: Path) -> None:
    one, two = epsilon([Release("a", 1.0)], DELTA), epsilon([Release("a", 1.0)] * 2, DELTA)
    budget = (one + two) / 2  # room for exactly one update
    broker, port = start_broker(tmp_path / "broker")
    options = FleetOptions(
        1, 2, str(make_tiny_model(tmp_path / "tiny.gguf")), port, 60, TINY_TRAINING
    )
    layout = lay_out(tmp_path, options)
    box = layout.boxes[0]
    with layout.config(box).open("a") as config:
        config.write(
            "[privacy]\nenabled = true\nclip_norm = 0.05\nnoise_multiplier = 1.0\n"
            f"target_delta = {DELTA}\nepsilon_budget = {budget}\n"
        )
    processes = [spawn_node(layout, AGGREGATOR), spawn_node(layout, box)]
    log = layout.root / box / "daemon.log"
    try:
        wait_until(lambda: audit_records(layout.audit_log, "round_aggregated"), "round 1")
        first = audit_records(layout.audit_log, "round_aggregated")[0]
        assert first["participants"] == [box]
        claim = first["privacy"][box]
        assert claim["epsilon"] == pytest.approx(one, rel=1e-9)
        assert claim["releases"] == 1
        assert (claim["clip_norm"], claim["noise_multiplier"], claim["delta"]) == (
            0.05,
            1.0,
            DELTA,
        )

        def declined() -> bool:
            return "privacy budget: one more update would bring epsilon to" in log.read_text()

        wait_until(declined, "the box to decline round 2 for its budget")
        line = next(ln for ln in log.read_text().splitlines() if "privacy budget" in ln)
        assert f"{two:.3f} > budget" in line
        assert log.read_text().count("update sent") == 1
        ledger = json.loads((layout.state_dir(box) / "privacy-ledger.json").read_text())
        assert len(ledger["releases"]) == 1
        opened = audit_records(layout.audit_log, "round_opened")
        assert len(opened) == 2
        assert ledger["releases"][0]["round_id"] == opened[0]["round_id"]
        store_file = AggregatorLayout(layout.state_dir(AGGREGATOR)).fleet_health_db
        wait_until(  # 0.0 before the first update, then the epsilon of one release
            lambda: dp_metric(store_file, box) == pytest.approx(one, rel=1e-6),
            "the box's epsilon metric at the host",
        )
        key = load_public_key(layout.root / AGGREGATOR / "keys" / f"{AGGREGATOR}.pub")
        result = check(layout.audit_log, key)
        assert result.signed == result.head.seq >= 3
    finally:
        for process in [*processes, broker]:
            stop_process(process)
