"""The `[fleet.codec]` section's format-2 options: defaults unchanged, combinations refused
where they cannot work, and secure aggregation refuses every one of them."""

from pathlib import Path

import pytest

from appliance.config import AggregatorConfig, load_config
from appliance.errors import ConfigError

AGG_HEAD = 'role = "aggregator"\n[identity]\nplant_id = "plant1"\nnode_id = "agg"\n'
SECURE = "[fleet.secure_aggregation]\nenabled = true\n"


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


def test_defaults_are_todays_dense_int8(tmp_path: Path) -> None:
    codec = load(tmp_path, "").fleet.codec
    assert (codec.values, codec.block, codec.top_k_fraction, codec.compression) == (
        "int8",
        64,
        1.0,
        "zstd",
    )
    assert (codec.lowrank_rank, codec.subspace_dim, codec.residual_top_k_fraction) == (0, 0, 0)
    assert codec.subspace_basis == "seed" and codec.dense_int8


def test_the_new_options_parse(tmp_path: Path) -> None:
    codec = load(
        tmp_path,
        '[fleet.codec]\nvalues = "int4"\nblock = 256\nlowrank_rank = 1\n'
        "residual_top_k_fraction = 0.01\n",
    ).fleet.codec
    assert (codec.values, codec.block, codec.lowrank_rank) == ("int4", 256, 1)
    assert codec.residual_top_k_fraction == 0.01 and not codec.dense_int8
    core = load(
        tmp_path, '[fleet.codec]\nsubspace_dim = 8\nsubspace_basis = "global"\n'
    ).fleet.codec
    assert (core.subspace_dim, core.subspace_basis) == (8, "global")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("lowrank_rank = 2\nsubspace_dim = 4\n", "lowrank_rank and subspace_dim exclude"),
        ("lowrank_rank = 2\ntop_k_fraction = 0.1\n", "top_k_fraction < 1 and lowrank_rank"),
        ("top_k_fraction = 0.1\nresidual_top_k_fraction = 0.1\n", "does not combine"),
        ('subspace_basis = "global"\n', "needs subspace_dim > 0"),
        ("lowrank_rank = -1\n", "lowrank_rank"),
        ("lowrank_rank = 1.5\n", "lowrank_rank"),
        ('lowrank_rank = "1"\n', "lowrank_rank"),
        ("subspace_dim = 70000\n", "subspace_dim"),
        ("residual_top_k_fraction = 1.0\n", "residual_top_k_fraction"),
        ("residual_top_k_fraction = nan\n", "residual_top_k_fraction"),
        ('values = "int2"\n', "values"),
        ('subspace_basis = "learned"\nsubspace_dim = 4\n', "subspace_basis"),
        ("low_rank = 2\n", "low_rank"),
    ],
)
def test_bad_codec_options_are_refused(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in error(tmp_path, "[fleet.codec]\n" + extra)


@pytest.mark.parametrize(
    "extra",
    [
        'values = "int4"\n',
        "lowrank_rank = 2\n",
        "subspace_dim = 8\n",
        'subspace_dim = 8\nsubspace_basis = "global"\n',
        "residual_top_k_fraction = 0.01\n",
    ],
)
def test_secure_aggregation_refuses_every_format_2_option(tmp_path: Path, extra: str) -> None:
    assert "needs dense int8 updates" in error(tmp_path, "[fleet.codec]\n" + extra + SECURE)
    assert load(tmp_path, SECURE).fleet.secure_aggregation.enabled


@pytest.mark.parametrize(("lowrank", "rank"), [(8, 8), (16, 8), (4, 4)])
def test_lowrank_rank_at_or_above_the_lora_rank_is_refused(
    tmp_path: Path, lowrank: int, rank: int
) -> None:
    """A box could not encode such an update after training; the config says so at once."""
    text = f"[fleet.codec]\nlowrank_rank = {lowrank}\n[training]\nrank = {rank}\n"
    assert f"must be below training.rank = {rank}" in error(tmp_path, text)
    assert load(tmp_path, f"[fleet.codec]\nlowrank_rank = {rank - 1}\n[training]\nrank = {rank}\n")


def test_an_announced_plan_with_lowrank_at_the_lora_rank_is_refused() -> None:
    """Boxes refuse such an announcement on arrival (a malformed plan), not after training."""
    from pydantic import ValidationError

    from tests.federation.plans import training_plan

    plan = training_plan()
    data = plan.model_dump(mode="json")
    data["codec"] = {**data["codec"], "lowrank_rank": plan.lora.rank}
    with pytest.raises(ValidationError, match="not below the LoRA rank"):
        type(plan).model_validate(data)
    data["codec"]["lowrank_rank"] = plan.lora.rank - 1
    assert type(plan).model_validate(data).codec.lowrank_rank == plan.lora.rank - 1
