"""Signed audit lines: the aggregator's key anchors the chain; `audit verify` names the first
bad line; logs from before signing still verify (chain only, or as an anchored prefix)."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.federation.audit import AuditError, AuditLog, canonical, check, line_hash, verify
from appliance.federation.audit_events import RoundOpened, parse_event
from appliance.identity import NodeKey, generate_key_pair, load_public_key
from tests.federation.test_audit_events import WRITTEN


@pytest.fixture
def keys(tmp_path: Path) -> tuple[NodeKey, Path]:
    private, public = generate_key_pair(tmp_path / "keys", "aggregator")
    return NodeKey.load("aggregator", private), public


def signed_log(path: Path, key: NodeKey, n: int = 4) -> AuditLog:
    log = AuditLog(path, signer=key)
    for i in range(n):
        log.append("round", {"round": i})
    return log


def rewrite(path: Path, index: int, change) -> None:
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[index])
    change(record)
    lines[index] = canonical(record).decode() + "\n"
    path.write_text("".join(lines))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "verify", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_line_is_signed_and_verifies(tmp_path: Path, keys) -> None:
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    result = check(log.path, load_public_key(public))
    assert (result.signed, result.unsigned, result.head) == (4, 0, log.head)
    assert all("sig" in json.loads(line) for line in log.path.read_text().splitlines())
    done = cli(str(log.path), "--key", str(public), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signed"] == 4


def test_typed_events_are_signed_like_any_line(tmp_path: Path, keys) -> None:
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key, n=1)  # an older, untyped line first
    event = parse_event("round_opened", WRITTEN["round_opened"])
    log.append_event(event)
    log.append_event_once(event, "round_id")  # already there: not signed twice
    result = check(log.path, load_public_key(public))
    assert (result.signed, result.unsigned) == (2, 0)
    assert log.find_event(RoundOpened, "round_id", "r1-a") == event


def test_a_rewritten_log_with_recomputed_hashes_fails_at_its_first_line(
    tmp_path: Path, keys
) -> None:
    """The attack a bare hash chain cannot see: edit a line and recompute every hash."""
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    lines[1]["data"]["round"] = 99
    prev = lines[0]["hash"]
    for record in lines[1:]:
        record["prev"] = prev
        record["hash"] = prev = line_hash(record)
    log.path.write_text("".join(canonical(r).decode() + "\n" for r in lines))
    verify(log.path)  # the chain alone is consistent again
    with pytest.raises(AuditError, match=r"audit.jsonl:2: signature does not match"):
        check(log.path, load_public_key(public))
    done = cli(str(log.path), "--key", str(public))
    assert done.returncode == 1
    assert "audit.jsonl:2: signature does not match" in done.stderr


def test_signed_by_another_key_fails(tmp_path: Path, keys) -> None:
    _key, public = keys
    other = NodeKey("aggregator", Ed25519PrivateKey.generate())
    log = signed_log(tmp_path / "audit.jsonl", other)
    with pytest.raises(AuditError, match=r"audit.jsonl:1: signature does not match"):
        check(log.path, load_public_key(public))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("sig"), "signer or signature missing"),
        (lambda r: r.update(sig="not base64!"), "not base64"),
        (lambda r: r.update(sig=base64.b64encode(b"x" * 64).decode()), "does not match"),
        (lambda r: r.update(sig=base64.b64encode(b"").decode()), "does not match"),
        (lambda r: r.update(sig=7), "not a string"),
    ],
)
def test_damaged_signatures_are_named(tmp_path: Path, keys, change, message: str) -> None:
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    rewrite(log.path, 2, change)
    with pytest.raises(AuditError, match=rf"audit.jsonl:3: .*{message}"):
        check(log.path, load_public_key(public))


def test_stripping_signer_and_signature_breaks_the_hash(tmp_path: Path, keys) -> None:
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    rewrite(log.path, 1, lambda r: (r.pop("sig"), r.pop("signer")))
    with pytest.raises(AuditError, match=r"audit.jsonl:2: line was edited"):
        check(log.path, load_public_key(public))


def test_an_older_unsigned_log_verifies_chain_only_and_not_with_a_key(tmp_path: Path, keys) -> None:
    _key, public = keys
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(3):
        log.append("round", {"round": i})
    assert check(log.path).unsigned == 3
    done = cli(str(log.path))
    assert done.returncode == 0
    assert "signatures NOT checked" in done.stdout
    with pytest.raises(AuditError, match="no line is signed"):
        check(log.path, load_public_key(public))


def test_an_unsigned_prefix_is_anchored_by_the_first_signed_line(tmp_path: Path, keys) -> None:
    """An aggregator upgraded mid-life: old lines unsigned, new lines signed."""
    key, public = keys
    path = tmp_path / "audit.jsonl"
    old = AuditLog(path)
    old.append("round", {"round": 0})
    old.append("round", {"round": 1})
    signed_log(path, key, 2)
    result = check(path, load_public_key(public))
    assert (result.signed, result.unsigned) == (2, 2)
    # editing the old prefix (even with recomputed hashes) breaks the signed line's link
    rewrite(path, 0, lambda r: (r["data"].update(round=5), r.update(hash=line_hash(r))))
    with pytest.raises(AuditError, match=r"audit.jsonl:2: does not chain"):
        check(path, load_public_key(public))


def test_an_unsigned_line_after_signed_ones_fails(tmp_path: Path, keys) -> None:
    key, public = keys
    path = tmp_path / "audit.jsonl"
    signed_log(path, key, 2)
    AuditLog(path).append("round", {"round": "inserted"})
    with pytest.raises(AuditError, match=r"audit.jsonl:3: line is not signed, after signed"):
        check(path, load_public_key(public))


def test_the_anchor_comes_from_a_config_file(tmp_path: Path, keys) -> None:
    key, public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "aggregator.pub").write_bytes(public.read_bytes())
    edge = tmp_path / "edge.toml"
    edge.write_text(
        'role = "edge"\n[identity]\nplant_id = "p"\nnode_id = "box-1"\n'
        f'private_key_file = "{tmp_path / "box.key"}"\ntrust_dir = "{trust}"\n'
    )
    done = cli(str(log.path), "--config", str(edge), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signatures_checked"] is True
    aggregator = tmp_path / "aggregator.toml"
    aggregator.write_text(
        'role = "aggregator"\n[identity]\nplant_id = "p"\nnode_id = "aggregator"\n'
        f'private_key_file = "{tmp_path / "keys" / "aggregator.key"}"\n'
        f'trust_dir = "{tmp_path / "empty"}"\n'
    )
    done = cli(str(log.path), "--config", str(aggregator), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signed"] == 4


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path, keys) -> None:
    key, _public = keys
    log = signed_log(tmp_path / "audit.jsonl", key)
    done = cli(str(log.path), "--key", str(tmp_path / "nope.pub"))
    assert done.returncode != 0
    assert "nope.pub: key file does not exist" in done.stderr
