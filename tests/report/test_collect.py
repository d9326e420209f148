"""The report's reading of the aggregator's records: real SQLite stores, a real audit log."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import EvaluationReceived, GlobalSent, RoundAggregated
from appliance.federation.codec import CodecSpec
from appliance.federation.rounds import RoundSpec, RoundStore, StoredUpdate
from appliance.report.collect import ReportError, collect
from appliance.rollout.store import RolloutStore, Stage
from appliance.telemetry.store import FleetStore
from tests.federation.plans import training_plan

OPENED = 1_000.0


def evaluation(box: str, **numbers: float) -> EvaluationReceived:
    return EvaluationReceived(
        round_id="r1-a",
        global_version=1,
        node_id=box,
        heldout_tokens=50,
        nll_base=4.0,
        nll_global=numbers.get("nll_global", 3.0),
        activated=True,
        train_seconds=numbers.get("train_seconds"),
    )


AGGREGATED = RoundAggregated(
    round_id="r1-a",
    close_reason="deadline with 1 updates",
    participants=("a",),
    update_bytes={"a": 700},
    update_sha256={"a": "0" * 64},
    strategy={"strategy": "fedavg-frozen-a"},
    codec=CodecSpec(),
    global_version=1,
    global_sha256="1" * 64,
    global_bytes=900,
    signer="aggregator",
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """One round: a and b invited, only a sent an update; v1 rejected on the canary."""
    rounds = RoundStore(tmp_path / "rounds.sqlite")
    rounds.open_round(RoundSpec("r1-a", 0, training_plan(), ("a", "b"), 2, 1, 60), OPENED)
    rounds.offer("r1-a", StoredUpdate("a", "0" * 64, 10, b"x" * 700), OPENED + 30)
    rounds.advance(OPENED + 61)
    rounds.close()
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append_event(AGGREGATED)
    audit.append_event(evaluation("a", train_seconds=12.5))
    audit.append_event(evaluation("a", nll_global=9.0))  # a later one: first counts
    store = RolloutStore(tmp_path / "rollout.sqlite")
    store.begin(1, "r1-a", 0, ("a",), ("b",), OPENED)
    store.decide(1, Stage.REJECTED, "v1 regressed on canaries: a: worse", OPENED + 70)
    store.close()
    return tmp_path


def test_rounds_and_cells(state: Path) -> None:
    data = collect(state, "plant")
    assert data.boxes == ["a", "b"]
    (row,) = data.rounds
    assert (row.state, row.invited, row.seconds) == ("closed", ["a", "b"], 61.0)
    assert (row.global_version, row.global_bytes, row.participants) == (1, 900, ["a"])
    assert (row.rollout, row.rollout_reason) == ("rejected", "v1 regressed on canaries: a: worse")
    a, b = data.cell("r1-a", "a"), data.cell("r1-a", "b")
    assert (a.participated, a.bytes_up, a.bytes_down, a.train_seconds) == (True, 700, 900, 12.5)
    assert a.nll_gain == pytest.approx(1.0)
    assert (b.invited, b.participated, b.bytes_up, b.bytes_down, b.nll_gain) == (
        True, False, None, None, None,
    )  # fmt: skip
    assert a.energy_j is None  # no health store: not reported


def test_bytes_down_are_what_each_box_was_sent(state: Path) -> None:
    """A delta to a box that held the base, and the whole file asked for later: both count;
    a log without `global_sent` (an older aggregator) reads as the whole file."""
    audit = AuditLog(state / "audit.jsonl")
    sent = GlobalSent(
        round_id="r1-a",
        global_version=1,
        why="round",
        delta_to=("a",),
        delta_bytes=120,
        full_to=(),
        full_bytes=900,
    )
    audit.append_event(sent)
    requested = sent.model_copy(update={"why": "requested", "delta_to": (), "full_to": ("a",)})
    audit.append_event(requested)
    assert collect(state, "plant").cell("r1-a", "a").bytes_down == 120 + 900


def test_energy_from_rapl_counters_and_nvml_power(state: Path) -> None:
    fleet = FleetStore(state / "fleet-health.sqlite")
    ms = int(OPENED * 1000)
    package, core = "Power/intel-rapl:0 package-0/Energy J", "Power/intel-rapl:0:0 core/Energy J"
    fleet.record(
        "a",
        [
            (package, 100.0, ms + 1000),
            (package, 150.0, ms + 11000),
            (package, 10.0, ms + 21000),  # wrapped: this step counts nothing
            (package, 40.0, ms + 29000),
            (package, 500.0, ms + 40000),  # after the update arrived: outside the window
            (core, 5.0, ms + 1000),
            (core, 45.0, ms + 11000),  # inside the package: not added again
            ("GPU/0/Power W", 10.0, ms + 2000),
            ("GPU/0/Power W", 30.0, ms + 12000),
        ],
    )
    fleet.record("b", [(package, 1.0, ms + 1000)])
    fleet.commit()
    fleet.close()
    data = collect(state, "plant")
    a = data.cell("r1-a", "a")
    assert a.energy_j == pytest.approx(50.0 + 30.0 + 200.0)
    assert a.energy_source == "NVML+RAPL"
    assert data.cell("r1-a", "b").energy_j is None


def test_a_torn_last_line_is_left_for_later(state: Path) -> None:
    with (state / "audit.jsonl").open("ab") as handle:
        handle.write(b'{"seq": 9, "kind": "evalua')
    assert collect(state, "plant").cell("r1-a", "a").nll_global == 3.0


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not valid JSON"),
        (b'{"kind": "evaluation"}\n', "not an audit record (no data)"),
        (b'{"kind": "evaluation", "data": {"nll_global": NaN}}\n', "NaN is not a number"),
        (
            b'{"kind": "round_aggregated", "data": {"round_id": "r"}}\n',
            "participants: Field required",
        ),
        (b"[1, 2]\n", "not an audit record"),
    ],
)
def test_bad_audit_lines_are_named(state: Path, line: bytes, error: str) -> None:
    with (state / "audit.jsonl").open("ab") as handle:
        handle.write(line)
    with pytest.raises(
        ReportError, match="not a readable audit record: .*audit.jsonl:4: "
    ) as caught:
        collect(state, "plant")
    assert error in str(caught.value)
    assert "appliance audit verify" in str(caught.value)


def test_wrong_types_in_an_evaluation_are_named(state: Path) -> None:
    body = evaluation("b").model_dump(mode="json") | {"nll_global": "3.0"}
    AuditLog(state / "audit.jsonl").append("evaluation", body)  # as a hand edit would
    with pytest.raises(ReportError, match="audit.jsonl:4: evaluation: nll_global: Input should"):
        collect(state, "plant")


def test_missing_or_broken_stores(tmp_path: Path, state: Path) -> None:
    with pytest.raises(ReportError, match="has the aggregator run yet"):
        collect(tmp_path / "nothing", "plant")
    (state / "rollout.sqlite").unlink()
    (state / "rollout.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(ReportError, match="cannot be read as a rollout store"):
        collect(state, "plant")
    (state / "rounds.sqlite").unlink()
    (state / "rounds.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(ReportError, match="rounds.sqlite: cannot be read as a round store"):
        collect(state, "plant")


def report_command(tmp_path: Path, state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "aggregator.toml"
    config.write_text(
        'role = "aggregator"\n[identity]\nplant_id = "p"\nnode_id = "aggregator"\n'
        f'private_key_file = "k.key"\ntrust_dir = "trust"\n[paths]\nstate_dir = "{state_dir}"\n'
    )
    (tmp_path / "trust").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "appliance.cli", "report", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_report_command_errors(tmp_path: Path, state: Path) -> None:
    missing = report_command(tmp_path, tmp_path / "empty")
    assert missing.returncode == 1
    assert missing.stderr.startswith("appliance: error: no round store at ")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = report_command(tmp_path, state, "--out", str(blocked))
    assert unwritable.returncode == 1
    assert "cannot write the report" in unwritable.stderr


def test_report_command_writes_json_summary(tmp_path: Path, state: Path) -> None:
    result = report_command(tmp_path, state, "--out", str(tmp_path / "r"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rejected_versions"] == [1]
    assert summary["boxes"]["a"]["energy_j"] is None
    assert summary["boxes"]["b"]["rounds_participated"] == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'data-chart="energy">not reported' in page
    assert "v1 regressed on canaries: a: worse" in page
