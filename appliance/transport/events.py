"""What a node's transport hands its service: typed inbound events, pulled by the service.

A service's main loop calls `TransportNode.next_event()` and gets one of these; nothing of the
service runs on the MQTT worker thread (in the style of aiomqtt's message iterator). An
artifact is handed over once and stays the transport's until the service acknowledges it, so
the receiver's inbox is the only copy and its 'complete' rows the only redelivery after a
crash.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from appliance.transport.wire import Manifest, WireModel

M_co = TypeVar("M_co", bound=WireModel, covariant=True)


@dataclass(frozen=True)
class ArtifactArrived:
    """A verified artifact (its sha256 matches the signed manifest).

    `path` lies in the receiver's inbox and stays there until `TransportNode.acknowledge`:
    read or copy it, store what you need, then acknowledge. Only then is the sender told it
    may forget the artifact. An artifact not acknowledged before the process ends is offered
    again, as a new event, when the node is next created on the same state directory.
    """

    manifest: Manifest
    path: Path


@dataclass(frozen=True)
class MessageArrived(Generic[M_co]):
    """A signed message whose signature matched `signer`, the writer named by its topic.

    The broker holds it (QoS 1, unacknowledged) until `TransportNode.acknowledge`: a message
    the service had not handled when the process died comes again after the restart. It
    may also come twice (a reconnect before the acknowledgement): handle it idempotently.
    """

    kind: str
    message: M_co
    signer: str
    receipt: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    """Acknowledges the message to the broker (`TransportNode.acknowledge` calls it)."""


InboundEvent = ArtifactArrived | MessageArrived[WireModel]
