"""Round state on disk, encrypted with a key derived from the node's identity key.

A SecAgg+ round outlives a restart of the box or the aggregator only if its keys, shares and
progress do: `Vault` keeps each as one file in `<state dir>/secagg/`, written durably (temp
file, fsync, rename) and sealed with AES-256-GCM under HKDF-SHA256 of the node's Ed25519
private key (the file name is the associated data, so a file cannot be passed off as another
round's). Whoever can read the state directory but not the key file learns nothing; a file
that does not open (damaged, or another node's) is quarantined and reads as absent, so the
round is lost for this node (it counts as dropped) rather than run on unknown state.
"""

import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.identity import NodeKey
from appliance.system.files import quarantine, write_durably

MAGIC = b"APSV1"
_INFO = b"appliance/secagg/v2/vault"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
MAX_FILE_BYTES = 512 * 1024 * 1024


class Vault:
    """Encrypted named files of one node's secure-aggregation rounds."""

    def __init__(self, folder: Path, key: NodeKey) -> None:
        self.folder = folder
        secret = key.private_key.private_bytes_raw()
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        self._aead = AESGCM(derived)

    def save(self, name: str, data: bytes) -> None:
        """Seal and write `data` as `name` (replacing it atomically)."""
        path = self._path(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        nonce = os.urandom(12)
        write_durably(path, MAGIC + nonce + self._aead.encrypt(nonce, data, name.encode()))

    def load(self, name: str) -> bytes | None:
        """The data saved as `name`; None when there is none or it does not open."""
        path = self._path(name)
        if not path.exists():
            return None
        raw = path.read_bytes()
        try:
            if not raw.startswith(MAGIC) or len(raw) > MAX_FILE_BYTES:
                raise ValueError("not a vault file")
            start = len(MAGIC)
            return self._aead.decrypt(raw[start : start + 12], raw[start + 12 :], name.encode())
        except (InvalidTag, ValueError) as exc:
            quarantine(path, exc if isinstance(exc, ValueError) else ValueError("does not open"))
            return None

    def names(self, suffix: str) -> list[str]:
        """Saved names ending in `suffix`, oldest first."""
        if not self.folder.exists():
            return []
        paths = [p for p in self.folder.iterdir() if p.name.endswith(suffix) and p.is_file()]
        return [p.name for p in sorted(paths, key=lambda p: p.stat().st_mtime)]

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"not a vault name: {name!r}")
        return self.folder / name
