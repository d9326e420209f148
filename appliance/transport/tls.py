"""TLS and broker credentials for the MQTT client.

Secrets come from files named in the config or, under systemd, from
`$CREDENTIALS_DIRECTORY` (`LoadCredential=mqtt-password:...`, `mqtt-key-password:...`), so
they never sit in the config file, the environment or the process list. Error messages name
what failed but never a secret's path or content.
"""

import os
import ssl
from pathlib import Path

from appliance.config.mqtt import MqttSettings, TlsSettings
from appliance.errors import ApplianceError

PASSWORD_CREDENTIAL = "mqtt-password"
KEY_PASSWORD_CREDENTIAL = "mqtt-key-password"


class TransportConfigError(ApplianceError):
    """TLS material or credentials cannot be used."""

    exit_code = 2


def read_secret(configured: Path | None, credential: str) -> str | None:
    """The secret from `configured`, else from `$CREDENTIALS_DIRECTORY/<credential>`."""
    path = configured
    if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / credential
        path = candidate if candidate.is_file() else None
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise TransportConfigError(
            f"cannot read the {credential} secret: {exc.__class__.__name__}"
        ) from None


def broker_password(settings: MqttSettings) -> str | None:
    configured = settings.password_file.get_secret_value() if settings.password_file else None
    return read_secret(configured, PASSWORD_CREDENTIAL)


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """Verify the broker against `ca_file`; present a client certificate for mutual TLS."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TransportConfigError(
            f"mqtt.tls.ca_file {tls.ca_file}: unusable CA file ({exc})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        configured = tls.key_password_file.get_secret_value() if tls.key_password_file else None
        password = read_secret(configured, KEY_PASSWORD_CREDENTIAL)
        try:
            context.load_cert_chain(
                str(tls.cert_file), str(tls.key_file.get_secret_value()), password
            )
        except (OSError, ssl.SSLError) as exc:
            raise TransportConfigError(
                f"mqtt.tls: client certificate {tls.cert_file} or its key cannot be loaded "
                f"(missing file, wrong key password or mismatched pair: {exc.__class__.__name__})"
            ) from None
    return context
