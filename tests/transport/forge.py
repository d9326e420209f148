"""Hand-made protocol messages for tests that play a sender or an attacker."""

import base64
import hashlib
import math
import time
import uuid

from appliance.identity import NodeKey
from appliance.transport.wire import Envelope, Manifest, encode_chunk, seal


def manifest_for(
    key: NodeKey,
    data: bytes,
    recipients: tuple[str, ...] = ("agg",),
    chunk_bytes: int = 10_000,
    **overrides: object,
) -> Manifest:
    values: dict[str, object] = {
        "artifact_id": uuid.uuid4().hex,
        "kind": "update",
        "sender": key.node_id,
        "recipients": recipients,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "chunk_bytes": chunk_bytes,
        "chunk_count": math.ceil(len(data) / chunk_bytes),
        "created": time.time(),
    }
    values.update(overrides)
    return Manifest.model_validate(values)


def chunks_for(manifest: Manifest, data: bytes) -> list[bytes]:
    size = manifest.chunk_bytes
    return [
        encode_chunk(manifest.artifact_id, index, data[index * size : (index + 1) * size])
        for index in range(manifest.chunk_count)
    ]


def sealed(manifest: Manifest, key: NodeKey) -> bytes:
    return seal(manifest, key)


def sealed_text(body: str, key: NodeKey) -> bytes:
    """Sign arbitrary body text (for bodies a well-behaved sender could not produce)."""
    signature = base64.b64encode(key.sign(body.encode())).decode()
    return Envelope(body=body, signature=signature).model_dump_json().encode()
