"""Health-aware training: a hot box does not train; once it cools down it joins the round."""

import shutil
import time
from pathlib import Path

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.llm.tiny import make_tiny_model
from tests.federation.test_end_to_end import audit_records, wait_until

TREES = Path(__file__).parents[1] / "telemetry" / "trees"


def test_an_overheated_box_waits_and_trains_when_it_has_cooled_down(tmp_path: Path) -> None:
    tree = tmp_path / "sysroot"
    shutil.copytree(TREES / "over_temperature", tree)
    broker, port = start_broker(tmp_path / "broker")
    options = FleetOptions(
        1, 1, str(make_tiny_model(tmp_path / "tiny.gguf")), port, 60, TINY_TRAINING
    )
    layout = lay_out(tmp_path, options)
    box = layout.boxes[0]
    with layout.config(box).open("a") as config:
        config.write(f'[health]\nroot_dir = "{tree}"\nprobe_interval_s = 1\n')
    # the disks probe measures the state directory as seen under the recorded root
    state = layout.state_dir(box)
    state.mkdir(parents=True, exist_ok=True)
    (tree / state.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
    (tree / state.relative_to("/")).symlink_to(state)
    processes = [spawn_node(layout, AGGREGATOR), spawn_node(layout, box)]
    log = layout.root / box / "daemon.log"
    try:

        def refused_for_heat() -> bool:
            lines = log.read_text().splitlines() if log.exists() else []
            # the first refusal may come before the first probe round ("no probe has run yet")
            return any("not joining now: temperature" in line for line in lines)

        wait_until(refused_for_heat, "the gate to refuse because of the temperature")
        time.sleep(3)  # several re-announcements: still no training while hot
        assert "training on" not in log.read_text()
        assert audit_records(layout.audit_log, "round_aggregated") == []
        shutil.copytree(TREES / "healthy", tree, dirs_exist_ok=True)  # the sensors cool down
        wait_until(
            lambda: audit_records(layout.audit_log, "round_aggregated"), "the round after cooling"
        )
        assert audit_records(layout.audit_log, "round_aggregated")[0]["participants"] == [box]
    finally:
        for process in [*processes, broker]:
            stop_process(process)
