"""The report as one self-contained HTML page (plotly's JavaScript inline: works offline)."""

import html
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from appliance.report.charts import CHARTS
from appliance.report.collect import Cell, ReportData
from appliance.report.roi import HOW_TO_PRICE, Roi, money
from appliance.report.tables import ROUND_COLUMNS, round_rows

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
.missing { color: #a33; font-style: italic; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def render(data: ReportData, summary_text: str, csv_names: list[str], roi: Roi) -> str:
    """The whole page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ROI report: {html.escape(data.plant)}</title>",
        f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>What federated training bought: plant {html.escape(data.plant)}</h1>",
        f"<pre>{html.escape(summary_text)}</pre>",
        "<p>The same numbers as CSV: "
        + ", ".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>' for n in csv_names)
        + ".</p>",
        *_roi_section(roi),
    ]
    for chart_id, heading, draw in CHARTS:
        parts.append(f'<h2 id="{chart_id}">{html.escape(heading)}</h2>')
        figure = draw(data)
        if figure is None:
            parts.append(
                f'<p class="missing" data-chart="{chart_id}">not reported: no box reported '
                "these numbers for any round</p>"
            )
            continue
        parts.append(
            figure.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"chart-{chart_id}",
                config={"displaylogo": False, "responsive": True},
            )
        )
    parts.append("<h2>Rounds</h2>")
    parts.append(_table(ROUND_COLUMNS, round_rows(data)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]], table_id: str = "rounds") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


_GAIN_COLUMNS = (
    "box", "served (round)", "NLL base / local / global", "exact match base / local / global",
    "plant-wide NLL base / local / global", "plant-wide exact match base / local / global",
)  # fmt: skip


def _three(base: float | None, local: float | None, best: float | None, spec: str) -> str:
    """base / local / global, "-" for a number not reported."""
    return " / ".join("-" if v is None else f"{v:{spec}}" for v in (base, local, best))


def _gain_row(box: str, cell: Cell | None) -> dict[str, Any]:
    if cell is None:
        return dict.fromkeys(_GAIN_COLUMNS, "-") | {"box": box, "served (round)": "none"}
    own_task = f" ({cell.task_records} records)" if cell.task_base is not None else ""
    plant_task = f" ({cell.plant_task_records} records)" if cell.plant_task_base is not None else ""
    return {
        "box": box,
        "served (round)": f"r{cell.round_seq}",
        _GAIN_COLUMNS[2]: _three(cell.nll_base, cell.nll_local, cell.nll_global, ".3f"),
        _GAIN_COLUMNS[3]: _three(cell.task_base, cell.task_local, cell.task_global, ".1%")
        + own_task,
        _GAIN_COLUMNS[4]: _three(
            cell.plant_nll_base, cell.plant_nll_local, cell.plant_nll_global, ".3f"
        ),
        _GAIN_COLUMNS[5]: _three(
            cell.plant_task_base, cell.plant_task_local, cell.plant_task_global, ".1%"
        )
        + plant_task,
    }


def _roi_section(roi: Roi) -> list[str]:
    """Gains of the adapter each box serves; with `[roi]`, what they are worth."""
    parts = [
        '<h2 id="roi">Return on investment</h2>',
        "<p>Gains of the global adapter each box serves (its latest evaluation of an "
        "adapter it activated and the rollout kept), on its own held-out records and on "
        "the plant-wide evaluation set; NLL in nats per token (lower is better).</p>",
        _table(_GAIN_COLUMNS, [_gain_row(b.box, b.served) for b in roi.boxes], "roi-gains"),
    ]
    settings = roi.settings
    if settings is None:
        parts.append('<p class="missing" data-roi="not-priced">not priced</p>')
        parts.append(f"<pre>{html.escape(HOW_TO_PRICE)}</pre>")
        return parts
    rows = [
        {"": "extra correct answers per day", **_per_day(roi.extra_correct_per_day)},
        {"": "value per day", "amount": money(roi.value_per_day, settings)},
        {"": "energy per day", "amount": money(roi.energy_cost_per_day, settings)},
        {"": "boxes per day (amortised)", "amount": money(roi.box_cost_per_day, settings)},
    ]
    for h in roi.horizons:
        rows.append({"": f"value over {h.days} days", "amount": money(h.value, settings)})
        rows.append({"": f"cost over {h.days} days", "amount": money(h.cost, settings)})
        rows.append({"": f"return over {h.days} days", "amount": money(h.net, settings)})
    rows.append({"": "break-even", "amount": roi.break_even or "-"})
    parts.append(_table(("", "amount"), rows, "roi-money"))
    for line in roi.missing:
        parts.append(f'<p class="missing" data-roi="missing">missing: {html.escape(line)}</p>')
    for line in roi.not_priced:
        parts.append(
            f'<p class="missing" data-roi="not-priced">not priced: {html.escape(line)}</p>'
        )
    return parts


def _per_day(value: float | None) -> dict[str, str]:
    return {"amount": "-" if value is None else f"{value:.1f}"}


def write_page(path: Path, text: str) -> Path:
    """Write the page atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
