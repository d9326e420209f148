"""Node keys, `appliance keygen` and the trust store."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.identity import (
    BadSignatureError,
    NodeKey,
    TrustStore,
    UnknownSignerError,
    generate_key_pair,
)
from appliance.identity.errors import IdentityError


def test_keygen_command_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "keygen", "--out", str(out), "--id", "box-7"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    private, public = out / "box-7.key", out / "box-7.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = NodeKey.load("box-7", private)
    trust = TrustStore(out)
    trust.verify("box-7", b"data", key.sign(b"data"))


def test_keygen_refuses_to_overwrite_and_bad_ids(tmp_path: Path) -> None:
    generate_key_pair(tmp_path, "agg")
    before = (tmp_path / "agg.key").read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        generate_key_pair(tmp_path, "agg")
    assert (tmp_path / "agg.key").read_bytes() == before
    with pytest.raises(IdentityError, match="invalid node id"):
        generate_key_pair(tmp_path, "box/+")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "keygen", "--out", str(tmp_path), "--id", "agg"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "already exists" in result.stderr


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private, _ = generate_key_pair(tmp_path, "box")
    private.chmod(0o644)
    with pytest.raises(IdentityError, match="too open"):
        NodeKey.load("box", private)


def test_garbage_key_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "box.key"
    bad.write_bytes(b"not a key")
    bad.chmod(0o600)
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        NodeKey.load("box", bad)
    with pytest.raises(IdentityError, match="does not exist"):
        NodeKey.load("box", tmp_path / "missing.key")
    (tmp_path / "peer.pub").write_text("garbage")
    with pytest.raises(UnknownSignerError, match="unusable"):
        TrustStore(tmp_path).public_key("peer")


def test_trust_store_unknown_signer_bad_signature_and_key_rotation(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    private, public = generate_key_pair(keys, "box")
    key = NodeKey.load("box", private)
    trust = TrustStore(trust_dir)
    signature = key.sign(b"manifest bytes")
    with pytest.raises(UnknownSignerError):
        trust.verify("box", b"manifest bytes", signature)
    (trust_dir / "box.pub").write_bytes(public.read_bytes())
    trust.verify("box", b"manifest bytes", signature)
    with pytest.raises(BadSignatureError):
        trust.verify("box", b"manifest bytes!", signature)
    with pytest.raises(UnknownSignerError):
        trust.verify("../box", b"manifest bytes", signature)
    other_private, other_public = generate_key_pair(keys, "other")
    (trust_dir / "box.pub").write_bytes(other_public.read_bytes())  # key rotated on disk
    with pytest.raises(BadSignatureError):
        trust.verify("box", b"manifest bytes", signature)
    rotated = NodeKey.load("other", other_private)
    trust.verify("box", b"x", rotated.sign(b"x"))
