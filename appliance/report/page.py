"""The report as one self-contained HTML page (plotly's JavaScript inline: works offline)."""

import html
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from appliance.report.charts import CHARTS
from appliance.report.collect import ReportData
from appliance.report.tables import ROUND_COLUMNS, round_rows

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
.missing { color: #a33; font-style: italic; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def render(data: ReportData, summary_text: str, csv_names: list[str]) -> str:
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


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<table id="rounds"><tr>{head}</tr>{body}</table>'


def write_page(path: Path, text: str) -> Path:
    """Write the page atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
