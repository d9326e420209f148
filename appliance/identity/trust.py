"""The trust store: a directory of peers' public keys, one `<node_id>.pub` each.

Adding or revoking a peer is copying or deleting one file; the store re-reads a key when its
file changes (by mtime and size), so a running daemon picks up changes without a restart.
"""

import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.identity.errors import IdentityError
from appliance.identity.keys import NODE_ID_RE, load_public_key


class UnknownSignerError(IdentityError):
    """No public key for the claimed signer in the trust store."""


class BadSignatureError(IdentityError):
    """The signature does not match the data and the signer's public key."""


class TrustStore:
    """Public keys of the peers this node accepts signed data from."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[tuple[int, int], Ed25519PublicKey]] = {}
        self._lock = threading.Lock()

    def public_key(self, node_id: str) -> Ed25519PublicKey:
        """The key of `node_id`; `UnknownSignerError` when there is none (or it is unreadable)."""
        if not NODE_ID_RE.fullmatch(node_id):
            raise UnknownSignerError(f"invalid signer id {node_id!r}")
        path = self.directory / f"{node_id}.pub"
        try:
            info = path.stat()
        except OSError:
            raise UnknownSignerError(
                f"no trusted key for {node_id!r} in {self.directory}"
            ) from None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(node_id)
            if cached and cached[0] == stamp:
                return cached[1]
        try:
            key = load_public_key(path)
        except IdentityError as exc:
            raise UnknownSignerError(f"trusted key for {node_id!r} is unusable: {exc}") from None
        with self._lock:
            self._cache[node_id] = (stamp, key)
        return key

    def verify(self, node_id: str, data: bytes, signature: bytes) -> None:
        """Raise `UnknownSignerError`/`BadSignatureError` unless `node_id` signed `data`."""
        key = self.public_key(node_id)
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise BadSignatureError(f"signature does not match {node_id!r}'s key") from None
