"""Return on investment on a recorded aggregator state: real stores, a real signed audit log.

The fixture's numbers are chosen so each figure can be checked by hand:
- one round, open from T0 to T0 + half a day; boxes a and b both sent an update;
- energy (RAPL counter): a 3.6 MJ = 1 kWh, b 1.8 MJ = 0.5 kWh while training;
- exact match, base -> served global: a 0.50 -> 0.75 (+0.25), b 0.60 -> 0.70 (+0.10).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config.loading import load_config
from appliance.config.roles import AggregatorConfig
from appliance.errors import ConfigError
from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import EvaluationReceived, RoundAggregated
from appliance.federation.codec import CodecSpec
from appliance.federation.rounds import RoundSpec, RoundStore, StoredUpdate
from appliance.report.build import build_report
from appliance.report.collect import collect
from appliance.report.roi import HOW_TO_PRICE, compute, served_cell
from appliance.rollout.store import RolloutStore, Stage
from appliance.telemetry.store import FleetStore
from tests.federation.plans import training_plan

T0 = 1_000.0
HALF_DAY = 43_200.0
KWH = 3.6e6
PACKAGE = "Power/intel-rapl:0 package-0/Energy J"
TASK = {"a": (0.5, 0.75), "b": (0.6, 0.7)}
ENERGY_J = {"a": 1.0 * KWH, "b": 0.5 * KWH}

PRICES = """
[roi]
currency = "EUR"
energy_price_per_kwh = 0.2
box_cost = 3650
box_lifetime_years = 2
value_per_correct_answer = 2
engineer_hour_value = 50.0
engineer_minutes_saved_per_correct_answer = 6
questions_per_box_per_day = 100
"""


def evaluation(box: str, round_id: str, version: int, **fields: object) -> EvaluationReceived:
    base, best = TASK.get(box, (None, None))
    values: dict[str, object] = {
        "round_id": round_id,
        "global_version": version,
        "node_id": box,
        "heldout_tokens": 80,
        "nll_base": 3.0,
        "nll_local": 2.8,
        "nll_global": 2.5,
        "activated": True,
        "task_records": 20,
        "task_base": base,
        "task_global": best,
    }
    return EvaluationReceived.model_validate(values | fields)


def aggregated(round_id: str, version: int) -> RoundAggregated:
    return RoundAggregated(
        round_id=round_id,
        close_reason="2 updates arrived",
        participants=("a", "b"),
        update_bytes={"a": 100, "b": 100},
        update_sha256={"a": "0" * 64, "b": "1" * 64},
        strategy={"strategy": "fedavg-frozen-a"},
        codec=CodecSpec(),
        global_version=version,
        global_sha256="2" * 64,
        global_bytes=300,
        signer="aggregator",
    )


def record_round(rounds: RoundStore, round_id: str, opened: float, closed: float) -> None:
    rounds.open_round(RoundSpec(round_id, 0, training_plan(), ("a", "b"), 2, 1, 60), opened)
    for n, box in enumerate(("a", "b")):
        rounds.offer(round_id, StoredUpdate(box, str(n) * 64, 10, b"x" * 100), opened + 30)
    rounds.advance(closed)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """One closed round of half a day, both boxes' evaluations and energy readings."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    rounds = RoundStore(state_dir / "rounds.sqlite")
    record_round(rounds, "r1-a", T0, T0 + HALF_DAY)
    rounds.close()
    audit = AuditLog(state_dir / "audit.jsonl")
    audit.append_event(aggregated("r1-a", 1))
    for box in ("a", "b"):
        audit.append_event(evaluation(box, "r1-a", 1))
    fleet = FleetStore(state_dir / "fleet-health.sqlite")
    ms = int(T0 * 1000)
    for box, joules in ENERGY_J.items():
        fleet.record(box, [(PACKAGE, 500.0, ms + 1000), (PACKAGE, 500.0 + joules, ms + 20000)])
    fleet.commit()
    fleet.close()
    return state_dir


