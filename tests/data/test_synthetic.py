"""The demo's synthetic plant data: deterministic, valid, and different per line."""

from pathlib import Path

from appliance.data.records import read_records
from appliance.data.synthetic import LINES, line_for, maintenance_records, write_jsonl


def test_same_seed_same_records_other_seed_other_records() -> None:
    line = line_for(0)
    assert maintenance_records(line, 50, seed=1) == maintenance_records(line, 50, seed=1)
    assert maintenance_records(line, 50, seed=1) != maintenance_records(line, 50, seed=2)


def test_records_are_valid_training_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "line.jsonl", maintenance_records(line_for(1), 40))
    result = read_records(path)
    assert len(result.records) == 40
    assert result.bad_lines == []
    assert sum(r.prompt is not None for r in result.records) == 20


def test_lines_differ_but_share_the_maintenance_language() -> None:
    texts = [
        " ".join(str(v) for r in maintenance_records(line, 60) for v in r.values())
        for line in LINES
    ]
    for i, text in enumerate(texts):
        assert LINES[i].alarm_prefix in text
        assert all(other.alarm_prefix not in text for j, other in enumerate(LINES) if j != i)
        assert "Action" in text and "bearing" in text


def test_an_alarm_code_always_means_the_same_cause_on_a_line() -> None:
    meaning: dict[str, str] = {}
    for record in maintenance_records(line_for(2), 200):
        if "completion" in record:
            code = record["completion"].split()[1]
            cause = record["completion"].split(" means ")[1].split(".")[0]
            assert meaning.setdefault(code, cause) == cause
    assert len(meaning) >= 5
