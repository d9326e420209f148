"""The aggregation-scale benchmark still runs every strategy (tiny shapes; no timings checked)."""

import subprocess
import sys
from pathlib import Path

from bench.aggregation_scale import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--updates", "5", "--layers", "1", "--dim", "64", "--rank", "4"]


def test_every_strategy_runs_and_reports_a_row() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.aggregation_scale", *ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(STRATEGIES)
    assert not [row for row in rows if "failed" in row]
    factored = next(row for row in rows if "exact-product factored" in row).split(" | ")
    assert 0 <= float(factored[6]) < 1  # truncation error reported
