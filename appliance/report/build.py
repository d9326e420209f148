"""`appliance report`: collect, write the CSV files and the HTML page, summarise."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config.roles import AggregatorConfig
from appliance.report.collect import ReportError, collect
from appliance.report.page import render, write_page
from appliance.report.roi import as_json, compute, roi_lines
from appliance.report.tables import (
    BOX_COLUMNS,
    ROUND_COLUMNS,
    box_rows,
    round_rows,
    summary,
    summary_text,
    write_csv,
)


@dataclass(frozen=True)
class ReportResult:
    """What was written, the headline numbers and the terminal text."""

    files: list[Path]
    summary: dict[str, Any]
    text: str


def build_report(config: AggregatorConfig, out: Path) -> ReportResult:
    """Write `index.html`, `rounds.csv` and `boxes.csv` into `out`."""
    data = collect(config.paths.state_dir, config.identity.plant_id)
    roi = compute(data, config.roi)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = [
            write_csv(out / "rounds.csv", ROUND_COLUMNS, round_rows(data)),
            write_csv(out / "boxes.csv", BOX_COLUMNS, box_rows(data)),
        ]
        headline = {**summary(data), "roi": as_json(roi)}
        text = summary_text(headline, [out / "index.html", *files], roi_lines(roi))
        page = render(data, text, [f.name for f in files], roi)
        files.insert(0, write_page(out / "index.html", page))
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report: {exc.strerror}") from None
    return ReportResult(files, {**headline, "files": [str(f) for f in files]}, text)
