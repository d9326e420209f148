"""The report's charts, drawn with plotly (its JavaScript goes into the page once, inline).

Rounds are on the x axis as `r<seq>` so rounds without a new global adapter still show.
A chart whose numbers no box reported is not drawn; the page says "not reported" instead.
"""

from collections.abc import Callable

import plotly.graph_objects as go

from appliance.report.collect import Cell, ReportData

_LAYOUT = {
    "template": "plotly_white",
    "height": 380,
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "legend": {"orientation": "h", "y": -0.2},
}


def _label(seq: int) -> str:
    return f"r{seq}"


def _per_box(
    data: ReportData, value: Callable[[Cell], float | None]
) -> dict[str, tuple[list[str], list[float | None]]]:
    series = {}
    for box in data.boxes:
        cells = sorted((c for c in data.cells if c.box == box), key=lambda c: c.round_seq)
        series[box] = ([_label(c.round_seq) for c in cells], [value(c) for c in cells])
    return series


def _reported(series: dict[str, tuple[list[str], list[float | None]]]) -> bool:
    return any(v is not None for _x, ys in series.values() for v in ys)


def gain_chart(data: ReportData) -> go.Figure | None:
    """Held-out NLL gain of the global adapter against the base model, per box."""
    series = _per_box(data, lambda c: c.nll_gain)
    if not _reported(series):
        return None
    figure = go.Figure(
        [go.Scatter(x=x, y=y, name=box, mode="lines+markers") for box, (x, y) in series.items()]
    )
    figure.update_layout(
        title="Held-out NLL gain against the base model (nats/token, higher is better)",
        xaxis_title="round",
        yaxis_title="base NLL - global NLL",
        **_LAYOUT,
    )
    return figure


def task_chart(data: ReportData) -> go.Figure | None:
    """Exact-match gain against the base model, per box."""
    series = _per_box(data, lambda c: c.task_gain)
    if not _reported(series):
        return None
    figure = go.Figure(
        [go.Scatter(x=x, y=y, name=box, mode="lines+markers") for box, (x, y) in series.items()]
    )
    figure.update_layout(
        title="Exact-match gain against the base model (share of held-out prompts)",
        xaxis_title="round",
        yaxis_title="global - base",
        yaxis_tickformat=".0%",
        **_LAYOUT,
    )
    return figure


def _bars(
    data: ReportData, value: Callable[[Cell], float | None], title: str, unit: str
) -> go.Figure | None:
    series = _per_box(data, value)
    if not _reported(series):
        return None
    figure = go.Figure([go.Bar(x=x, y=y, name=box) for box, (x, y) in series.items()])
    figure.update_layout(title=title, xaxis_title="round", yaxis_title=unit, **_LAYOUT)
    return figure


def training_time_chart(data: ReportData) -> go.Figure | None:
    """Local training time per box and round."""
    return _bars(data, lambda c: c.train_seconds, "Training time per box", "seconds")


def energy_chart(data: ReportData) -> go.Figure | None:
    """Energy from a round's opening to the box's update (RAPL / NVML)."""
    return _bars(
        data,
        lambda c: c.energy_j,
        "Energy while training (round opened to update received; RAPL / NVML)",
        "joules",
    )


def bytes_chart(data: ReportData) -> go.Figure | None:
    """Bytes each box sent up, and the global adapter bytes sent down, per round."""
    series = _per_box(data, lambda c: None if c.bytes_up is None else float(c.bytes_up))
    down = _per_box(data, lambda c: None if c.bytes_down is None else float(c.bytes_down))
    if not _reported(series) and not _reported(down):
        return None
    traces = [go.Bar(x=x, y=y, name=f"{box} up") for box, (x, y) in series.items()]
    labels = [_label(r.seq) for r in data.rounds]
    totals = [
        sum(c.bytes_down or 0 for c in data.cells if c.round_id == r.round_id)
        for r in data.rounds
    ]
    traces.append(go.Scatter(x=labels, y=totals, name="global adapter down (all boxes)"))
    figure = go.Figure(traces)
    figure.update_layout(
        title="Bytes sent per round (updates up, stacked; global adapter down)",
        barmode="stack",
        xaxis_title="round",
        yaxis_title="bytes",
        **_LAYOUT,
    )
    return figure


def participation_chart(data: ReportData) -> go.Figure | None:
    """Which box sent an update in which round (invited but silent boxes show too)."""
    if not data.rounds or not data.boxes:
        return None
    labels = [_label(r.seq) for r in data.rounds]
    z, text = [], []
    for box in data.boxes:
        row, words = [], []
        for round_ in data.rounds:
            cell = data.cell(round_.round_id, box)
            state = 2 if cell.participated else 1 if cell.invited else 0
            row.append(state)
            words.append(("not invited", "invited, no update", "update accepted")[state])
        z.append(row)
        text.append(words)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=data.boxes,
            text=text,
            hovertemplate="%{y} %{x}: %{text}<extra></extra>",
            zmin=0,
            zmax=2,
            colorscale=[[0, "#eeeeee"], [0.5, "#f4a261"], [1, "#2a9d8f"]],
            showscale=False,
        )
    )
    figure.update_layout(title="Participation (green: update accepted)", **_LAYOUT)
    return figure


CHARTS: tuple[tuple[str, str, Callable[[ReportData], go.Figure | None]], ...] = (
    ("gain", "Evaluation gain against the base model", gain_chart),
    ("task", "Task metric (exact match) against the base model", task_chart),
    ("training-time", "Training time", training_time_chart),
    ("energy", "Energy", energy_chart),
    ("bytes", "Bytes sent", bytes_chart),
    ("participation", "Participation", participation_chart),
)
"""(id, heading, drawing function) in page order."""
