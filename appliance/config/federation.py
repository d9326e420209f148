"""How a box takes part in federated rounds (edge) and how the aggregator runs them."""

from typing import Literal, Self

from pydantic import Field, model_validator

from appliance.config.base import Section, TopicSafeId
from appliance.config.downlink import DownlinkSettings
from appliance.config.secure_aggregation import SecureAggregationSettings, participant_bound


class EdgeFederationSettings(Section):
    """A box's side of the rounds."""

    aggregator_id: TopicSafeId = Field(
        default="aggregator",
        description="node_id of the plant aggregator: the only sender of rounds and global "
        "adapters this box accepts (its public key must be in the trust directory).",
    )
    spool_scan_s: float = Field(
        default=30.0, gt=0, le=3600, description="How often the data spool is ingested."
    )
    train_stall_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A trainer worker that reports no progress for this long is stopped.",
    )


class UpdateCodecSettings(Section):
    """How boxes compress their updates (the aggregator announces it with each round).

    Measured (docs/benchmarks.md, "Update compression against quality"): `int8` is free;
    see there for the low-rank and subspace options against the 50x goal."""

    values: Literal["fp32", "fp16", "int8", "int4"] = Field(
        default="int8",
        description="Value coding; int8 and int4 keep one scale per block (int4: codes -7..7, "
        "two per byte; needs the update format 2 of this version on every box).",
    )
    block: int = Field(default=64, ge=8, le=4096, description="Values per int8/int4 scale.")
    top_k_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of the largest values sent (with error feedback on the box); "
        "1.0 = dense.",
    )
    compression: Literal["none", "zlib", "zstd"] = Field(
        default="zstd", description="Lossless compression on top."
    )
    lowrank_rank: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Send each change of B (n_out x r) as rank-q factors P (n_out x q) and "
        "Q (q x r) from its truncated SVD, coded as `values`; what the q directions miss "
        "stays in the box's error feedback. Must be below the LoRA rank r (a box refuses "
        "to encode otherwise). 0 = off.",
    )
    subspace_dim: int = Field(
        default=0,
        ge=0,
        le=65536,
        description="Send only the k x r coefficients of each change of B on a k-column "
        "basis both sides derive (see subspace_basis), so no basis travels; must be below "
        "n_out. 0 = off. Excludes lowrank_rank and top_k_fraction < 1.",
    )
    subspace_basis: Literal["seed", "global"] = Field(
        default="seed",
        description="Basis of subspace_dim: `seed`: random, from a seed that follows from "
        "the round and the tensor name (a new one each round); `global`: the round's "
        "global B itself (an r x r core in the style of Fed-SB, folded into B, so the "
        "result is an ordinary B), completed by seeded columns up to k, all seeded at "
        "global version 0 (needs the box to pass the round's adapter to the encoder).",
    )
    residual_top_k_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Also send this share of the largest errors the coding above left "
        "(uint16/uint32 index and fp16 value each), on top of a dense, low-rank or "
        "subspace coding. 0 = off. Excludes top_k_fraction < 1.",
    )

    @model_validator(mode="after")
    def _options_combine(self) -> Self:
        chosen = [
            name
            for name, on in (
                ("top_k_fraction < 1", self.top_k_fraction < 1),
                ("lowrank_rank", self.lowrank_rank > 0),
                ("subspace_dim", self.subspace_dim > 0),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} exclude each other; choose one")
        if self.top_k_fraction < 1 and self.residual_top_k_fraction > 0:
            raise ValueError("residual_top_k_fraction does not combine with top_k_fraction < 1")
        if self.subspace_basis != "seed" and self.subspace_dim == 0:
            raise ValueError(f'subspace_basis = "{self.subspace_basis}" needs subspace_dim > 0')
        return self

    @property
    def dense_int8(self) -> bool:
        """Whether updates are dense int8 with no factoring: what secure aggregation masks."""
        return (
            self.values == "int8"
            and self.top_k_fraction >= 1
            and self.lowrank_rank == 0
            and self.subspace_dim == 0
            and self.residual_top_k_fraction == 0
        )


class StrategySettings(Section):
    """How the aggregator combines updates."""

    name: Literal["fedavg", "exact-product", "fedit", "median", "trimmed-mean"] = Field(
        default="fedavg",
        description="`fedavg`: sample-weighted mean of B (requires frozen A, exact); "
        "`exact-product`: mean of B_i A_i re-factorised to rank r (trained A); `fedit`: "
        "separate means of A and B (baseline only); `median`, `trimmed-mean`: robust.",
    )
    norm_bound: float | None = Field(
        default=None,
        gt=0,
        description="Scale down any box's weight change with a larger Frobenius norm.",
    )
    trim_fraction: float = Field(
        default=0.1, ge=0, lt=0.5, description="Share dropped at each end by `trimmed-mean`."
    )
    accumulator: Literal["factored", "dense"] = Field(
        default="factored",
        description="How `exact-product` sums the boxes' products: `factored` never forms a "
        "dense matrix (memory ~ (d + k) x 256 per tensor, re-factorises as it goes and reports "
        "a bound on what that drops); `dense` keeps the exact d x k sum (8 bytes per weight of "
        "every adapted matrix: 1.4 GB for a 1B-class model's q and v) and is several times "
        "faster with hundreds of boxes.",
    )


class FleetSettings(Section):
    """Which boxes take part and how many rounds run."""

    participants: list[TopicSafeId] = Field(
        default=[],
        description="Boxes invited to every round; empty = every node with a key in the "
        "trust directory.",
    )
    max_rounds: int = Field(default=0, ge=0, description="Stop after this many rounds; 0 = never.")
    pause_s: float = Field(default=0.0, ge=0, description="Wait between two rounds.")
    codec: UpdateCodecSettings = Field(
        default_factory=UpdateCodecSettings, description="Update compression."
    )
    strategy: StrategySettings = Field(
        default_factory=StrategySettings, description="Aggregation strategy."
    )
    downlink: DownlinkSettings = Field(
        default_factory=DownlinkSettings,
        description="How new global adapters travel to the boxes (deltas by default).",
    )
    secure_aggregation: SecureAggregationSettings = Field(
        default_factory=SecureAggregationSettings,
        description="Pairwise-masked updates (off by default).",
    )

    @model_validator(mode="after")
    def _unique_participants(self) -> Self:
        if len(set(self.participants)) != len(self.participants):
            raise ValueError(f"participants lists a box twice (got {self.participants})")
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> Self:
        secure = self.secure_aggregation
        if not secure.enabled:
            return self
        if not self.codec.dense_int8:
            raise ValueError(
                'secure_aggregation needs dense int8 updates (codec.values = "int8", '
                "codec.top_k_fraction = 1.0, and no lowrank_rank, subspace_dim or "
                "residual_top_k_fraction): masked vectors are dense"
            )
        if self.strategy.name != "fedavg" or self.strategy.norm_bound is not None:
            raise ValueError(
                'secure_aggregation works with strategy.name = "fedavg" and no norm_bound: '
                "the aggregator never sees one box's update"
            )
        limit = participant_bound(secure.max_weight)
        if len(self.participants) > limit:
            raise ValueError(
                f"secure_aggregation allows at most {limit} participants with max_weight "
                f"{secure.max_weight} ({len(self.participants)} listed)"
            )
        return self
