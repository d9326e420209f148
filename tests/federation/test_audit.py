"""Audit log: appends chain; any edit, removal or reordering is found at its line; typed
events are written as their JSON and read back, a bad line named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.federation.audit import GENESIS, AuditError, AuditLog, check, read_events, verify
from appliance.federation.audit_events import RoundAggregated, RoundOpened, parse_as, parse_event
from tests.federation.test_audit_events import WRITTEN


def make_log(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("round", {"round": i, "participants": ["a", "b"], "global_sha256": f"{i:064x}"})
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_chain_verifies_and_reports_its_head(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    head = verify(log.path)
    assert head == log.head
    assert head.seq == 5
    first = json.loads(lines(log.path)[0])
    assert first["prev"] == GENESIS


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    make_log(tmp_path / "audit.jsonl", 2)
    again = AuditLog(tmp_path / "audit.jsonl")
    again.append("round", {"round": 99})
    assert verify(tmp_path / "audit.jsonl").seq == 3


def test_edited_line_is_found(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    content = lines(log.path)
    content[2] = content[2].replace('"round":2', '"round":7')
    log.path.write_text("".join(content))
    with pytest.raises(AuditError, match=r"audit.jsonl:3: line was edited"):
        verify(log.path)


def test_edited_line_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    from appliance.federation.audit import canonical, line_hash

    log = make_log(tmp_path / "audit.jsonl")
    content = lines(log.path)
    record = json.loads(content[1])
    record["data"]["participants"] = ["a"]
    record["hash"] = line_hash(record)
    content[1] = canonical(record).decode() + "\n"
    log.path.write_text("".join(content))
    with pytest.raises(AuditError, match=r"audit.jsonl:3: does not chain to the previous line"):
        verify(log.path)


def test_removed_line_is_found(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    content = lines(log.path)
    del content[1]
    log.path.write_text("".join(content))
    with pytest.raises(AuditError, match=r"audit.jsonl:2: sequence 3 follows 1"):
        verify(log.path)


def test_reordered_lines_are_found(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    content = lines(log.path)
    content[1], content[2] = content[2], content[1]
    log.path.write_text("".join(content))
    with pytest.raises(AuditError, match=r"audit.jsonl:2: sequence 3 follows 1"):
        verify(log.path)


def test_garbage_and_torn_lines(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl", 2)
    with log.path.open("a") as handle:
        handle.write('{"seq": 3, "kind"')
    with pytest.raises(AuditError, match="last line is incomplete"):
        verify(log.path)
    recovered = AuditLog(log.path)  # a crash mid-write: the torn line was never committed
    assert recovered.head.seq == 2
    recovered.append("round", {"round": 3})
    assert verify(log.path).seq == 3
    log.path.write_text(log.path.read_text() + "not json\n")
    with pytest.raises(AuditError, match=r"audit.jsonl:4: not valid JSON"):
        verify(log.path)


def test_nan_cannot_enter_the_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError):
        log.append("round", {"nll": float("nan")})
    assert not (tmp_path / "audit.jsonl").exists() or verify(tmp_path / "audit.jsonl").seq == 0


def run_verify(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "verify", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_verify_command(tmp_path: Path) -> None:
    log = make_log(tmp_path / "audit.jsonl")
    ok = run_verify(log.path, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "ok": True,
        "lines": 5,
        "head": log.head.hash,
        "signed": 0,
        "unsigned": 5,
        "signatures_checked": False,
    }
    content = lines(log.path)
    content[3] = content[3].replace('"a"', '"z"')
    log.path.write_text("".join(content))
    bad = run_verify(log.path)
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == f"appliance: error: {log.path}:4: line was edited (its hash does not match its content)"
    )
    missing = run_verify(tmp_path / "none.jsonl")
    assert missing.returncode == 1
    assert "cannot be read" in missing.stderr


# -- typed events ------------------------------------------------------------------------------


def opened(round_id: str = "r1-a") -> RoundOpened:
    return parse_as(RoundOpened, WRITTEN["round_opened"] | {"round_id": round_id})


def test_typed_events_are_written_as_their_json_and_read_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    events = [parse_event(kind, data) for kind, data in sorted(WRITTEN.items())]
    for event in events:
        log.append_event(event)
    assert list(read_events(log.path)) == events
    first = json.loads(lines(log.path)[0])
    assert (first["kind"], first["data"]) == (events[0].kind, events[0].model_dump(mode="json"))
    assert verify(log.path).seq == len(events)


def test_records_written_the_old_way_read_as_events(tmp_path: Path) -> None:
    """A log written with the dict `append` (every log before the typed calls)."""
    log = AuditLog(tmp_path / "audit.jsonl")
    for kind, data in WRITTEN.items():
        log.append(kind, data)
    assert [e.kind for e in read_events(log.path)] == list(WRITTEN)


def test_append_event_once_and_find_event(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.find_event(RoundOpened, "round_id", "r1-a") is None  # no file yet
    log.append_event_once(opened("r1-a"), "round_id")
    log.append_event_once(opened("r1-a"), "round_id")  # a restart repeating the step
    log.append_event_once(opened("r2-b"), "round_id")
    assert [e.round_id for e in read_events(log.path)] == ["r1-a", "r2-b"]  # type: ignore[union-attr]
    found = log.find_event(RoundOpened, "round_id", "r2-b")
    assert found == opened("r2-b")
    assert log.find_event(RoundOpened, "round_id", "r9-z") is None
    assert log.find_event(RoundAggregated, "round_id", "r1-a") is None  # another kind


def test_find_event_names_a_record_that_does_not_fit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("round_opened", {"round_id": "r1-a", "plan": {}})
    with pytest.raises(AuditError, match=r"audit.jsonl: round_opened: global_version: Field"):
        log.find_event(RoundOpened, "round_id", "r1-a")


def test_the_reader_leaves_a_half_written_last_line_for_later(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append_event(opened())
    with log.path.open("ab") as handle:
        handle.write(b'{"data":{"round_id":"r2-')
    assert list(read_events(log.path)) == [opened()]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not valid JSON"),
        (b"\xff\xfe\n", "not valid JSON"),
        (b"[1, 2]\n", "not an audit record (no kind)"),
        (b'{"kind": 3, "data": {}}\n', "not an audit record (no kind)"),
        (b'{"kind": "evaluation"}\n', "not an audit record (no data)"),
        (b'{"kind": "evaluation", "data": {"nll_global": NaN}}\n', "NaN is not a number JSON allows"),
        (b'{"kind": "evaluation", "data": {"nll_global": 1e999}}\n', "evaluation: data is not finite JSON"),
        (b'{"kind": "round_aggregated", "data": {"round_id": "r"}}\n', "round_aggregated: participants: Field required (and"),
        (b'{"kind": "round", "data": {}}\n', "unknown event kind 'round'"),
    ],
)  # fmt: skip
def test_the_reader_names_a_corrupted_line(tmp_path: Path, line: bytes, error: str) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append_event(opened())
    with log.path.open("ab") as handle:
        handle.write(line)
    log.append_event(opened("r2-b"))  # a good line after it: the bad one is not the last
    events = read_events(log.path)
    assert next(events) == opened()
    with pytest.raises(AuditError) as caught:
        next(events)
    assert str(caught.value).startswith(f"{log.path}:2: {error}")


def test_the_reader_names_a_missing_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"none.jsonl: cannot be read"):
        list(read_events(tmp_path / "none.jsonl"))


LOGS = Path(__file__).parent / "audit_logs"


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        (
            "demo-plain-rounds.jsonl",
            ["round_opened", "round_aggregated", "evaluation", "round_opened", "evaluation",
             "evaluation", "round_aggregated", "evaluation", "evaluation", "evaluation"],
        ),
        ("update-rejected.jsonl", ["round_opened", "update_rejected"]),
        (
            "secure-round.jsonl",
            ["round_opened", "round_aggregated", "evaluation", "evaluation", "evaluation"],
        ),
        (
            "rollout-rejected.jsonl",
            ["round_opened", "round_aggregated", "rollout_started", "evaluation",
             "rollout_promoted", "evaluation", "round_opened", "round_aggregated",
             "rollout_started", "evaluation", "rollout_rejected"],
        ),
    ],
)  # fmt: skip
def test_logs_written_before_the_typed_events_read_as_events(name: str, kinds: list[str]) -> None:
    """Signed logs the daemons wrote with the dict `append` (the demo, a junk update, a
    secure round with a frozen box, a harmful update stopped on its canary)."""
    path = LOGS / name
    assert check(path).signed == len(kinds)  # untouched since the daemons wrote them
    events = list(read_events(path))
    assert [e.kind for e in events] == kinds
    for line, event in zip(lines(path), events, strict=True):
        data, dumped = json.loads(line)["data"], event.model_dump(mode="json")
        assert {k: dumped[k] for k in data} == data  # what the line holds, nothing lost


def test_a_secure_round_of_a_real_log_names_who_dropped() -> None:
    aggregated = [
        e for e in read_events(LOGS / "secure-round.jsonl") if isinstance(e, RoundAggregated)
    ]
    (secure,) = aggregated
    assert secure.secure_aggregation is not None and secure.dropped == ("box-3",)
    assert secure.privacy is None
