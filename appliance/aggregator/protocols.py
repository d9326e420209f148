"""Which round protocol the aggregator runs: the one registry a new protocol is added to.

The service only calls the `AggregatorProtocol` interface (appliance/federation/protocol.py);
this module builds the implementation the config asks for.
"""

from functools import partial

from appliance.aggregator.strategy import build_strategy
from appliance.config import AggregatorConfig
from appliance.federation.protocol import AggregatorProtocol, PlainRounds
from appliance.identity import TrustStore
from appliance.privacy.secagg.protocol import build_rounds
from appliance.transport.node import TransportNode


def build_protocol(
    config: AggregatorConfig, transport: TransportNode, trust: TrustStore, base_sha256: str
) -> AggregatorProtocol:
    """Masked rounds (SecAgg+ or pairwise, by `fleet.secure_aggregation.version`) when
    `fleet.secure_aggregation.enabled`, plain ones otherwise."""
    if config.fleet.secure_aggregation.enabled:
        return build_rounds(transport, trust, config.fleet.secure_aggregation)
    limit = config.rounds.max_update_mb * 1024 * 1024
    return PlainRounds(partial(build_strategy, config.fleet.strategy), base_sha256, limit)
