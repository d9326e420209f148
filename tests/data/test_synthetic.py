"""The demo's synthetic plant data: deterministic, valid, and different per line."""

import re
from pathlib import Path

from appliance.data.records import read_records
from appliance.data.synthetic import (
    LINES,
    SHARED_GROUPS,
    line_alarms,
    line_for,
    maintenance_records,
    plant_alarms,
    write_jsonl,
)
from appliance.demo.fleet import box_records, plant_set_records


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


def _codes(records: list[dict[str, str]]) -> list[str]:
    """The alarm code of every record (the word after "alarm ")."""
    found = [re.search(r"alarm ([A-Z]{2}-\d+)", " ".join(r.values())) for r in records]
    return [match.group(1) for match in found if match is not None]


def test_a_lines_rare_alarms_are_common_on_another_line() -> None:
    per_line = {line.name: _codes(maintenance_records(line, 400, seed=3)) for line in LINES}
    for line in LINES:
        alarms = line_alarms(line)
        own_share = sum(c in {a.code for a in alarms.common} for c in per_line[line.name])
        for rare in alarms.rare:
            seen_here = per_line[line.name].count(rare.code)
            elsewhere = [
                other for other in LINES if rare.code in {a.code for a in line_alarms(other).common}
            ]
            assert elsewhere, f"{rare.code} is rare on {line.name} and common nowhere"
            seen_there = per_line[elsewhere[0].name].count(rare.code)
            assert seen_there >= 3 * max(1, seen_here), (rare.code, seen_here, seen_there)
        assert own_share > 0.2 * len(per_line[line.name])


def test_every_line_reads_the_plant_wide_codes_the_same_way() -> None:
    meanings: dict[str, set[str]] = {}
    for index, line in enumerate(LINES):
        for record in maintenance_records(line, 300, seed=index):
            if "completion" in record:
                code = record["completion"].split()[1]
                meanings.setdefault(code, set()).add(record["completion"].split(" means ")[1])
    shared = [code for code in meanings if code[:2] in {g.alarm_prefix for g in SHARED_GROUPS}]
    assert len(shared) == sum(len(g.causes) for g in SHARED_GROUPS)
    assert all(len(meanings[code]) == 1 for code in shared)
    assert plant_alarms(0) == plant_alarms(0) and plant_alarms(0) != plant_alarms(1)


def test_another_seed_draws_other_records_with_the_same_meanings() -> None:
    line = line_for(1)
    assert line_alarms(line) == line_alarms(line)
    first, second = maintenance_records(line, 80, seed=0), maintenance_records(line, 80, seed=9)
    assert first != second
    assert set(_codes(first)) | set(_codes(second)) <= {
        a.code for a in (*line_alarms(line).own, *line_alarms(line).common, *line_alarms(line).rare)
    }


def test_the_demo_plant_set_holds_every_line_and_no_spooled_record() -> None:
    spools = [box_records(index, 60) for index in range(3)]
    plant = plant_set_records(3, 60, per_line=8)
    assert plant == plant_set_records(3, 60, per_line=8)
    assert len(plant) == 24
    assert not [r for r in plant if any(r in spool for spool in spools)]
    text = " ".join(v for r in plant for v in r.values())
    assert all(f"line {line_for(i).name}" in text.lower() for i in range(3))
    assert sum("prompt" in r for r in plant) >= 9
