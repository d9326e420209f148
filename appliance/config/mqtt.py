"""How a node reaches the plant's MQTT broker."""

from typing import Self

from pydantic import Field, model_validator

from appliance.config.base import ConfigPath, SecretFile, Section


class TlsSettings(Section):
    """TLS, and mutual TLS when a client certificate is given."""

    ca_file: ConfigPath = Field(description="CA certificate(s) that signed the broker's cert.")
    cert_file: ConfigPath | None = Field(
        default=None, description="Client certificate for mutual TLS (the plant CA signs it)."
    )
    key_file: SecretFile | None = Field(
        default=None, description="Private key of the client certificate (mode 0600)."
    )
    key_password_file: SecretFile | None = Field(
        default=None,
        description="File holding the key's password; under systemd prefer "
        "`LoadCredential=` and a path in `$CREDENTIALS_DIRECTORY`.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together for mutual TLS")
        return self


class MqttSettings(Section):
    """Broker address, session and limits."""

    host: str = Field(default="localhost", min_length=1, description="Broker host name or IP.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps this node's session and queued QoS 1 messages "
        "while it is offline.",
    )
    reconnect_max_delay_s: int = Field(
        default=60, ge=1, le=3600, description="Cap of the exponential reconnect back-off."
    )
    max_packet_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        le=256 * 1024 * 1024,
        description="Largest MQTT packet this node sends; the broker's own limit (CONNACK "
        "MaximumPacketSize) lowers it further. Larger payloads travel in chunks.",
    )
    username: str | None = Field(default=None, description="User name, when the broker needs one.")
    password_file: SecretFile | None = Field(
        default=None, description="File holding the broker password (mode 0600)."
    )
    tls: TlsSettings | None = Field(default=None, description="TLS settings; absent = plain TCP.")
