"""An operator's rollback, pin and unpin, queued for the running aggregator.

The aggregator daemon owns the plant's MQTT session and signing key, so the command line does
not talk to boxes itself: it checks the request against the aggregator's state (the box is
known, the version exists and was not rejected), queues it in the rollout store, and the
daemon sends it at its next step, writes it to the audit log and records what it did. A queued
request survives an aggregator restart.
"""

import time
from pathlib import Path

from appliance.config.roles import AggregatorConfig
from appliance.errors import ApplianceError
from appliance.identity import TrustStore
from appliance.rollout.store import CommandRow, RolloutStore


class OperatorError(ApplianceError):
    """A request that cannot be carried out; the message says why."""


def store_path(config: AggregatorConfig) -> Path:
    """Where the aggregator keeps its rollout state."""
    return config.layout.rollout_db


def fleet_boxes(config: AggregatorConfig) -> tuple[str, ...]:
    """The plant's boxes as the aggregator sees them (configured, or every trusted key)."""
    if config.fleet.participants:
        return tuple(config.fleet.participants)
    trust = TrustStore(config.identity.trust_dir)
    names = sorted(p.stem for p in trust.directory.glob("*.pub"))
    return tuple(n for n in names if n != config.identity.node_id)


def queue_request(
    config: AggregatorConfig, action: str, box: str | None, version: int | None
) -> CommandRow:
    """Check and queue one request; returns it as stored."""
    layout = config.layout
    if not layout.rounds_db.exists():
        raise OperatorError(
            f"no aggregator state in {layout.state_dir}; has the aggregator run yet?"
        )
    if box is not None and box not in fleet_boxes(config):
        raise OperatorError(
            f"unknown box {box!r}; the fleet is {', '.join(fleet_boxes(config)) or 'empty'}"
        )
    store = RolloutStore(store_path(config))
    try:
        if version is not None:
            _check_version(config, store, version)
        command_id = store.queue_command(action, (box,) if box else (), version, time.time())
        return next(c for c in store.commands(50) if c.id == command_id)
    finally:
        store.close()


def _check_version(config: AggregatorConfig, store: RolloutStore, version: int) -> None:
    if version < 0:
        raise OperatorError(f"version must be 0 or more (got {version})")
    if not config.layout.global_adapter(version).exists():
        raise OperatorError(f"global adapter v{version} does not exist on the aggregator")
    row = store.get(version)
    if row is not None and version in store.blocked():
        raise OperatorError(
            f"global adapter v{version} was {row.stage.value.replace('_', ' ')}: {row.reason}"
        )
