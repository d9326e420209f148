"""Named fault-injection points (etcd's failpoints, in small): crash tests kill a daemon at
an exact step of a round's life and check that its restart loses and repeats nothing.

Off in production: nothing is armed unless the environment variable `APPLIANCE_FAILPOINTS`
is set, which only the crash tests do (the systemd units never set it). Its value is a comma
list of `name=action`; the actions are `kill` (SIGKILL to this process, as the OOM killer or a
power cut would: no `finally`, no flush) and `exit` (os._exit(70), for a subprocess whose
parent wants a status). `name=kill@2` fires on the second time the point is reached. Every
name must be one of `POINTS`, so a typo in a test fails loudly instead of testing nothing.
"""

import os
import signal
import sys
import threading
from dataclasses import dataclass

ENVIRONMENT = "APPLIANCE_FAILPOINTS"

POINTS: dict[str, str] = {
    # aggregator: the life of a round, in order
    "aggregator.update_received": "an update is in the inbox (acknowledged), not yet stored",
    "aggregator.update_stored": "an update is in the round store, its inbox file not yet removed",
    "aggregator.round_closed": "the round is closed in the store, not yet aggregated",
    "aggregator.global_saved": "the new global adapter file is written, not yet audited",
    "aggregator.round_audited": "round_aggregated is in the audit log, the store not yet updated",
    "aggregator.round_recorded": "the store says aggregated, no rollout started yet",
    "aggregator.rollout_started": "the rollout is recorded, the global not yet queued",
    "aggregator.global_queued": "the global is in the outbox, not yet marked published",
    "aggregator.global_published": "the round is marked published",
    "aggregator.global_acked": "a box acknowledged the global, others may not have yet",
    # edge box
    "edge.training": "the trainer is running (its first progress report arrived)",
    "edge.update_queued": "the update is in the outbox, the round not yet marked done",
    "edge.global_installing": "a global adapter file is in place, the box state not yet saved",
    "edge.global_activated": "the box state names the new global, its evaluation not yet sent",
    # SecAgg+ (secure aggregation version 2): each step persisted in the vault, then sent
    "secagg.box_keys_sent": "the box's round keys are saved and in the outbox, no key set yet",
    "secagg.aggregator_keys_relayed": "the key set is saved and in the outbox, no shares yet",
    "secagg.box_shares_sent": "the box's sealed shares are saved and in the outbox, no relay yet",
    "secagg.aggregator_shares_relayed": "the relays are saved and in the outbox, no update yet",
    "secagg.box_masked_sent": "the masked update is in the outbox, its pending copy not removed",
    "secagg.aggregator_committed": "the commit is saved and in the outbox, no ack yet",
    "secagg.box_acked": "the box's commit ack is saved and in the outbox, no ack set yet",
    "secagg.aggregator_acks_relayed": "the ack set is saved and in the outbox, no reveal yet",
    "secagg.box_revealed": "the box's revealed shares are saved (kind per owner) and in the outbox",
}

EXIT_STATUS = 70


class FailpointError(ValueError):
    """`APPLIANCE_FAILPOINTS` names an unknown point or action."""


@dataclass
class _Armed:
    action: str
    at_hit: int
    hits: int = 0


def parse(text: str) -> dict[str, _Armed]:
    """`name=kill,other=exit@2` -> armed points; `FailpointError` for anything unknown."""
    armed: dict[str, _Armed] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, spec = item.partition("=")
        action, _, count = spec.partition("@")
        if name not in POINTS:
            raise FailpointError(f"{ENVIRONMENT}: unknown failpoint {name!r}")
        if action not in ("kill", "exit"):
            raise FailpointError(f"{ENVIRONMENT}: {name}: action must be kill or exit")
        if count and (not count.isdigit() or int(count) < 1):
            raise FailpointError(f"{ENVIRONMENT}: {name}: @N must be a positive number")
        armed[name] = _Armed(action, int(count or 1))
    return armed


_ARMED = parse(os.environ.get(ENVIRONMENT, ""))
_LOCK = threading.Lock()


def failpoint(name: str) -> None:
    """Crash here if a test armed `name`; a no-op otherwise (one dict lookup)."""
    if name not in POINTS:
        raise FailpointError(f"unknown failpoint {name!r}")
    armed = _ARMED.get(name)
    if armed is None:
        return
    with _LOCK:
        armed.hits += 1
        if armed.hits != armed.at_hit:
            return
    sys.stderr.write(f"appliance: failpoint {name} fired ({armed.action})\n")
    sys.stderr.flush()
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_STATUS)
