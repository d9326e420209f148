"""The demo's per-round summary, read from a real audit log as typed events: plain rounds
show their compression ratio, secure rounds from older logs (no dense sizes) show none."""

import json
from pathlib import Path

from appliance.demo.summary import read_rounds, round_table
from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import RoundAggregated, parse_event
from tests.federation.test_audit_events import SECURE_ROUND, WRITTEN


def write_log(path: Path) -> AuditLog:
    log = AuditLog(path)
    log.append_event(parse_event("round_opened", WRITTEN["round_opened"]))
    log.append_event(parse_event("round_aggregated", WRITTEN["round_aggregated"]))
    log.append_event(parse_event("evaluation", WRITTEN["evaluation"]))
    log.append("round_aggregated", SECURE_ROUND | {"round_id": "r2-b", "global_version": 2})
    return log


def test_rounds_with_their_evaluations_and_ratios(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    with log.path.open("ab") as handle:
        handle.write(b'{"data":{"round_id":"r2-b","node_id":"box-1"')  # being written
    plain, secure = read_rounds(log.path, {"r1-a": 100.0}, {"r1-a": 130.5})
    assert (plain.round_id, plain.global_version, plain.seconds) == ("r1-a", 1, 30.5)
    assert plain.bytes_down == 8128 * 2
    assert plain.ratio("box-1") == 3072 / 1525
    assert set(plain.boxes) == {"box-1"} and plain.boxes["box-1"].nll_local == 3.5
    assert (secure.round_id, secure.seconds, secure.ratio("box-1")) == ("r2-b", None, None)
    summary = json.loads(json.dumps(plain.as_json()))
    assert summary["compression_ratio"] == {"box-1": 3072 / 1525, "box-2": 3072 / 1525}
    no_plant_set = {
        "plant_nll_base": None,
        "plant_nll_solo": None,
        "plant_nll_local": None,
        "plant_nll_global": None,
    }
    own = {"nll_base": 4.0, "nll_solo": None, "nll_local": 3.5, "nll_global": 3.0}
    assert summary["boxes"] == {"box-1": own | no_plant_set}
    assert secure.as_json()["compression_ratio"] == {}


def test_the_round_table_shows_what_is_known(tmp_path: Path) -> None:
    log = write_log(tmp_path / "audit.jsonl")
    plain, secure = read_rounds(log.path, {}, {})
    table = round_table(plain, ("box-1", "box-2")).splitlines()
    assert table[0] == "round r1-a: global adapter v1, ?, strategy fedavg-frozen-a"
    # own held-out NLL base, solo (none: no solo baseline), local, global; then the same on
    # the plant set (none here)
    assert table[3].split() == [
        "box-1", "4.0000", "-", "3.5000", "3.0000", *"----", "1525", "2.0x",
    ]  # fmt: skip
    assert table[4].split() == ["box-2", *"--------", "1525", "2.0x"]
    assert round_table(secure, ("box-1",)).splitlines()[3].split() == [
        "box-1", *"--------", "1525", "-",
    ]  # fmt: skip


def test_no_log_yet(tmp_path: Path) -> None:
    assert read_rounds(tmp_path / "audit.jsonl", {}, {}) == []
    assert RoundAggregated.kind == "round_aggregated"
