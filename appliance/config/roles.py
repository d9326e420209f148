"""The two config files: one for an edge box, one for the plant aggregator."""

from typing import Literal, Self

from pydantic import Field, model_validator

from appliance.config.base import Section
from appliance.config.evaluation_set import EvaluationSetSettings
from appliance.config.federation import EdgeFederationSettings, FleetSettings
from appliance.config.health import EdgeHealthSettings, FleetHealthSettings
from appliance.config.identity import IdentitySettings
from appliance.config.layouts import AggregatorLayout, EdgeLayout
from appliance.config.logs import LoggingSettings
from appliance.config.model import ModelSettings
from appliance.config.mqtt import MqttSettings
from appliance.config.privacy import PrivacySettings
from appliance.config.roi import RoiSettings
from appliance.config.rollout import EvaluationSettings, RolloutSettings
from appliance.config.rounds import RoundSettings
from appliance.config.serve import ServeSettings
from appliance.config.storage import PathSettings
from appliance.config.training import TrainingSettings
from appliance.config.transfer import OutboxSettings, TransferSettings


class EdgeConfig(Section):
    """`/etc/appliance/edge.toml`: a box that trains on local data and serves the model."""

    role: Literal["edge"] = Field(description='Must be "edge" in a box\'s file.')
    identity: IdentitySettings = Field(description="Plant, node name and signing key.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Base model.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="LoRA training on the box."
    )
    federation: EdgeFederationSettings = Field(
        default_factory=EdgeFederationSettings, description="Taking part in rounds."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Durable outbox bounds."
    )
    transfer: TransferSettings = Field(
        default_factory=TransferSettings, description="Chunked artifact transfer."
    )
    paths: PathSettings = Field(default_factory=PathSettings, description="State and spool.")
    evaluation: EvaluationSettings = Field(
        default_factory=EvaluationSettings,
        description="Scoring global adapters on held-out data (NLL and a task metric).",
    )
    health: EdgeHealthSettings = Field(
        default_factory=EdgeHealthSettings, description="Hardware probes and Sparkplug B."
    )
    privacy: PrivacySettings = Field(
        default_factory=PrivacySettings,
        description="Differential privacy of the updates (clipping, noise, epsilon budget).",
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    serve: ServeSettings = Field(
        default_factory=ServeSettings, description="Local OpenAI-compatible inference API."
    )

    @property
    def layout(self) -> EdgeLayout:
        """Where this box keeps each of its files."""
        return EdgeLayout(self.paths.state_dir, self.paths.cache_dir)


class AggregatorConfig(Section):
    """`/etc/appliance/aggregator.toml`: combines the boxes' updates, runs rounds."""

    role: Literal["aggregator"] = Field(
        description='Must be "aggregator" in the aggregator\'s file.'
    )
    identity: IdentitySettings = Field(description="Plant, node name and signing key.")
    model: ModelSettings = Field(
        default_factory=ModelSettings,
        description="Base model the fleet adapts; the aggregator checks update shapes against it.",
    )
    rounds: RoundSettings = Field(default_factory=RoundSettings, description="Federated rounds.")
    fleet: FleetSettings = Field(
        default_factory=FleetSettings, description="Participants, codec and strategy."
    )
    rollout: RolloutSettings = Field(
        default_factory=RolloutSettings,
        description="Canary boxes first, promotion or automatic rollback.",
    )
    training: TrainingSettings = Field(
        default_factory=TrainingSettings,
        description="The training plan announced to boxes with each round (rank, alpha, "
        "targets, seed, freeze_a, learning rate, epochs, max_steps); boxes keep their own "
        "resource settings.",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Durable outbox bounds."
    )
    transfer: TransferSettings = Field(
        default_factory=TransferSettings, description="Chunked artifact transfer."
    )
    paths: PathSettings = Field(default_factory=PathSettings, description="State directory.")
    health: FleetHealthSettings = Field(
        default_factory=FleetHealthSettings, description="Fleet health, alerts, Prometheus."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    evaluation_set: EvaluationSetSettings | None = Field(
        default=None,
        description="Questions the plant shares with every box, scored beside each box's "
        "own held-out data (optional; without it boxes score their own data only).",
    )
    roi: RoiSettings | None = Field(
        default=None,
        description="Prices for `appliance report`'s return on investment (optional; "
        "without it the report shows the gains only).",
    )

    @property
    def layout(self) -> AggregatorLayout:
        """Where the aggregator keeps each of its files."""
        return AggregatorLayout(self.paths.state_dir)

    @model_validator(mode="after")
    def _secure_aggregation_needs_frozen_a(self) -> Self:
        if self.fleet.secure_aggregation.enabled and not self.training.freeze_a:
            raise ValueError(
                "fleet.secure_aggregation needs training.freeze_a = true: only the mean of B "
                "under a shared A can be computed from a masked sum"
            )
        return self

    @model_validator(mode="after")
    def _lowrank_below_the_lora_rank(self) -> Self:
        lowrank = self.fleet.codec.lowrank_rank
        if 0 < self.training.rank <= lowrank:
            raise ValueError(
                f"fleet.codec.lowrank_rank = {lowrank} must be below training.rank = "
                f"{self.training.rank}: rank-q factors of an n x r change need q < r"
            )
        return self


NodeConfig = EdgeConfig | AggregatorConfig
ROLES: dict[str, type[EdgeConfig] | type[AggregatorConfig]] = {
    "edge": EdgeConfig,
    "aggregator": AggregatorConfig,
}
