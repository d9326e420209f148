"""The report as one self-contained HTML page (plotly's JavaScript inline: works offline)."""

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from appliance.config.roi import RoiSettings
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
    "solo NLL own / plant-wide",
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
        _GAIN_COLUMNS[6]: " / ".join(
            "-" if v is None else f"{v:.3f}" for v in (cell.nll_solo, cell.plant_nll_solo)
        ),
    }


def _roi_section(roi: Roi) -> list[str]:
    """Gains of the adapter each box serves; with `[roi]`, what they are worth."""
    parts = [
        '<h2 id="roi">Return on investment</h2>',
        "<p>Gains of the global adapter each box serves (its latest evaluation of an "
        "adapter it activated and the rollout kept), on its own held-out records and on "
        "the plant-wide evaluation set; NLL in nats per token (lower is better). Solo: the "
        "box's local-only baseline (its own data alone, never a global adapter), where it "
        "trains one.</p>",
        _table(_GAIN_COLUMNS, [_gain_row(b.box, b.served) for b in roi.boxes], "roi-gains"),
    ]
    settings = roi.settings
    if settings is None:
        parts.append('<p class="missing" data-roi="not-priced">not priced</p>')
        parts.append(f"<pre>{html.escape(HOW_TO_PRICE)}</pre>")
        return parts
    parts.append(_money_table(roi, settings))
    if roi.break_even is not None:
        parts.append(f'<p data-roi="break-even">break-even: {html.escape(roi.break_even)}</p>')
    for line in roi.missing:
        parts.append(f'<p class="missing" data-roi="missing">missing: {html.escape(line)}</p>')
    for line in roi.not_priced:
        parts.append(
            f'<p class="missing" data-roi="not-priced">not priced: {html.escape(line)}</p>'
        )
    return parts


def _money_table(roi: Roi, settings: RoiSettings) -> str:
    """Value, costs and return per day and over each horizon; "-": not computable (see
    what is missing), "not priced": its price is not in `[roi]`."""
    days = [h.days for h in roi.horizons]
    columns = ("", "per day", *(f"{d} days" for d in days))

    def row(
        name: str, per_day: float | None, priced: bool, show: Callable[[float | None], str]
    ) -> dict[str, str]:
        if not priced:
            return dict.fromkeys(columns, "not priced") | {"": name}
        cells = [show(per_day), *(show(None if per_day is None else per_day * d) for d in days)]
        return {"": name, **dict(zip(columns[1:], cells, strict=True))}

    def amount(value: float | None) -> str:
        return money(value, settings)

    def count(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    answers = settings.answer_value is not None
    rows = [
        row(
            "extra correct answers",
            roi.extra_correct_per_day,
            settings.questions_per_box_per_day is not None,
            count,
        ),
        row("value", roi.value_per_day, answers, amount),
        row(
            "energy (training, measured)",
            roi.energy_cost_per_day,
            settings.energy_price_per_kwh is not None,
            amount,
        ),
        row("boxes (amortised)", roi.box_cost_per_day, settings.box_cost is not None, amount),
        row("cost", roi.cost_per_day, True, amount),
        row("return", roi.net_per_day, answers, amount),
    ]
    return _table(columns, rows, "roi-money")


def write_page(path: Path, text: str) -> Path:
    """Write the page atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
