"""Offline screen of update codecs: replays the real deltas of a dense fp32 demo run.

Trains nothing: it reads the boxes' dense fp32 updates from a finished demo's aggregator
store (`appliance demo --directory DIR` or `bench.compression`'s dense run kept on disk),
then, per codec, lets every box code its deltas round after round with error feedback, as
the boxes do, and FedAvg the decoded updates. It prints bytes per update, the ratio to dense
fp32 and the relative error of the global B after each round against the dense run's.

    .venv/bin/python -m bench.compression_replay DIR

A proxy only: the deltas do not react to the codec (the real system trains the next round
from the coded global), so the final NLL still needs `bench.compression`. It is cheap
(seconds per codec), which is what screening dozens of settings needs.
"""

import argparse
import sqlite3
from pathlib import Path

import numpy as np

from appliance.federation.codec import (
    CodecSpec,
    ErrorFeedback,
    RoundContext,
    decode_update,
    encode_update,
)
from appliance.federation.global_adapter import load_global_adapter
from appliance.federation.updates import Delta, GlobalAdapter

CANDIDATES: dict[str, CodecSpec] = {
    "int8": CodecSpec(),
    "int4": CodecSpec(values="int4"),
    "int4 b256": CodecSpec(values="int4", block=256),
    "lr1 int4 b256": CodecSpec(values="int4", lowrank_rank=1, block=256),
    "lr1 int4 b64": CodecSpec(values="int4", lowrank_rank=1, block=64),
    "lr1 int8": CodecSpec(values="int8", lowrank_rank=1),
    "lr1 fp16": CodecSpec(values="fp16", lowrank_rank=1),
    "lr2 int4 b256": CodecSpec(values="int4", lowrank_rank=2, block=256),
    "lr3 int4 b256": CodecSpec(values="int4", lowrank_rank=3, block=256),
    "lr1 int4 + res 1%": CodecSpec(
        values="int4", lowrank_rank=1, block=256, residual_top_k_fraction=0.01
    ),
    "lr1 int4 + res 3%": CodecSpec(
        values="int4", lowrank_rank=1, block=256, residual_top_k_fraction=0.03
    ),
    "int4 + res 1%": CodecSpec(values="int4", residual_top_k_fraction=0.01),
    "subspace 32 seed int4": CodecSpec(values="int4", subspace_dim=32, block=256),
    "subspace 64 seed int4": CodecSpec(values="int4", subspace_dim=64, block=256),
    "core r global int8": CodecSpec(subspace_dim=8, subspace_basis="global"),
    "core r global int4": CodecSpec(values="int4", subspace_dim=8, subspace_basis="global"),
    "top-k 1% int8": CodecSpec(top_k_fraction=0.01),
    "top-k 3% int8": CodecSpec(top_k_fraction=0.03),
}


def read_run(directory: Path) -> tuple[GlobalAdapter, list[list[tuple[str, int, bytes]]]]:
    """The version-0 global adapter and each round's (node, samples, blob)."""
    state = directory / "aggregator" / "state"
    base = load_global_adapter(state / "globals" / "global-v0.gguf")
    db = sqlite3.connect(f"file:{state / 'rounds.sqlite'}?mode=ro", uri=True)
    rounds = []
    for (round_id,) in db.execute(
        "SELECT round_id FROM rounds WHERE state = 'aggregated' ORDER BY seq"
    ):
        rows = db.execute(
            "SELECT node_id, sample_count, blob FROM updates WHERE round_id = ? ORDER BY node_id",
            (round_id,),
        ).fetchall()
        rounds.append([(str(n), int(s), bytes(b)) for n, s, b in rows])
    return base, rounds


def true_deltas(base: GlobalAdapter, rounds) -> list[list[tuple[str, int, dict[str, Delta]]]]:
    """Each round's dense fp32 deltas (decoded against a base of the right shapes)."""
    out = []
    for updates in rounds:
        decoded = []
        for node, samples, blob in updates:
            _header, update = decode_update(blob, base, 1 << 30)  # shapes only: fp32 is exact
            decoded.append((node, samples, update.deltas))
        out.append(decoded)
    return out


def fedavg(parts: list[tuple[int, dict[str, Delta]]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of the boxes' B deltas (what the aggregator's fedavg does)."""
    total = sum(n for n, _ in parts)
    names = parts[0][1].keys()
    return {name: sum(n * d[name].b.astype(np.float64) for n, d in parts) / total for name in names}


def replay(base: GlobalAdapter, history, spec: CodecSpec | None) -> tuple[float, list[float]]:
    """Mean bytes per update and the global B's relative error after each round."""
    feedback: dict[str, ErrorFeedback] = {}
    coded_b = {name: b.astype(np.float64) for name, (_, b) in base.factors.items()}
    dense_b = {name: b.astype(np.float64) for name, (_, b) in base.factors.items()}
    sizes, errors = [], []
    for index, updates in enumerate(history):
        current = GlobalAdapter(
            index,
            {n: (a, coded_b[n].astype(np.float32)) for n, (a, _) in base.factors.items()},
            base.alpha,
            base.frozen_a,
        )
        coded_parts, dense_parts = [], []
        for node, samples, deltas in updates:
            dense_parts.append((samples, deltas))
            if spec is None:
                coded_parts.append((samples, deltas))
                continue
            box = feedback.setdefault(node, ErrorFeedback())
            corrected = box.corrected(deltas)
            context = RoundContext(node, f"r{index + 1}", "00" * 32, index)
            encoded = encode_update(corrected, samples, spec, context, base=current)
            _h, update = decode_update(encoded.blob, current, 1 << 30)
            box.remember(corrected, update.deltas)
            sizes.append(len(encoded.blob))
            coded_parts.append((samples, update.deltas))
        for name, step in fedavg(coded_parts).items():
            coded_b[name] += step
        for name, step in fedavg(dense_parts).items():
            dense_b[name] += step
        num = sum(float(((coded_b[n] - dense_b[n]) ** 2).sum()) for n in dense_b)
        den = sum(float((dense_b[n] ** 2).sum()) for n in dense_b)
        errors.append((num / den) ** 0.5)
    return (float(np.mean(sizes)) if sizes else 0.0), errors


def spectrum(history) -> str:
    """Share of each delta's energy in its top 1, 2 and 4 singular directions (mean)."""
    shares = []
    for updates in history:
        for _node, _samples, deltas in updates:
            for delta in deltas.values():
                s = np.linalg.svd(delta.b.astype(np.float64), compute_uv=False) ** 2
                shares.append([s[:k].sum() / s.sum() for k in (1, 2, 4)])
    mean = np.mean(shares, axis=0)
    return f"energy in top 1/2/4 singular directions: {mean[0]:.2f} / {mean[1]:.2f} / {mean[2]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a finished dense fp32 demo directory")
    parser.add_argument("--codec", action="append", choices=list(CANDIDATES))
    args = parser.parse_args()
    base, rounds = read_run(args.directory)
    history = true_deltas(base, rounds)
    dense_bytes = sum(b.size * 4 for _, b in base.factors.values())
    print(f"{len(history)} rounds, {len(history[0])} boxes, rank {base.rank}; {spectrum(history)}")
    print(f"{'codec':<24} {'bytes':>7} {'x fewer':>8}  global B error after each round")
    for name in args.codec or CANDIDATES:
        size, errors = replay(base, history, CANDIDATES[name])
        trail = " ".join(f"{e:.3f}" for e in errors)
        print(f"{name:<24} {size:>7.0f} {dense_bytes / size:>8.1f}  {trail}", flush=True)


if __name__ == "__main__":
    main()
