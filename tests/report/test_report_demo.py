"""The ROI report of a real demo run: every box and round, charts that render offline."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.demo.fleet import AGGREGATOR
from tests.report.chromium import screenshot, visit

WAIT_S = 300
ROUNDS, BOXES = 2, 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report-demo")
    command = [sys.executable, "-m", "appliance.cli", "demo", "--model", "tiny"]
    command += ["--boxes", str(BOXES), "--rounds", str(ROUNDS), "--json"]
    command += ["--dir", str(root / "demo"), "--timeout", str(WAIT_S)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_S + 60, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"summary": json.loads(result.stdout), "root": root}


@pytest.fixture(scope="module")
def report(demo: dict) -> dict:
    config = Path(demo["summary"]["directory"]) / AGGREGATOR / "aggregator.toml"
    out = demo["root"] / "report"
    command = [sys.executable, "-m", "appliance.cli", "report", "--config", str(config)]
    result = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, check=True
    )
    as_json = subprocess.run(
        [*command, "--out", str(out), "--json"], capture_output=True, text=True, check=True
    )
    return {"out": out, "text": result.stdout, "summary": json.loads(as_json.stdout)}


def test_csv_has_every_box_and_round(demo: dict, report: dict) -> None:
    rounds = [r["round_id"] for r in demo["summary"]["rounds"]]
    boxes = demo["summary"]["boxes"]
    with (report["out"] / "boxes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["round_id"], r["box"]) for r in rows} == {(r, b) for r in rounds for b in boxes}
    for row in rows:
        numbers = demo["summary"]["rounds"][int(row["round"]) - 1]["boxes"][row["box"]]
        assert float(row["nll_global"]) == pytest.approx(numbers["nll_global"])
        assert float(row["nll_gain"]) == pytest.approx(
            numbers["nll_base"] - numbers["nll_global"]
        )
        assert row["participated"] == "True" and int(row["bytes_up"]) > 0
        assert float(row["train_seconds"]) > 0
        assert row["energy_j"] == "" or float(row["energy_j"]) >= 0
    with (report["out"] / "rounds.csv").open() as handle:
        round_rows = list(csv.DictReader(handle))
    assert [r["round_id"] for r in round_rows] == rounds
    assert [int(r["global_version"]) for r in round_rows] == list(range(1, ROUNDS + 1))


def test_terminal_summary_names_every_box(demo: dict, report: dict) -> None:
    for box in demo["summary"]["boxes"]:
        assert f"\n{box} " in report["text"]
    assert f"{ROUNDS} rounds" in report["text"]
    summary = report["summary"]
    assert summary["rounds_aggregated"] == ROUNDS
    assert all(b["last_nll_gain"] > 0 for b in summary["boxes"].values())


def test_html_opens_in_headless_chromium_with_its_charts(
    demo: dict, report: dict, tmp_path: Path
) -> None:
    page = report["out"] / "index.html"
    html = page.read_text()
    assert "<script src=" not in html  # plotly is inline: the plant network has no internet
    for round_ in demo["summary"]["rounds"]:
        assert round_["round_id"] in html
    visited = visit(page, tmp_path / "profile")
    assert visited.console == [], visited.console
    for chart in ("gain", "training-time", "bytes", "participation"):
        assert f'id="chart-{chart}"' in visited.dom
    # plotly draws each chart into its own <svg class="main-svg">: drawn, not just declared
    assert visited.dom.count('class="main-svg"') >= 4
    assert visited.dom.count('class="plot-container plotly"') >= 4
    for box in demo["summary"]["boxes"]:
        assert box in visited.dom
    energy = report["summary"]["boxes"]
    if all(b["energy_j"] is None for b in energy.values()):
        assert 'data-chart="energy">not reported' in visited.dom
    shot = screenshot(page, tmp_path / "profile-shot", tmp_path / "report.png")
    print(f"report screenshot: {shot}")


def test_the_console_check_sees_script_errors(tmp_path: Path) -> None:
    """The check above would catch a broken page: an uncaught error shows up."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>throw new Error('chart code broke')</script></body>")
    assert any("chart code broke" in line for line in visit(page, tmp_path / "p").console)