def config(tmp_path: Path, state_dir: Path, roi: str = PRICES) -> AggregatorConfig:
    """The aggregator's config, read from a real TOML file as `appliance report` reads it."""
    (tmp_path / "trust").mkdir(exist_ok=True)
    path = tmp_path / "aggregator.toml"
    path.write_text(
        'role = "aggregator"\n[identity]\nplant_id = "p"\nnode_id = "aggregator"\n'
        f'private_key_file = "k.key"\ntrust_dir = "trust"\n[paths]\nstate_dir = "{state_dir}"\n'
        + roi
    )
    loaded = load_config(path)
    assert isinstance(loaded, AggregatorConfig)
    return loaded


def test_roi_arithmetic_by_hand(tmp_path: Path, state: Path) -> None:
    result = build_report(config(tmp_path, state), tmp_path / "out")
    roi = result.summary["roi"]
    # extra correct answers per day: (0.25 + 0.10) x 100 questions = 35
    assert roi["extra_correct_per_day"] == pytest.approx(35.0)
    # one answer is worth 2 + 6 min / 60 x 50 per hour = 7 EUR: 35 x 7 = 245 EUR a day
    assert roi["value_per_day"] == pytest.approx(245.0)
    # 1.5 kWh in half a day = 3 kWh a day, x 0.2 EUR = 0.6 EUR a day
    assert roi["energy_cost_per_day"] == pytest.approx(0.6)
    assert roi["observed_days"] == pytest.approx(0.5)
    assert roi["boxes"]["a"]["energy_kwh"] == pytest.approx(1.0)
    assert roi["boxes"]["a"]["energy_cost_per_day"] == pytest.approx(0.4)
    # 3650 EUR over 2 x 365 days = 5 EUR a day per box, two boxes
    assert roi["box_cost_per_day"] == pytest.approx(10.0)
    assert roi["return_per_day"] == pytest.approx(245.0 - 0.6 - 10.0)
    short, mid = roi["horizons"]
    assert short == pytest.approx({"days": 30, "value": 7350.0, "cost": 318.0, "return": 7032.0})
    assert mid == pytest.approx(
        {"days": 365, "value": 89_425.0, "cost": 3_869.0, "return": 85_556.0}
    )
    # the purchase, 2 x 3650 = 7300 EUR, over 245 - 0.6 = 244.4 EUR a day: day 29.9 -> 30
    assert roi["break_even_day"] == 30
    assert roi["missing"] == [] and roi["not_priced"] == []
    assert roi["boxes"]["b"]["gain"] == pytest.approx(0.1)
    assert "  30 days: value 7,350.00 EUR, cost 318.00 EUR, return 7,032.00 EUR" in result.text
    assert "  break-even: day 30" in result.text
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<h2 id="roi">Return on investment</h2>' in page
    assert "<td>return</td><td>234.40 EUR</td><td>7,032.00 EUR</td><td>85,556.00 EUR</td>" in page
    assert 'data-roi="break-even">break-even: day 30' in page
    assert "<td>a</td><td>r1</td><td>3.000 / 2.800 / 2.500</td><td>50.0% / - / 75.0%" in page


def test_a_rejected_or_not_activated_adapter_is_not_the_served_one(state: Path) -> None:
    rounds = RoundStore(state / "rounds.sqlite")
    record_round(rounds, "r2-a", T0 + HALF_DAY, T0 + 2 * HALF_DAY)
    record_round(rounds, "r3-a", T0 + 2 * HALF_DAY, T0 + 3 * HALF_DAY)
    rounds.close()
    audit = AuditLog(state / "audit.jsonl")
    audit.append_event(aggregated("r2-a", 2))
    audit.append_event(evaluation("a", "r2-a", 2, task_global=1.0))  # rejected below
    audit.append_event(aggregated("r3-a", 3))
    audit.append_event(evaluation("b", "r3-a", 3, task_global=0.9))
    audit.append_event(evaluation("a", "r3-a", 3, task_global=0.0, activated=False))
    store = RolloutStore(state / "rollout.sqlite")
    store.begin(2, "r2-a", 1, ("a",), ("b",), T0 + HALF_DAY)
    store.decide(2, Stage.REJECTED, "v2 regressed", T0 + HALF_DAY + 10)
    store.close()
    data = collect(state, "p")
    a, b = served_cell(data, "a"), served_cell(data, "b")
    assert a is not None and b is not None
    assert (a.round_seq, a.task_gain) == (1, pytest.approx(0.25))
    assert (b.round_seq, b.task_gain) == (3, pytest.approx(0.3))


