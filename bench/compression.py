"""Compression against quality: bytes per update and final held-out NLL for each update codec.

Runs the real system (`appliance demo`: broker, aggregator and boxes as processes) on the
built-in model once per codec, same data, seeds and hyper-parameters, and prints a table.

    .venv/bin/python -m bench.compression --rounds 2 --rank 8

The goal in the issue: at least 50x fewer bytes than dense fp32 with at most 1% relative NLL
increase (final global NLL, mean over boxes, against the dense fp32 run).
"""

import argparse
import statistics
import time
from typing import Any

from appliance.demo.run import run_demo

CODECS: dict[str, tuple[tuple[str, object], ...]] = {
    "dense fp32": (("values", "fp32"), ("compression", "none")),
    "fp16": (("values", "fp16"), ("compression", "none")),
    "int8": (("values", "int8"),),
    "top-k 10% + int8 + EF": (("values", "int8"), ("top_k_fraction", 0.1)),
    "top-k 1% + int8 + EF": (("values", "int8"), ("top_k_fraction", 0.01)),
}


def measure(name: str, rounds: int, rank: int, boxes: int) -> dict[str, Any]:
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
    )
    last = summary["rounds"][-1]
    ups = [n for r in summary["rounds"] for n in r["bytes_up"].values()]
    ratios = [x for r in summary["rounds"] for x in r["compression_ratio"].values()]
    return {
        "codec": name,
        "bytes_per_update": statistics.mean(ups),
        "ratio_vs_fp32": statistics.mean(ratios),
        "nll_global": statistics.mean(b["nll_global"] for b in last["boxes"].values()),
        "nll_base": statistics.mean(b["nll_base"] for b in last["boxes"].values()),
        "seconds": time.monotonic() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, action="append", help="repeat for several ranks")
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--codec", action="append", choices=list(CODECS), help="default: all")
    args = parser.parse_args()
    for rank in args.rank or [8]:
        rows = [measure(name, args.rounds, rank, args.boxes) for name in args.codec or CODECS]
        dense = next((r for r in rows if r["codec"] == "dense fp32"), rows[0])
        print(f"\nrank {rank}, {args.boxes} boxes, {args.rounds} rounds, builtin model")
        print(
            f"{'codec':<24} {'bytes/update':>13} {'x fewer':>8} {'final NLL':>10} "
            f"{'vs fp32':>8} {'base NLL':>9} {'run s':>7}"
        )
        for row in rows:
            change = 100 * (row["nll_global"] / dense["nll_global"] - 1)
            print(
                f"{row['codec']:<24} {row['bytes_per_update']:>13.0f} "
                f"{row['ratio_vs_fp32']:>8.1f} {row['nll_global']:>10.4f} {change:>+7.2f}% "
                f"{row['nll_base']:>9.4f} {row['seconds']:>7.0f}"
            )


if __name__ == "__main__":
    main()
