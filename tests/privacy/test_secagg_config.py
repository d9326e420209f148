"""The `[fleet.secure_aggregation]` section: off by default, refused where it cannot work,
and its participant bound is the encoding's no-wrap bound."""

from pathlib import Path

import pytest

from appliance.config import AggregatorConfig, load_config
from appliance.config.secure_aggregation import participant_bound
from appliance.errors import ConfigError
from appliance.privacy.secagg import max_participants
from appliance.privacy.secagg.messages import MAX_KEYS

AGG_HEAD = 'role = "aggregator"\n[identity]\nplant_id = "plant1"\nnode_id = "agg"\n'


def load(tmp_path: Path, extra: str) -> AggregatorConfig:
    path = tmp_path / "aggregator.toml"
    path.write_text(AGG_HEAD + extra)
    config = load_config(path)
    assert isinstance(config, AggregatorConfig)
    return config


def error(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    return str(caught.value)


def test_enabled_with_the_defaults_is_valid(tmp_path: Path) -> None:
    secure = load(tmp_path, "[fleet.secure_aggregation]\nenabled = true\n").fleet
    assert secure.secure_aggregation.enabled and secure.codec.values == "int8"


def test_off_by_default_with_documented_numbers(tmp_path: Path) -> None:
    secure = load(tmp_path, "").fleet.secure_aggregation
    assert secure.enabled is False
    assert (secure.value_bound, secure.max_weight, secure.min_reporting) == (0.05, 1024, 2)


@pytest.mark.parametrize("weight", [1, 2, 1024, 10_000, 1_000_000])
def test_the_config_bound_is_the_encodings_bound(weight: int) -> None:
    assert participant_bound(weight) == min(MAX_KEYS, max_participants(weight))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[fleet.codec]\ntop_k_fraction = 0.1\n[fleet.secure_aggregation]\nenabled = true\n",
            "needs dense int8 updates",
        ),
        (
            '[fleet.codec]\nvalues = "fp16"\n[fleet.secure_aggregation]\nenabled = true\n',
            "needs dense int8 updates",
        ),
        (
            '[fleet.strategy]\nname = "median"\n[fleet.secure_aggregation]\nenabled = true\n',
            'strategy.name = "fedavg"',
        ),
        (
            "[fleet.strategy]\nnorm_bound = 1.0\n[fleet.secure_aggregation]\nenabled = true\n",
            "no norm_bound",
        ),
        (
            f"[fleet]\nparticipants = {[f'box{i}' for i in range(17)]}\n"
            "[fleet.secure_aggregation]\nenabled = true\nmax_weight = 1000000\n",
            "at most 16 participants with max_weight 1000000 (17 listed)",
        ),
        (
            "[training]\nfreeze_a = false\n[fleet.secure_aggregation]\nenabled = true\n",
            "needs training.freeze_a = true",
        ),
        ("[fleet.secure_aggregation]\nkey_wait_s = 0\n", "key_wait_s"),
        ("[fleet.secure_aggregation]\nshare_wait_s = inf\n", "share_wait_s"),
        ("[fleet.secure_aggregation]\nreveal_wait_s = -1\n", "reveal_wait_s"),
        ("[fleet.secure_aggregation]\nmin_reporting = 1\n", "min_reporting"),
        ("[fleet.secure_aggregation]\nvalue_bound = nan\n", "value_bound"),
        ("[fleet.secure_aggregation]\nvalue_bound = 0\n", "value_bound"),
        ('[fleet.secure_aggregation]\nmax_weight = "8"\n', "max_weight"),
        ("[fleet.secure_aggregation]\nenabled = 1\n", "enabled"),
        ("[fleet.secure_aggregation]\nshamir = true\n", "shamir"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(
    tmp_path: Path, extra: str, expected: str
) -> None:
    assert expected in error(tmp_path, extra)
