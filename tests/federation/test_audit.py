"""Audit log: appends chain; any edit, removal or reordering is found at its line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.federation.audit import GENESIS, AuditError, AuditLog, verify


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
