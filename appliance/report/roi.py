"""Return on investment in the plant's terms: the gains, and what they are worth.

The gains come from each box's evaluation of the global adapter it serves (its latest
evaluation of an adapter it activated that the rollout did not reject or roll back); the
prices from the aggregator's `[roi]` section (appliance/config/roi.py, whose docstring is the
model). A number the records do not hold is not guessed: a total that needs it stays empty
and `missing` says what was not measured; a price left out of `[roi]` is "not priced", left
out of the sums and named in `not_priced`.
"""

import math
from dataclasses import dataclass, field

from appliance.config.roi import RoiSettings
from appliance.report.collect import Cell, ReportData

JOULES_PER_KWH = 3.6e6
DAYS_PER_YEAR = 365
_STOPPED = ("rejected", "rolled_back")


@dataclass(frozen=True)
class BoxReturn:
    """One box: the adapter it serves, its gain, and its share of value and cost per day."""

    box: str
    served: Cell | None
    gain: float | None = None
    extra_correct_per_day: float | None = None
    value_per_day: float | None = None
    energy_kwh: float | None = None
    energy_cost_per_day: float | None = None
    box_cost_per_day: float | None = None


@dataclass(frozen=True)
class Horizon:
    """Value, cost and return over a number of days."""

    days: int
    value: float | None
    cost: float | None
    net: float | None


@dataclass
class Roi:
    """The whole section: per box, fleet totals per day, the horizons and the break-even."""

    settings: RoiSettings | None
    boxes: list[BoxReturn]
    observed_days: float | None = None
    value_per_day: float | None = None
    energy_cost_per_day: float | None = None
    box_cost_per_day: float | None = None
    extra_correct_per_day: float | None = None
    cost_per_day: float | None = None
    net_per_day: float | None = None
    horizons: list[Horizon] = field(default_factory=list)
    break_even_day: int | None = None
    break_even: str | None = None
    missing: list[str] = field(default_factory=list)
    not_priced: list[str] = field(default_factory=list)


def served_cell(data: ReportData, box: str) -> Cell | None:
    """The box's evaluation of the global adapter it serves now, as the records tell it."""
    stopped = {r.round_id for r in data.rounds if r.rollout in _STOPPED}
    served = [
        c
        for c in data.cells
        if c.box == box and c.activated and c.nll_global is not None and c.round_id not in stopped
    ]
    return max(served, key=lambda c: c.round_seq, default=None)


def observed_days(data: ReportData) -> float | None:
    """Days from the first closed round's opening to the last one's closing (None: none)."""
    closed = [r for r in data.rounds if r.closed_at is not None]
    if not closed:
        return None
    span = max(r.closed_at or 0.0 for r in closed) - min(r.opened_at for r in closed)
    return span / 86400 if span > 0 else None


def training_kwh(data: ReportData, box: str) -> tuple[float, list[int]]:
    """kWh the box measured while training in closed rounds, and the rounds where it sent
    an update but no energy reading covers the training (a box that sent no update did no
    training the records know of, and counts nothing)."""
    closed = {r.round_id for r in data.rounds if r.closed_at is not None}
    joules, unmeasured = 0.0, []
    for cell in data.cells:
        if cell.box != box or cell.round_id not in closed or not cell.participated:
            continue
        if cell.energy_j is None:
            unmeasured.append(cell.round_seq)
        else:
            joules += cell.energy_j
    return joules / JOULES_PER_KWH, sorted(unmeasured)


def compute(data: ReportData, settings: RoiSettings | None) -> Roi:
    """The gains of every box and, with `settings`, their value and cost."""
    if settings is None:
        return Roi(None, [BoxReturn(b, served_cell(data, b)) for b in data.boxes])
    roi = Roi(settings, [], observed_days=observed_days(data))
    _note_unpriced(roi, settings)
    for box in data.boxes:
        roi.boxes.append(_box_return(data, box, settings, roi))
    _fleet_totals(roi, settings, len(data.boxes))
    return roi


def _note_unpriced(roi: Roi, settings: RoiSettings) -> None:
    """Name what `[roi]` leaves out, so the sums say what they hold."""
    if settings.questions_per_box_per_day is None:
        roi.not_priced.append("answers (set questions_per_box_per_day)")
    elif settings.answer_value is None:
        roi.not_priced.append(
            "answers (set value_per_correct_answer or engineer_hour_value with "
            "engineer_minutes_saved_per_correct_answer)"
        )
    if settings.energy_price_per_kwh is None:
        roi.not_priced.append("energy (set energy_price_per_kwh)")
    if settings.box_cost is None:
        roi.not_priced.append("boxes (set box_cost and box_lifetime_years)")


