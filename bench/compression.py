"""Compression against quality: bytes per update and final held-out NLL for each update codec.

Runs the real system (`appliance demo`: broker, aggregator and boxes as processes) on the
built-in model once per codec and rank, same data, seeds and hyper-parameters, and prints a
table (each row as soon as its run ends, both ranks of a codec before the next codec, so a
run cut short still compares its first codecs at every rank).

    .venv/bin/python -m bench.compression --rank 8 --rank 16          # 6 rounds, all codecs
    .venv/bin/python -m bench.compression --rounds 3 --codec int8     # a quick screen

The goal in the issue: at least 50x fewer bytes than dense fp32 with at most 1% relative NLL
increase (final global NLL on each box's own held-out data, mean over boxes, against the
dense fp32 run of the same rank). "plant NLL" is the same for the plant-wide evaluation set
where the demo summary has it ('-' otherwise).
"""

import argparse
import statistics
import sys
import time
from typing import Any

from appliance.demo.run import run_demo

CODECS: dict[str, tuple[tuple[str, object], ...]] = {
    "dense fp32": (("values", "fp32"), ("compression", "none")),
    # route 1: low-rank B-only factors in int4 (256-value blocks: P's columns are unit vectors)
    "low-rank 1 + int4": (("values", "int4"), ("lowrank_rank", 1), ("block", 256)),
    "low-rank 2 + int4": (("values", "int4"), ("lowrank_rank", 2), ("block", 256)),
    "int8": (("values", "int8"),),
    # route 4: top-k of what the low-rank coding left, on top of it
    "low-rank 1 + int4 + res 1%": (
        ("values", "int4"),
        ("lowrank_rank", 1),
        ("block", 256),
        ("residual_top_k_fraction", 0.01),
    ),
    "int4": (("values", "int4"),),
    # route 2: coefficients on a seeded random basis (nothing else travels)
    "subspace 64 seed + int4": (("values", "int4"), ("subspace_dim", 64), ("block", 256)),
}
"""In the order they run: the rows that decide the goal first, so a partial run says most.
Route 3 (`subspace_basis = "global"`, an r x r core on the global B) is not here: the box
does not pass the round's adapter to the encoder yet; bench/compression_replay.py has it."""


def measure(name: str, rounds: int, rank: int, boxes: int) -> dict[str, Any]:
    """One demo run with codec `name`: the numbers of one table row."""
    began = time.monotonic()
    summary = run_demo(
        boxes,
        rounds,
        model="builtin",
        directory=None,
        timeout_s=3600,
        quiet=True,
        codec=CODECS[name],
        training={"rank": rank},
        solo_baseline=False,  # the codec comparison needs no local-only runs
    )
    last = summary["rounds"][-1]
    ups = [n for r in summary["rounds"] for n in r["bytes_up"].values()]
    ratios = [x for r in summary["rounds"] for x in r["compression_ratio"].values()]
    plant = [b.get("plant_nll_global") for b in last["boxes"].values()]
    return {
        "bytes_per_update": statistics.mean(ups),
        "ratio_vs_fp32": statistics.mean(ratios),
        "bytes_down": statistics.mean(r["bytes_down"] for r in summary["rounds"]),
        "nll_global": statistics.mean(b["nll_global"] for b in last["boxes"].values()),
        "nll_base": statistics.mean(b["nll_base"] for b in last["boxes"].values()),
        "plant_nll_global": (
            statistics.mean(plant) if plant and all(p is not None for p in plant) else None
        ),
        "seconds": time.monotonic() - began,
    }


HEAD = (
    f"{'rank':>4} {'codec':<28} {'bytes/update':>12} {'x fewer':>8} {'bytes down/rnd':>14} "
    f"{'final NLL':>10} {'vs fp32':>8} {'plant NLL':>10} {'vs fp32':>8} {'base NLL':>9} "
    f"{'run s':>6}"
)


def _change(value: float | None, dense: float | None) -> str:
    return "-" if value is None or dense is None else f"{100 * (value / dense - 1):+.2f}%"


def row_text(row: dict[str, Any], dense: dict[str, Any] | None) -> str:
    """One table line; the changes are against the dense fp32 row of the same rank."""
    if "error" in row:
        return f"{row['rank']:>4} {row['codec']:<28} failed: {row['error']}"
    plant = row["plant_nll_global"]
    return (
        f"{row['rank']:>4} {row['codec']:<28} {row['bytes_per_update']:>12.0f} "
        f"{row['ratio_vs_fp32']:>8.1f} {row['bytes_down']:>14.0f} {row['nll_global']:>10.4f} "
        f"{_change(row['nll_global'], dense and dense['nll_global']):>8} "
        f"{'-' if plant is None else f'{plant:.4f}':>10} "
        f"{_change(plant, dense and dense['plant_nll_global']):>8} "
        f"{row['nll_base']:>9.4f} {row['seconds']:>6.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rank", type=int, action="append", help="repeat for several ranks")
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--codec", action="append", choices=list(CODECS), help="default: all")
    args = parser.parse_args()
    ranks = args.rank or [8]
    print(f"{args.boxes} boxes, {args.rounds} rounds, builtin model, ranks {ranks}")
    print(HEAD, flush=True)
    dense: dict[int, dict[str, Any]] = {}
    for name in args.codec or CODECS:  # codec outer: both ranks of a row before the next
        for rank in ranks:
            try:
                row = measure(name, args.rounds, rank, args.boxes)
            except Exception as exc:  # one codec failing must not lose the others' rows
                row = {"error": f"{type(exc).__name__}: {exc}"}
            row.update(codec=name, rank=rank)
            if name == "dense fp32" and "error" not in row:
                dense[rank] = row
            print(row_text(row, dense.get(rank)), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
