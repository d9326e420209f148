"""The example configs the package ships (/usr/share/appliance/*.toml, the source of
/etc/appliance/edge.toml): valid, complete in the sections a plant tunes, at their defaults."""

import tomllib
from pathlib import Path

import pytest

from appliance.config import AggregatorConfig, EdgeConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "edge.toml": (EdgeConfig, ["federation", "outbox", "transfer"]),
    "aggregator.toml": (AggregatorConfig, ["fleet", "outbox", "transfer"]),
}


def check(shown: dict, default: dict, where: str) -> None:
    """Every shown value is the default; every key is shown except optional ones (None,
    left commented out) and sub-tables that other features add."""
    for key, value in shown.items():
        if isinstance(value, dict):
            check(value, default[key], f"{where}.{key}")
        else:
            assert value == default[key], f"{where}.{key} = {value!r}, default {default[key]!r}"
    missing = {k for k, v in default.items() if k not in shown and v is not None
               and not isinstance(v, dict)}
    assert missing == set(), f"[{where}] does not show {sorted(missing)}"


@pytest.mark.parametrize("name", SECTIONS)
def test_example_shows_these_sections_with_every_key_at_its_default(name: str) -> None:
    role, sections = SECTIONS[name]
    path = ROOT / "packaging" / name
    assert isinstance(load_config(path), role)
    raw = tomllib.loads(path.read_text())
    for section in sections:
        field = role.model_fields[section]
        default = field.get_default(call_default_factory=True).model_dump(mode="json")
        check(raw[section], default, f"{name}: {section}")


def test_the_aggregator_keeps_its_state_apart_from_a_box_on_the_same_host() -> None:
    edge = load_config(ROOT / "packaging" / "edge.toml")
    aggregator = load_config(ROOT / "packaging" / "aggregator.toml")
    assert edge.paths.state_dir != aggregator.paths.state_dir
    assert edge.identity.private_key_file != aggregator.identity.private_key_file
