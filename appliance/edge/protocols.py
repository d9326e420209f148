"""The round protocols a box speaks, by the name a round's plan gives (`TrainingPlan.protocol`):
the one registry a new protocol is added to; the service only calls `BoxProtocol`."""

from appliance.federation.protocol import BoxProtocol, PlainBox
from appliance.privacy.secagg.protocol import SecureBox
from appliance.transport.node import TransportNode


def box_protocols(transport: TransportNode, aggregator_id: str) -> dict[str, BoxProtocol]:
    """Every protocol this box can take part in, by name."""
    return {
        "plain": PlainBox(transport.key.node_id),
        "secure": SecureBox(transport, aggregator_id),
    }