def test_missing_energy_leaves_the_cost_and_return_empty(tmp_path: Path, state: Path) -> None:
    (state / "fleet-health.sqlite").unlink()
    result = build_report(config(tmp_path, state), tmp_path / "out")
    roi = result.summary["roi"]
    assert roi["value_per_day"] == pytest.approx(245.0)  # measured: still shown
    assert roi["energy_cost_per_day"] is None
    assert roi["boxes"]["a"]["energy_kwh"] is None
    assert [h["return"] for h in roi["horizons"]] == [None, None]
    assert [h["value"] for h in roi["horizons"]] == pytest.approx([7350.0, 89_425.0])
    assert roi["break_even_day"] is None
    assert roi["missing"] == [
        "a: no energy readings for its training in r1",
        "b: no energy readings for its training in r1",
    ]
    assert "  missing: a: no energy readings for its training in r1" in result.text
    assert "  30 days: value 7,350.00 EUR, cost -, return -" in result.text
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'data-roi="missing">missing: b: no energy readings for its training in r1' in page
    assert "<td>return</td><td>-</td><td>-</td><td>-</td>" in page
    assert "<td>value</td><td>245.00 EUR</td><td>7,350.00 EUR</td>" in page


def test_energy_not_priced_is_left_out_and_said(tmp_path: Path, state: Path) -> None:
    (state / "fleet-health.sqlite").unlink()
    prices = PRICES.replace("energy_price_per_kwh = 0.2\n", "")
    roi = build_report(config(tmp_path, state, prices), tmp_path / "out").summary["roi"]
    assert roi["missing"] == []
    assert roi["not_priced"] == ["energy (set energy_price_per_kwh)"]
    # boxes only: 10 EUR a day; 7300 / 245 = 29.8 -> day 30
    assert roi["horizons"][0] == pytest.approx(
        {"days": 30, "value": 7350.0, "cost": 300.0, "return": 7050.0}
    )
    assert roi["break_even_day"] == 30
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<td>energy (training, measured)</td><td>not priced</td>" in page
    assert "<td>cost</td><td>10.00 EUR</td><td>300.00 EUR</td>" in page


def test_a_box_without_a_task_metric_is_named(tmp_path: Path, state: Path) -> None:
    AuditLog(state / "audit.jsonl").append_event(
        evaluation("c", "r1-a", 1, task_records=0, task_base=None, task_global=None)
    )
    roi = build_report(config(tmp_path, state), tmp_path / "out").summary["roi"]
    assert roi["missing"][0] == (
        "c: no task metric on its own held-out records for the adapter of round 1"
    )
    assert roi["value_per_day"] is None and roi["horizons"][0]["return"] is None
    assert roi["boxes"]["a"]["value_per_day"] == pytest.approx(175.0)  # 25 x 7


def test_plant_wide_gain_prices_the_answers_when_asked(tmp_path: Path, state: Path) -> None:
    plant = {
        "plant_set_sha256": "3" * 64,
        "plant_tokens": 400,
        "plant_nll_base": 3.2,
        "plant_nll_global": 2.9,
        "plant_task_records": 50,
        "plant_task_base": 0.4,
        "plant_task_global": 0.6,
    }
    AuditLog(state / "audit.jsonl").append_event(evaluation("a", "r2-x", 1, **plant))
    rounds = RoundStore(state / "rounds.sqlite")
    record_round(rounds, "r2-x", T0 + HALF_DAY, T0 + 2 * HALF_DAY)
    rounds.close()
    prices = PRICES.replace("energy_price_per_kwh = 0.2\n", "") + 'value_from = "plant"\n'
    result = build_report(config(tmp_path, state, prices), tmp_path / "out")
    roi = result.summary["roi"]
    assert roi["boxes"]["a"]["gain"] == pytest.approx(0.2)
    assert roi["boxes"]["a"]["plant_nll_gain"] == pytest.approx(0.3)
    assert roi["boxes"]["a"]["extra_correct_per_day"] == pytest.approx(20.0)
    assert roi["missing"] == [
        "b: no plant-wide task metric for the adapter of round 1",
    ]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<td>3.200 / - / 2.900</td><td>40.0% / - / 60.0% (50 records)</td>" in page


