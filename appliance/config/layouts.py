"""Every path a daemon keeps its state under, per role: one place that names the files.

The services, the report, `fleet status` and the operator commands all find the same file
the same way (the names used to be spelled out in each of them). Ids never travel in file
names here beyond a round id as a folder name: everything else about an artifact is in the
stores.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AggregatorLayout:
    """The aggregator's state directory."""

    state_dir: Path

    @property
    def rounds_db(self) -> Path:
        return self.state_dir / "rounds.sqlite"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def rollout_db(self) -> Path:
        return self.state_dir / "rollout.sqlite"

    @property
    def fleet_health_db(self) -> Path:
        return self.state_dir / "fleet-health.sqlite"

    @property
    def globals_dir(self) -> Path:
        return self.state_dir / "globals"

    def global_adapter(self, version: int) -> Path:
        """The file of global adapter `version` (0: the initial one)."""
        return self.globals_dir / f"global-v{version}.gguf"

    def global_delta(self, version: int) -> Path:
        """The int8 step that rebuilds global adapter `version` from its round's base."""
        return self.globals_dir / f"global-v{version}.delta"

    def global_versions(self) -> list[int]:
        """Versions with a file, ascending."""
        return sorted(
            int(p.stem.removeprefix("global-v")) for p in self.globals_dir.glob("global-v*.gguf")
        )

    @property
    def inbox_dir(self) -> Path:
        """Where an older version handed updates over (taken once at start, then unused)."""
        return self.state_dir / "updates"

    @property
    def transport_dir(self) -> Path:
        return self.state_dir / "transport"


@dataclass(frozen=True)
class EdgeLayout:
    """A box's state directory (the spool and the model cache are configured apart)."""

    state_dir: Path
    cache_override: Path | None = None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "edge-state.json"

    @property
    def residual(self) -> Path:
        """Error feedback's residual: what earlier updates did not send."""
        return self.state_dir / "residual.npz"

    @property
    def plant_set(self) -> Path:
        """The plant evaluation set the aggregator published (JSON Lines)."""
        return self.state_dir / "plant-set.jsonl"

    @property
    def adapters_dir(self) -> Path:
        return self.state_dir / "adapters"

    def global_adapter(self, version: int) -> Path:
        return self.adapters_dir / f"global-v{version}.gguf"

    def rebuilt_global(self, version: int) -> Path:
        """Where a global adapter is rebuilt from a delta before it is checked and installed."""
        return self.adapters_dir / f".global-v{version}.rebuilt.gguf"

    def rebuilt_globals(self) -> list[Path]:
        """Rebuilt files still here: ones a killed daemon never installed."""
        return sorted(self.adapters_dir.glob(".global-v*.rebuilt.gguf"))

    @property
    def solo_adapter(self) -> Path:
        """The local-only ("solo") baseline: trained on this box's data alone, round after
        round, never from a global adapter and never sent (`[evaluation] solo_baseline`)."""
        return self.adapters_dir / "solo.gguf"

    @property
    def rounds_dir(self) -> Path:
        return self.state_dir / "rounds"

    def round_dir(self, round_id: str) -> Path:
        """A round's training work (data, trained adapter, the staged update)."""
        return self.rounds_dir / round_id

    def staged_update(self, round_id: str) -> Path:
        """The prepared update, kept until it is in the outbox."""
        return self.round_dir(round_id) / "update.bin"

    def staged_residual(self, round_id: str) -> Path:
        """The residual that becomes the box's once the round's update is committed."""
        return self.round_dir(round_id) / "residual.npz"

    @property
    def cache_dir(self) -> Path:
        """Training copies of the base model."""
        return self.cache_override or self.state_dir / "cache"

    @property
    def transport_dir(self) -> Path:
        return self.state_dir / "transport"
