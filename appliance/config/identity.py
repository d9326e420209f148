"""Who this process is on the plant network: plant, node name and signing key."""

from pathlib import Path

from pydantic import Field, Secret

from appliance.config.base import ConfigPath, SecretFile, Section, TopicSafeId


class IdentitySettings(Section):
    """Names used in MQTT topics and the key that signs everything this node sends."""

    plant_id: TopicSafeId = Field(
        description="Plant name used in every topic (`appliance/v1/<plant_id>/...`). Letters, "
        "digits, `_ . -`; no `+ / #`.",
    )
    node_id: TopicSafeId = Field(
        description="This box's or aggregator's name, unique in the plant; also its MQTT "
        "client id and its Sparkplug edge node id.",
    )
    private_key_file: SecretFile = Field(
        default=Secret(Path("/var/lib/appliance/keys/node.key")),
        description="Ed25519 private key that signs this node's messages. Created by "
        "`appliance keygen` (mode 0600); never printed or logged.",
    )
    trust_dir: ConfigPath = Field(
        default=Path("/etc/appliance/trust"),
        description="Directory of public keys this node trusts, one `<node_id>.pub` per peer.",
    )
