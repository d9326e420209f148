"""A node's own signing key: loaded from the configured file, created on first start."""

import logging
from pathlib import Path

from appliance.config.identity import IdentitySettings
from appliance.identity import NodeKey, generate_key_pair

log = logging.getLogger(__name__)


def node_key(identity: IdentitySettings) -> NodeKey:
    """Load the key; when it does not exist yet, create the pair (like sshd's host keys)."""
    path: Path = identity.private_key_file.get_secret_value()
    if not path.exists():
        private, public = generate_key_pair(path.parent, identity.node_id)
        if private != path:
            private.rename(path)
        log.warning(
            "created a new signing key for %s; copy %s into the peers' trust directories",
            identity.node_id,
            public,
        )
    return NodeKey.load(identity.node_id, path)
