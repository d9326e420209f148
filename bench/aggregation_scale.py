"""Aggregation at scale: seconds and peak memory of each strategy over many streamed updates.

A 1B-class model's shape (22 layers, q and v, 2048 x 2048, rank 16 by default). Updates are
generated one at a time from a seed and handed to the strategy as they "arrive", so only the
strategy's own state stays in memory. Each (strategy, number of updates) runs in a fresh child
process whose peak RSS is read from the kernel; the `stream only` row is the cost of making
the updates without aggregating them (subtract it from the others).

    .venv/bin/python -m bench.aggregation_scale --updates 100 --updates 1000

Streaming strategies must show the same peak memory at 100 and 1,000 updates. The robust
coordinate statistics (median, trimmed mean) need every update before they can answer, so
they grow with the fleet by design; under trained A they would hold one dense d x k product
per box (16 MB each here), which is why they run on B under frozen A only.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from appliance.federation.strategies import (
    CoordinateMedian,
    ExactProduct,
    FedAvgFrozenA,
    FedIT,
    NormBound,
    Strategy,
    TrimmedMean,
)
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter

STRATEGIES: dict[str, tuple[bool, Callable[[], Strategy | None]]] = {
    # name: (frozen A, factory); None = generate only
    "stream only": (True, lambda: None),
    "fedavg (frozen A)": (True, FedAvgFrozenA),
    "norm-bound(fedavg)": (True, lambda: NormBound(FedAvgFrozenA(), 1.0)),
    "exact-product factored": (False, ExactProduct),
    "exact-product dense": (False, lambda: ExactProduct(accumulator="dense")),
    "fedit (baseline)": (False, FedIT),
    "median (frozen A, on B)": (True, CoordinateMedian),
    "trimmed-mean 10% (frozen A, on B)": (True, lambda: TrimmedMean(0.1)),
}


def global_adapter(layers: int, dim: int, rank: int, frozen: bool) -> GlobalAdapter:
    rng = np.random.default_rng(0)
    factors = {}
    for layer in range(layers):
        for proj in ("q", "v"):
            a = rng.normal(0, dim**-0.5, (rank, dim)).astype(np.float32)
            b = rng.normal(0, 0.01, (dim, rank)).astype(np.float32)
            factors[f"blk.{layer}.attn_{proj}.weight"] = (a, b)
    return GlobalAdapter(version=1, factors=factors, alpha=2.0 * rank, frozen_a=frozen)


def updates(base: GlobalAdapter, count: int) -> Iterator[ClientUpdate]:
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        deltas = {}
        for name, (a, b) in base.factors.items():
            db = rng.standard_normal(b.shape, np.float32) * np.float32(0.001)
            da = None
            if not base.frozen_a:
                da = rng.standard_normal(a.shape, np.float32) * np.float32(0.001)
            deltas[name] = Delta(da, db)
        yield ClientUpdate(f"box{i:04d}", 10 + i % 7, deltas)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, count: int, layers: int, dim: int, rank: int) -> dict[str, Any]:
    frozen, make = STRATEGIES[name]
    base = global_adapter(layers, dim, rank, frozen)
    strategy = make()
    began = time.perf_counter()
    if strategy is not None:
        strategy.begin(base)
    start_mb = peak_rss_mb()
    for update in updates(base, count):
        if strategy is not None:
            strategy.accept(update)
    accepted = time.perf_counter() - began
    report: dict[str, Any] = {}
    if strategy is not None:
        report = dict(strategy.finish().report)
    return {
        "strategy": name,
        "updates": count,
        "seconds": time.perf_counter() - began,
        "accept_s": accepted,
        "rss_after_begin_mb": start_mb,
        "peak_rss_mb": peak_rss_mb(),
        "truncation_error": report.get("truncation_error"),
        "streaming_error_bound": report.get("streaming_error_bound"),
    }


def run_child(name: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.aggregation_scale", "--child", name]
    command += ["--updates", str(count), "--layers", str(args.layers), "--dim", str(args.dim)]
    command += ["--rank", str(args.rank)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"strategy": name, "updates": count, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"| {row['strategy']} | {row['updates']} | failed: {row['error']} |", flush=True)
        return
    cells = [
        row["strategy"],
        str(row["updates"]),
        f"{row['seconds']:.1f}",
        f"{row['accept_s'] / row['updates'] * 1000:.1f}",
        f"{row['rss_after_begin_mb']:.0f}",
        f"{row['peak_rss_mb']:.0f}",
        fmt(row["truncation_error"], ".4f"),
        fmt(row["streaming_error_bound"], ".4f"),
    ]
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, action="append", help="repeat; default 100, 1000")
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--strategy", action="append", choices=list(STRATEGIES))
    parser.add_argument("--child", choices=list(STRATEGIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = args.updates or [100, 1000]
    if args.child:
        print(json.dumps(child(args.child, counts[0], args.layers, args.dim, args.rank)))
        return
    print(f"{args.layers} layers x (q, v), {args.dim} x {args.dim}, rank {args.rank}\n")
    print("| strategy | updates | seconds | ms / update | RSS after begin MB | peak RSS MB "
          "| truncation error | streaming bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.strategy or list(STRATEGIES):
        for count in counts:
            print_row(run_child(name, count, args))


if __name__ == "__main__":
    main()
