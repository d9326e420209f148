"""Ed25519 key files: a private key only its owner can read, a public key to hand out.

Formats are the ones OpenSSL understands (PKCS#8 PEM for the private key, SubjectPublicKeyInfo
PEM for the public key), so an operator can inspect them with `openssl pkey`. The private key
is written to a temporary file created with mode 0600 and renamed into place: it is never
readable by others, not even for an instant, and a crash never leaves half a key behind.
"""

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.identity.errors import IdentityError

NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Node ids are MQTT topic levels and file names (same rule as the config's `TopicSafeId`)."""
MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class NodeKey:
    """This node's name and private key; signs everything the node sends."""

    node_id: str
    private_key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over exactly `data`."""
        return self.private_key.sign(data)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @classmethod
    def load(cls, node_id: str, path: Path) -> "NodeKey":
        """Read a private key file, refusing one that others can read."""
        check_node_id(node_id)
        raw = _read_key_file(path, private=True)
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{path}: not an Ed25519 private key")
        return cls(node_id, key)


def check_node_id(node_id: str) -> str:
    """Node ids name topics and files: letters, digits, `_ . -`, at most 64 characters."""
    if not NODE_ID_RE.fullmatch(node_id):
        raise IdentityError(
            f"invalid node id {node_id!r}: use letters, digits, '_', '.', '-' (max 64)"
        )
    return node_id


def generate_key_pair(out_dir: Path, node_id: str) -> tuple[Path, Path]:
    """Create `<node_id>.key` (mode 0600) and `<node_id>.pub` in `out_dir`; never overwrite."""
    check_node_id(node_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{node_id}.key"
    public_path = out_dir / f"{node_id}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise IdentityError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomically(private_path, private_pem, 0o600)
    _write_atomically(public_path, public_pem, 0o644)
    return private_path, public_path


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a `<node_id>.pub` file."""
    raw = _read_key_file(path, private=False)
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"{path}: not an Ed25519 public key")
    return key


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"{path}: not a regular file")
        if private and stat.S_IMODE(info.st_mode) & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise IdentityError(
                f"{path}: permissions {mode:04o} are too open for a private key; chmod 600 it"
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise IdentityError(f"{path}: too large for a key file ({info.st_size} bytes)")
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"{path}: key file does not exist (create it with `appliance keygen`)"
        ) from None
    except PermissionError:
        raise IdentityError(f"{path}: permission denied") from None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
