"""Hardware health: probes and Sparkplug B reporting on a box, fleet health on the aggregator."""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from appliance.config.base import ConfigPath, Section, TopicSafeId

ProbeName = Literal["thermal", "cpu", "memory", "disks", "power", "gpu", "inventory"]
ALL_PROBES: list[ProbeName] = ["thermal", "cpu", "memory", "disks", "power", "gpu", "inventory"]


class TrainingGateSettings(Section):
    """When the box may train: training does not start, and pauses, outside these limits."""

    max_temperature_c: float = Field(
        default=85.0,
        gt=0,
        le=150,
        description="Pause training when any temperature sensor reaches this (°C).",
    )
    resume_temperature_c: float = Field(
        default=75.0,
        gt=0,
        le=150,
        description="After a pause for heat, resume only when every sensor is below this (°C).",
    )
    crit_margin_c: float = Field(
        default=5.0,
        ge=0,
        le=50,
        description="Also pause when a sensor is within this many °C of its own reported "
        "critical limit (hwmon `temp*_crit`), or its critical alarm is set.",
    )
    min_free_disk_percent: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="Pause when the state directory's filesystem "
        "has less free space than this share.",
    )
    min_free_disk_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Pause when the state directory's filesystem has fewer free bytes.",
    )
    max_memory_used_percent: float = Field(
        default=90.0, gt=0, le=100, description="Pause when memory use (not available) is above."
    )
    max_memory_pressure_percent: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="Pause when tasks stalled on memory for more than this share of the last "
        "10 s (PSI `memory some avg10`).",
    )

    @model_validator(mode="after")
    def _resume_below_max(self) -> Self:
        if self.resume_temperature_c >= self.max_temperature_c:
            raise ValueError("resume_temperature_c must be below max_temperature_c")
        return self


class EdgeHealthSettings(Section):
    """Probes this box runs and how it reports them as a Sparkplug B edge node."""

    probes: list[ProbeName] = Field(
        default=ALL_PROBES, description="Probes to run (`firmware_scripts/probe-<name>`)."
    )
    probe_interval_s: int = Field(
        default=30, ge=1, le=3600, description="Seconds between two rounds of probes."
    )
    probe_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="A probe still running after this is killed."
    )
    root_dir: ConfigPath = Field(
        default=Path("/"), description="Filesystem root the probes read (`/`; tests use a tree)."
    )
    scripts_dir: ConfigPath | None = Field(
        default=None,
        description="Directory of the probe executables; absent = the ones shipped with "
        "the package.",
    )
    primary_host_id: TopicSafeId | None = Field(
        default=None,
        description="Sparkplug host id of the aggregator; when set, the box publishes its "
        "birth only while that host's STATE says online, and keeps data meanwhile.",
    )
    deadbands: dict[str, float] = Field(
        default={"Thermal/": 1.0, "CPU/": 0.25, "Memory/": 1.0, "Pressure/": 1.0, "Disk/": 0.5},
        description="Report a number only when it moved by more than this since last sent, "
        "per metric-name prefix (the longest matching prefix wins; others: any change).",
    )
    report_unchanged_after_s: int = Field(
        default=300,
        ge=10,
        description="Re-send a metric that has not changed for this long, so a quiet box is "
        "not taken for a silent one.",
    )
    max_history_messages: int = Field(
        default=20_000,
        ge=0,
        description="Data messages kept while the broker or primary host is away, replayed "
        "later as historical; the oldest are dropped beyond this.",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest Sparkplug payload accepted (NCMD)."
    )
    gate: TrainingGateSettings = Field(
        default_factory=TrainingGateSettings, description="Health limits for training."
    )


class FleetHealthSettings(Section):
    """The aggregator as Sparkplug primary host: fleet metric store, alerts, Prometheus."""

    host_id: TopicSafeId | None = Field(
        default=None,
        description="Sparkplug host id (its STATE topic is `spBv1.0/STATE/<host_id>`); "
        "absent = the node id.",
    )
    offline_after_s: int = Field(
        default=900,
        ge=10,
        description="A box that sent nothing for this long is marked offline (it is also "
        "marked offline at once by its NDEATH).",
    )
    offline_alert_after_s: int = Field(
        default=300, ge=0, description="Raise the `box_offline` alert after this long offline."
    )
    filesystem_warning_free_percent: float = Field(
        default=5.0, ge=0, le=100, description="Warn when a box's state filesystem has less free."
    )
    filesystem_critical_free_percent: float = Field(
        default=3.0, ge=0, le=100, description="Critical below this free share."
    )
    memory_warning_used_percent: float = Field(
        default=90.0, gt=0, le=100, description="Warn when a box's memory use is above this."
    )
    raw_retention_h: int = Field(
        default=48, ge=1, description="Keep every received sample this long."
    )
    rollup_bucket_s: int = Field(
        default=300, ge=10, description="Older samples are folded into min/mean/max buckets."
    )
    rollup_retention_days: int = Field(
        default=90, ge=1, description="Keep the buckets (and resolved alerts) this long."
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger Sparkplug payloads are rejected."
    )
    metrics_listen: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address of the Prometheus `/metrics` endpoint (localhost only by default).",
    )
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="Port of `/metrics`; 0 turns it off."
    )

    @model_validator(mode="after")
    def _critical_below_warning(self) -> Self:
        if self.filesystem_critical_free_percent > self.filesystem_warning_free_percent:
            raise ValueError(
                "filesystem_critical_free_percent must not exceed filesystem_warning_free_percent"
            )
        return self
