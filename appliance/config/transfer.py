"""Durable outbox bounds and artifact transfer timing.

The outbox holds everything a node must deliver while the broker is away; its bounds decide
what is dropped first when it fills. The transfer settings decide how patiently a receiver
waits for chunks and how often a sender re-announces an artifact nobody has confirmed.
"""

from pydantic import Field

from appliance.config.base import Section


class OutboxSettings(Section):
    """Limits of the on-disk outbox (`<state_dir>/outbox.sqlite`)."""

    max_mb: int = Field(
        default=1024,
        ge=1,
        le=1024 * 1024,
        description="Largest total size of queued messages and artifacts, in MiB. When full, "
        "the lowest-priority, oldest entries are dropped first (logged and counted).",
    )
    max_age_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="Entries not delivered within this time are dropped (logged and counted).",
    )


class TransferSettings(Section):
    """Chunked artifact transfer: limits on what is accepted and the retry rhythm."""

    max_artifact_mb: int = Field(
        default=512,
        ge=1,
        le=64 * 1024,
        description="Artifacts announced as larger than this many MiB are rejected.",
    )
    chunk_window: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Chunks of one artifact published but not yet acknowledged by the broker.",
    )
    request_after_s: int = Field(
        default=5,
        ge=1,
        description="A receiver that got no new chunk for this long asks the sender for the "
        "missing ones (and again at this interval).",
    )
    resend_after_s: int = Field(
        default=60,
        ge=1,
        description="A sender that heard nothing from a receiver for this long re-announces "
        "the artifact's manifest.",
    )
    stall_timeout_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="A receiver drops a partial transfer without progress for this long.",
    )
    replay_window_s: int = Field(
        default=14 * 24 * 3600,
        ge=60,
        description="Manifests created longer ago are refused as stale; received artifact "
        "ids are remembered this long so a replay is recognised. Keep it above "
        "`outbox.max_age_s`.",
    )
    max_clock_skew_s: int = Field(
        default=300,
        ge=0,
        description="Manifests dated further than this in the future are refused.",
    )
