"""Shared parts of the secure-aggregation tests: deterministic identities, a small frozen-A
global adapter, and one whole in-memory round driven through the real message schemas."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import NodeKey, TrustStore
from appliance.privacy.secagg import FixedPoint, layout_of

AGG = "agg"
ROUND = "r1-abc123"
FIXED = FixedPoint(value_bound=0.05, max_weight=1024)


def identity(trust_dir: Path, node_id: str, rng: np.random.Generator) -> NodeKey:
    """An Ed25519 identity from `rng` (so a whole round is reproducible), trusted in trust_dir."""
    private = Ed25519PrivateKey.from_private_bytes(rng.bytes(32))
    trust_dir.mkdir(parents=True, exist_ok=True)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (trust_dir / f"{node_id}.pub").write_bytes(public)
    return NodeKey(node_id, private)


def mask_key(rng: np.random.Generator) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(rng.bytes(32))


def base_adapter(rng: np.random.Generator) -> GlobalAdapter:
    """Two LoRA pairs (rank 4) with a frozen A."""
    factors = {
        "blk.0.attn_q.weight": (
            rng.normal(size=(4, 48)).astype(np.float32),
            rng.normal(scale=0.01, size=(64, 4)).astype(np.float32),
        ),
        "blk.0.attn_v.weight": (
            rng.normal(size=(4, 48)).astype(np.float32),
            rng.normal(scale=0.01, size=(32, 4)).astype(np.float32),
        ),
    }
    return GlobalAdapter(version=3, factors=factors, alpha=8.0, frozen_a=True)


def deltas(base: GlobalAdapter, rng: np.random.Generator, scale: float = 0.01) -> dict[str, Delta]:
    """A box's B deltas, roughly the size of one round of LoRA training."""
    return {
        name: Delta(None, rng.normal(scale=scale, size=b.shape).astype(np.float32))
        for name, (_, b) in base.factors.items()
    }


@dataclass
class World:
    """Trust dir, the aggregator's identity and the boxes' identities of one test."""

    trust: TrustStore
    agg: NodeKey
    boxes: list[NodeKey]
    base: GlobalAdapter

    @property
    def layout(self):
        return layout_of(self.base)


def world(tmp_path: Path, n_boxes: int, seed: int = 7) -> World:
    rng = np.random.default_rng(seed)
    trust_dir = tmp_path / "trust"
    agg = identity(trust_dir, AGG, rng)
    boxes = [identity(trust_dir, f"box{i}", rng) for i in range(1, n_boxes + 1)]
    return World(TrustStore(trust_dir), agg, boxes, base_adapter(rng))