def _box_gain(served: Cell | None, settings: RoiSettings) -> tuple[float | None, str | None]:
    """The gain that prices the box's answers, or why there is none."""
    if served is None:
        return None, "no evaluation of a global adapter it serves"
    if settings.value_from == "plant":
        if served.plant_task_gain is None:
            return None, f"no plant-wide task metric for the adapter of {_round_of(served)}"
        return served.plant_task_gain, None
    if served.task_gain is None:
        return (
            None,
            f"no task metric on its own held-out records for the adapter of {_round_of(served)}",
        )
    return served.task_gain, None


def _round_of(cell: Cell) -> str:
    return f"round {cell.round_seq}"


def _box_return(data: ReportData, box: str, settings: RoiSettings, roi: Roi) -> BoxReturn:
    """One box's gain, value and costs per day; what is missing goes into `roi.missing`."""
    served = served_cell(data, box)
    gain, why = _box_gain(served, settings)
    questions = settings.questions_per_box_per_day
    extra = value = None
    if questions is not None:
        if gain is None:
            roi.missing.append(f"{box}: {why}")
        else:
            extra = gain * questions
            answer = settings.answer_value
            value = None if answer is None else extra * answer
    kwh, unmeasured = training_kwh(data, box)
    energy_cost = None
    if settings.energy_price_per_kwh is not None:
        if unmeasured:
            rounds = ", ".join(f"r{s}" for s in unmeasured)
            roi.missing.append(f"{box}: no energy readings for its training in {rounds}")
        elif roi.observed_days is not None:
            energy_cost = kwh * settings.energy_price_per_kwh / roi.observed_days
    box_cost = None
    if settings.box_cost is not None and settings.box_lifetime_years is not None:
        box_cost = settings.box_cost / (settings.box_lifetime_years * DAYS_PER_YEAR)
    measured_kwh = None if unmeasured else kwh
    return BoxReturn(box, served, gain, extra, value, measured_kwh, energy_cost, box_cost)


def _sum(values: list[float | None]) -> float | None:
    """The total, or None when any part is missing."""
    return None if any(v is None for v in values) else sum(v or 0.0 for v in values)


def _fleet_totals(roi: Roi, settings: RoiSettings, boxes: int) -> None:
    """Fleet per-day totals, the horizons and the break-even day."""
    if settings.energy_price_per_kwh is not None and roi.observed_days is None:
        roi.missing.append("no closed round: the energy cannot be scaled to a day")
    if settings.questions_per_box_per_day is not None:
        roi.extra_correct_per_day = _sum([b.extra_correct_per_day for b in roi.boxes])
    if settings.answer_value is not None:
        roi.value_per_day = _sum([b.value_per_day for b in roi.boxes])
    if settings.energy_price_per_kwh is not None:
        roi.energy_cost_per_day = _sum([b.energy_cost_per_day for b in roi.boxes])
    if settings.box_cost is not None:
        roi.box_cost_per_day = _sum([b.box_cost_per_day for b in roi.boxes])
    priced_costs = [
        c
        for c, price in (
            (roi.energy_cost_per_day, settings.energy_price_per_kwh),
            (roi.box_cost_per_day, settings.box_cost),
        )
        if price is not None
    ]
    cost = _sum(priced_costs)
    value = roi.value_per_day if settings.answer_value is not None else None
    roi.cost_per_day = cost
    roi.net_per_day = None if value is None or cost is None else value - cost
    for days in (settings.short_term_days, settings.mid_term_days):
        roi.horizons.append(
            Horizon(
                days,
                None if value is None else value * days,
                None if cost is None else cost * days,
                None if value is None or cost is None else (value - cost) * days,
            )
        )
    _break_even(roi, settings, boxes)


