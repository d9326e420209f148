"""Prices for the report's return on investment (`[roi]` in the aggregator's file; optional).

`appliance report` turns the gains the boxes measured into money with these numbers. Every
field is optional: a price left out is "not priced" and its line is left out of the sums (the
report says so); a number the records do not hold is never guessed (the report says what is
missing instead). The model, per box b and for the fleet (the sum over boxes):

- gain_b: task-metric (exact-match) gain of the global adapter b serves over the base model,
  from b's latest evaluation of an adapter it activated that the rollout did not reject or
  roll back; measured on b's own held-out records (`value_from = "own"`) or on the shared
  plant-wide evaluation set (`value_from = "plant"`).
- extra correct answers per day_b = gain_b x questions_per_box_per_day.
- value per day_b = extra correct answers per day_b x (value_per_correct_answer +
  engineer_minutes_saved_per_correct_answer / 60 x engineer_hour_value).
- energy cost per day_b = kWh b measured while training in the closed rounds (RAPL / NVML,
  the report's energy numbers) / the days those rounds spanned (first opening to last
  closing) x energy_price_per_kwh: training goes on at the rate observed. Serving energy is
  not told apart from idle draw in the readings and is not counted.
- box cost per day_b = box_cost / (box_lifetime_years x 365): the purchase amortised.
- return over H days (H = short_term_days, mid_term_days) = H x (value - energy cost - box
  cost) per day.
- break-even day = the day the value net of energy has paid the boxes' purchase price
  (box_cost x boxes / (value - energy cost) per day); "never" when that net is not positive.
"""

from typing import Literal, Self

from pydantic import Field, model_validator

from appliance.config.base import Section

_MONEY = "in `currency`"


class RoiSettings(Section):
    """What a correct answer, a kWh and a box are worth to the plant, and the horizons."""

    currency: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code every price here is in (e.g. EUR), shown beside each "
        "amount. Required as soon as a price is set.",
    )
    energy_price_per_kwh: float | None = Field(
        default=None,
        ge=0,
        description=f"Price of one kWh, {_MONEY} per kWh. Left out: energy not priced.",
    )
    box_cost: float | None = Field(
        default=None,
        ge=0,
        description=f"Purchase price of one box, {_MONEY} per box. Left out: boxes not priced.",
    )
    box_lifetime_years: float | None = Field(
        default=None,
        gt=0,
        le=50,
        description="Years over which a box's purchase is amortised (years; required with "
        "`box_cost`).",
    )
    value_per_correct_answer: float | None = Field(
        default=None,
        ge=0,
        description=f"What one more correct answer is worth, {_MONEY} per answer. Left out: not "
        "priced.",
    )
    questions_per_box_per_day: float | None = Field(
        default=None,
        ge=0,
        description="Questions each box answers per day (questions per box per day); turns "
        "the task-metric gain into extra correct answers per day. Required when an answer "
        "is priced.",
    )
    engineer_hour_value: float | None = Field(
        default=None,
        ge=0,
        description=f"What an engineer's hour is worth, {_MONEY} per hour (with "
        "`engineer_minutes_saved_per_correct_answer`).",
    )
    engineer_minutes_saved_per_correct_answer: float | None = Field(
        default=None,
        ge=0,
        description="Engineer time a correct answer saves (minutes per answer; with "
        "`engineer_hour_value`).",
    )
    value_from: Literal["own", "plant"] = Field(
        default="own",
        description='Which gain prices the answers: "own" (each box\'s own held-out '
        'records) or "plant" (the shared plant-wide evaluation set, when boxes report it).',
    )
    short_term_days: int = Field(
        default=30, ge=1, le=36500, description="The short-term horizon (days)."
    )
    mid_term_days: int = Field(
        default=365, ge=1, le=36500, description="The mid-term horizon (days)."
    )

    @property
    def answer_value(self) -> float | None:
        """What one extra correct answer is worth (None: answers not priced)."""
        if self.value_per_correct_answer is None and self.engineer_hour_value is None:
            return None
        engineer = (self.engineer_minutes_saved_per_correct_answer or 0.0) / 60
        return (self.value_per_correct_answer or 0.0) + engineer * (self.engineer_hour_value or 0.0)

    @property
    def priced(self) -> bool:
        """Whether any price is set."""
        prices = (
            self.energy_price_per_kwh,
            self.box_cost,
            self.value_per_correct_answer,
            self.engineer_hour_value,
        )
        return any(p is not None for p in prices)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.priced and self.currency is None:
            raise ValueError('currency: set the 3-letter code the prices are in (e.g. "EUR")')
        if self.box_cost is not None and self.box_lifetime_years is None:
            raise ValueError("box_cost needs box_lifetime_years to amortise the purchase over")
        engineer = (self.engineer_hour_value, self.engineer_minutes_saved_per_correct_answer)
        if (engineer[0] is None) != (engineer[1] is None):
            raise ValueError(
                "engineer_hour_value and engineer_minutes_saved_per_correct_answer go together"
            )
        if self.answer_value is not None and self.questions_per_box_per_day is None:
            raise ValueError(
                "a priced answer needs questions_per_box_per_day (how many a box answers)"
            )
        if self.mid_term_days < self.short_term_days:
            raise ValueError(
                f"mid_term_days ({self.mid_term_days}) must not be shorter than "
                f"short_term_days ({self.short_term_days})"
            )
        return self
