"""Whose key an audit log must be signed with: the trust anchor of `appliance audit verify`.

Given as a public key file (`--key aggregator.pub`, what an auditor is handed) or read from a
config file: a box's config names the aggregator (`federation.aggregator_id`) whose key sits
in its trust directory; the aggregator's own config names its key pair, and the public half
beside the private key (`<node_id>.pub`, as `appliance keygen` writes it) or in the trust
directory is used, else the public half of the private key itself.
"""

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.config import AggregatorConfig, EdgeConfig, load_config
from appliance.identity import NodeKey, load_public_key
from appliance.identity.errors import IdentityError


def anchor_key(key_file: Path | None, config_file: Path | None) -> Ed25519PublicKey | None:
    """The aggregator's public key from `--key` or `--config`; None when neither is given."""
    if key_file is not None:
        return load_public_key(key_file)
    if config_file is None:
        return None
    config = load_config(config_file)
    identity = config.identity
    if isinstance(config, EdgeConfig):
        aggregator = config.federation.aggregator_id
        return load_public_key(identity.trust_dir / f"{aggregator}.pub")
    assert isinstance(config, AggregatorConfig)
    private = identity.private_key_file.get_secret_value()
    for candidate in (
        private.with_name(f"{identity.node_id}.pub"),
        identity.trust_dir / f"{identity.node_id}.pub",
    ):
        if candidate.exists():
            return load_public_key(candidate)
    if not private.exists():
        raise IdentityError(f"no public key for {identity.node_id!r} next to its key or trusted")
    return NodeKey.load(identity.node_id, private).public_key