def _break_even(roi: Roi, settings: RoiSettings, boxes: int) -> None:
    """The day the value net of energy has paid for the boxes (a cash view)."""
    if settings.answer_value is None or roi.value_per_day is None:
        return
    if settings.energy_price_per_kwh is not None and roi.energy_cost_per_day is None:
        return
    net = roi.value_per_day - (roi.energy_cost_per_day or 0.0)
    purchase = (settings.box_cost or 0.0) * boxes
    if net <= 0:
        roi.break_even = "never at the observed rates (the value does not cover the energy)"
        return
    roi.break_even_day = math.ceil(purchase / net)
    lifetime = (settings.box_lifetime_years or 0.0) * DAYS_PER_YEAR
    if settings.box_cost is not None and roi.break_even_day > lifetime:
        roi.break_even = f"day {roi.break_even_day}: after the boxes' lifetime"
    else:
        roi.break_even = f"day {roi.break_even_day}"


def money(value: float | None, settings: RoiSettings) -> str:
    """An amount in the configured currency; "-" when it cannot be computed."""
    if value is None:
        return "-"
    return f"{value:,.2f} {settings.currency or ''}".rstrip()


def as_json(roi: Roi) -> dict[str, object]:
    """The section for `appliance report --json`."""
    return {
        "priced": roi.settings is not None,
        "currency": None if roi.settings is None else roi.settings.currency,
        "value_from": None if roi.settings is None else roi.settings.value_from,
        "observed_days": roi.observed_days,
        "extra_correct_per_day": roi.extra_correct_per_day,
        "value_per_day": roi.value_per_day,
        "energy_cost_per_day": roi.energy_cost_per_day,
        "box_cost_per_day": roi.box_cost_per_day,
        "cost_per_day": roi.cost_per_day,
        "return_per_day": roi.net_per_day,
        "horizons": [
            {"days": h.days, "value": h.value, "cost": h.cost, "return": h.net}
            for h in roi.horizons
        ],
        "break_even_day": roi.break_even_day,
        "break_even": roi.break_even,
        "missing": roi.missing,
        "not_priced": roi.not_priced,
        "boxes": {b.box: _box_json(b) for b in roi.boxes},
    }


def _box_json(box: BoxReturn) -> dict[str, object]:
    served = box.served
    gains = {
        "served_round": None if served is None else served.round_seq,
        "nll_gain": None if served is None else served.nll_gain,
        "task_gain": None if served is None else served.task_gain,
        "plant_nll_gain": None if served is None else served.plant_nll_gain,
        "plant_task_gain": None if served is None else served.plant_task_gain,
        "nll_solo": None if served is None else served.nll_solo,
        "plant_nll_solo": None if served is None else served.plant_nll_solo,
        "plant_nll_gain_over_solo": None if served is None else served.plant_nll_gain_over_solo,
    }
    return {
        **gains,
        "gain": box.gain,
        "extra_correct_per_day": box.extra_correct_per_day,
        "value_per_day": box.value_per_day,
        "energy_kwh": box.energy_kwh,
        "energy_cost_per_day": box.energy_cost_per_day,
        "box_cost_per_day": box.box_cost_per_day,
    }


HOW_TO_PRICE = (
    "add a [roi] section to the aggregator's config to see these gains in money, e.g.\n"
    '  [roi]\n  currency = "EUR"\n  energy_price_per_kwh = 0.25\n  box_cost = 2500\n'
    "  box_lifetime_years = 4\n  value_per_correct_answer = 2.0\n"
    "  questions_per_box_per_day = 40\n(docs/configuration.md, [roi])"
)


def roi_lines(roi: Roi) -> list[str]:
    """The section for the terminal summary."""
    if roi.settings is None:
        return ["return on investment: not priced; " + HOW_TO_PRICE]
    settings = roi.settings
    lines = [f"return on investment ({settings.currency or 'no currency'}):"]
    if roi.extra_correct_per_day is not None:
        lines.append(f"  extra correct answers per day: {roi.extra_correct_per_day:.1f}")
    per_day = (
        ("value", roi.value_per_day, settings.answer_value),
        ("energy", roi.energy_cost_per_day, settings.energy_price_per_kwh),
        ("boxes (amortised)", roi.box_cost_per_day, settings.box_cost),
    )
    for name, amount, price in per_day:
        if price is not None:
            lines.append(f"  {name} per day: {money(amount, settings)}")
    for h in roi.horizons:
        lines.append(
            f"  {h.days} days: value {money(h.value, settings)}, cost "
            f"{money(h.cost, settings)}, return {money(h.net, settings)}"
        )
    if roi.break_even is not None:
        lines.append(f"  break-even: {roi.break_even}")
    lines.extend(f"  missing: {m}" for m in roi.missing)
    lines.extend(f"  not priced: {n}" for n in roi.not_priced)
    return lines