def test_without_a_roi_section_the_gains_show_and_how_to_price(tmp_path: Path, state: Path) -> None:
    aggregator = config(tmp_path, state, roi="")
    assert aggregator.roi is None
    result = build_report(aggregator, tmp_path / "out")
    roi = result.summary["roi"]
    assert roi["priced"] is False and roi["horizons"] == []
    assert roi["boxes"]["a"]["task_gain"] == pytest.approx(0.25)
    assert roi["boxes"]["b"]["nll_gain"] == pytest.approx(0.5)
    assert "return on investment: not priced; add a [roi] section" in result.text
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'data-roi="not-priced">not priced</p>' in page
    assert "energy_price_per_kwh = 0.25" in page
    assert compute(collect(state, "p"), None).boxes[0].served is not None
    example = HOW_TO_PRICE.split("e.g.\n", 1)[1].rsplit("\n(", 1)[0]
    priced = config(tmp_path, state, roi=example.replace("  ", "")).roi
    assert priced is not None and priced.box_cost == 2500


def report_json(tmp_path: Path) -> dict:
    command = [sys.executable, "-m", "appliance.cli", "report", "--json"]
    command += ["--config", str(tmp_path / "aggregator.toml"), "--out", str(tmp_path / "cli")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_report_command_prints_the_roi(tmp_path: Path, state: Path) -> None:
    config(tmp_path, state)
    assert report_json(tmp_path)["roi"]["break_even_day"] == 30


@pytest.mark.parametrize(
    ("roi", "error"),
    [
        (
            'currency = "EUR"\nenergy_price_per_kwh = -0.1',
            "roi.energy_price_per_kwh: must be greater than or equal to 0 (got -0.1)",
        ),
        (
            'currency = "EUR"\nbox_costs = 10',
            "roi.box_costs: unknown key; did you mean 'box_cost'?",
        ),
        (
            'currency = "EUR"\nvalue_per_correct_answer = "2"',
            "roi.value_per_correct_answer: expected a number (got a string '2')",
        ),
        (
            'currency = "EUR"\nenergy_price_per_kwh = nan',
            "roi.energy_price_per_kwh: must be a finite number (got nan or inf)",
        ),
        ('currency = "euro"', "roi.currency: must match pattern"),
        ("energy_price_per_kwh = 0.2", "roi: currency: set the 3-letter code the prices are in"),
        ('currency = "EUR"\nbox_cost = 100', "roi: box_cost needs box_lifetime_years"),
        (
            'currency = "EUR"\nvalue_per_correct_answer = 1',
            "roi: a priced answer needs questions_per_box_per_day",
        ),
        (
            'currency = "EUR"\nengineer_hour_value = 60\nquestions_per_box_per_day = 5',
            "roi: engineer_hour_value and engineer_minutes_saved_per_correct_answer go together",
        ),
        (
            "short_term_days = 90\nmid_term_days = 60",
            "roi: mid_term_days (60) must not be shorter than short_term_days (90)",
        ),
        ("short_term_days = 0", "roi.short_term_days: must be greater than or equal to 1"),
        ('value_from = "fleet"', "roi.value_from: must be 'own' or 'plant'"),
    ],
)
def test_bad_roi_settings_are_named(tmp_path: Path, roi: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, tmp_path / "state", f"[roi]\n{roi}\n")
    assert str(caught.value).startswith(f"{tmp_path / 'aggregator.toml'}: {error}"), caught.value
