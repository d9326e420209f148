"""Config files: valid ones load, every invalid one fails with `FILE: key.path: reason`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import AggregatorConfig, EdgeConfig, load_config
from appliance.config.loading import MAX_CONFIG_BYTES
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EDGE_HEAD = 'role = "edge"\n[identity]\nplant_id = "plant1"\nnode_id = "box-01"\n'
AGG_HEAD = 'role = "aggregator"\n[identity]\nplant_id = "plant1"\nnode_id = "agg"\n'


def write(tmp_path: Path, text: str | bytes, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


# -- valid files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["edge.toml", "aggregator.toml"])
def test_shipped_example_files_are_valid(name: str) -> None:
    config = load_config(REPO / "packaging" / name)
    assert config.role == name.removesuffix(".toml")


def test_minimal_edge_file_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EDGE_HEAD))
    assert isinstance(config, EdgeConfig)
    assert config.training.rank == 8
    assert config.training.targets == ["attn_q", "attn_v"]
    assert config.model.path == "builtin"
    assert "apache-2.0" in config.model.allowed_licenses


def test_minimal_aggregator_file_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, AGG_HEAD, "aggregator.toml"))
    assert isinstance(config, AggregatorConfig)
    assert config.rounds.min_updates == 2


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    sub = tmp_path / "etc"
    sub.mkdir()
    text = EDGE_HEAD + 'trust_dir = "trust"\n[model]\npath = "../models/m.gguf"\n'
    config = load_config(write(sub, text))
    assert config.identity.trust_dir == sub / "trust"
    assert Path(config.model.path).resolve() == (tmp_path / "models" / "m.gguf").resolve()


def test_licences_are_compared_in_lower_case(tmp_path: Path) -> None:
    text = EDGE_HEAD + '[model]\nallowed_licenses = [" Apache-2.0", "MIT"]\n'
    assert load_config(write(tmp_path, text)).model.allowed_licenses == ["apache-2.0", "mit"]


def test_mutual_tls_with_private_key_0600_is_valid(tmp_path: Path) -> None:
    key = tmp_path / "box.key"
    key.write_text("secret")
    key.chmod(0o600)
    text = EDGE_HEAD + (
        '[mqtt]\nport = 8883\n[mqtt.tls]\nca_file = "ca.pem"\ncert_file = "box.pem"\n'
        'key_file = "box.key"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.key_file is not None
    assert config.mqtt.tls.key_file.get_secret_value() == key


def test_secret_paths_never_appear_when_the_config_is_printed(tmp_path: Path) -> None:
    text = EDGE_HEAD.replace(
        'node_id = "box-01"\n', 'node_id = "box-01"\nprivate_key_file = "/k/very-secret.key"\n'
    )
    config = load_config(write(tmp_path, text))
    assert "very-secret" not in repr(config)
    assert "very-secret" not in json.dumps(config.model_dump(mode="json"))
    assert config.identity.private_key_file.get_secret_value() == Path("/k/very-secret.key")


# -- the file itself ----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: file does not exist"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a config file"


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, EDGE_HEAD + "[training]\nrank 8\n")
    assert error_of(path).startswith(f"{path}: invalid TOML: ")
    assert "line 6" in error_of(path)


def test_truncated_file_is_invalid_toml(tmp_path: Path) -> None:
    full = (REPO / "packaging" / "edge.toml").read_text()
    path = write(tmp_path, full[: full.index('"builtin"') + 4])
    assert "invalid TOML" in error_of(path)


def test_binary_garbage_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"role = \xff\xfe\n")
    assert error_of(path) == f"{path}: not UTF-8 text (invalid byte at offset 7)"


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert "file is too large" in error_of(path)


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = write(tmp_path, EDGE_HEAD)
    path.chmod(0)
    assert "permission denied" in error_of(path)


# -- role --------------------------------------------------------------------------------------


def test_role_missing(tmp_path: Path) -> None:
    path = write(tmp_path, '[identity]\nplant_id = "p"\nnode_id = "n"\n')
    assert error_of(path) == (
        f'{path}: role: required key is missing (expected "edge" or "aggregator")'
    )


def test_role_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "router"\n')
    assert error_of(path) == f'{path}: role: must be "edge" or "aggregator" (got \'router\')'


def test_aggregator_section_in_an_edge_file_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, EDGE_HEAD + "[rounds]\nmin_updates = 3\n")
    assert f"{path}: rounds: unknown key" in error_of(path)


# -- keys and values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[training]\nrank = 3\n",
            "training.rank: must be a power of two between 1 and 256 (got 3)",
        ),
        (
            "[training]\nrank = 512\n",
            "training.rank: must be a power of two between 1 and 256 (got 512)",
        ),
        (
            "[training]\nrank = 0\n",
            "training.rank: must be a power of two between 1 and 256 (got 0)",
        ),
        ('[training]\nrank = "8"\n', "training.rank: expected an integer (got a string '8')"),
        ("[training]\ngpu_layers = -1\n", "training.gpu_layers"),
        ('[training]\ngpu_layers = "all"\n', "training.gpu_layers"),
        ("[training]\nrank = 8.0\n", "training.rank: expected an integer (got a float 8.0)"),
        ("[training]\nlearning_rate = nan\n", "training.learning_rate: must be a finite number"),
        ("[training]\nalpha = inf\n", "training.alpha: must be a finite number"),
        (
            "[training]\nlearning_rate = -0.1\n",
            "training.learning_rate: must be greater than 0 (got -0.1)",
        ),
        (
            '[training]\noptimizer = "adam"\n',
            "training.optimizer: must be 'adamw' or 'sgd' (got 'adam')",
        ),
        (
            "[training]\nwindow_tokens = 300\n",
            "training.window_tokens: must be a positive multiple of 256 up to 8192 (got 300)",
        ),
        (
            "[training]\nstride_tokens = 512\n",
            "training: stride_tokens (512) must not exceed window_tokens (256): tokens between windows would never be trained on\n",
        ),
        (
            "[training]\ntargets = []\n",
            "training.targets: must have at least 1 item after validation, not 0 (got [])",
        ),
        ('[training]\ntargets = ["attn_q", "attn_q"]\n', "training.targets: lists a target twice"),
        (
            '[training]\ntargets = ["attn_q", 7]\n',
            "training.targets.1: expected a string (got an integer 7)",
        ),
        (
            '[training]\ntargets = ["blk.0.attn_q"]\n',
            "training.targets: not a weight name inside a block (got 'blk.0.attn_q')",
        ),
        (
            "[training]\nvalidation_fraction = 0.9\n",
            "training.validation_fraction: must be less than or equal to 0.5 (got 0.9)",
        ),
        ("[training]\nrnak = 8\n", "training.rnak: unknown key; did you mean 'rank'?"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be less than or equal to 65535 (got 70000)"),
        ("[mqtt]\nport = -1\n", "mqtt.port: must be greater than or equal to 1 (got -1)"),
        (
            '[mqtt.tls]\nca_file = "ca.pem"\ncert_file = "c.pem"\n',
            "mqtt.tls: cert_file and key_file must be given together for mutual TLS\n",
        ),
        (
            "[model]\nallow_unlisted_license = 1\n",
            "model.allow_unlisted_license: expected a boolean (got an integer 1)",
        ),
        ('[model]\npath = "missing.gguf"\n', "model.path: file does not exist: "),
        (
            "[model]\nallowed_licenses = []\n",
            "model.allowed_licenses: must have at least 1 item after validation, not 0 (got [])",
        ),
        (
            '[logging]\nlevel = "verbose"\n',
            "logging.level: must be 'debug', 'info', 'warning' or 'error' (got 'verbose')",
        ),
        ("colour = 1\n", "identity.colour: unknown key (known keys: node_id, plant_id"),
    ],
)
def test_invalid_edge_values(tmp_path: Path, extra: str, expected: str) -> None:
    path = write(tmp_path, EDGE_HEAD + extra)
    message = error_of(path) + "\n"
    assert message.startswith(f"{path}: ")
    assert expected in message, message


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ("training = 5\n", "training: expected a table (got an integer 5)"),
        ("colour = 1\n", "colour: unknown key"),
        ("identiti = 1\n", "identiti: unknown key; did you mean 'identity'?"),
    ],
)
def test_invalid_top_level_keys(tmp_path: Path, top: str, expected: str) -> None:
    path = write(tmp_path, 'role = "edge"\n' + top + EDGE_HEAD.removeprefix('role = "edge"\n'))
    assert f"{path}: {expected}" in error_of(path)


@pytest.mark.parametrize("bad_id", ["plant/1", "plant+", "#", "", "a" * 65])
def test_plant_id_must_be_topic_safe(tmp_path: Path, bad_id: str) -> None:
    path = write(tmp_path, EDGE_HEAD.replace('"plant1"', json.dumps(bad_id)))
    assert f"{path}: identity.plant_id: must be 1 to 64 letters, digits" in error_of(path)
    assert f"(got {bad_id!r})" in error_of(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "edge"\n[identity]\nplant_id = "p"\n')
    assert error_of(path) == f"{path}: identity.node_id: required key is missing"


def test_missing_required_section(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "aggregator"\n')
    assert error_of(path) == f"{path}: identity: required key is missing"


def test_every_error_in_a_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, EDGE_HEAD + "[training]\nrank = 3\nepochs = 0\n[mqtt]\nport = 0\n")
    lines = error_of(path).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "training.rank",
        "training.epochs",
        "mqtt.port",
    ]


def test_aggregator_deadline_minimum_cannot_exceed_minimum(tmp_path: Path) -> None:
    path = write(tmp_path, AGG_HEAD + "[rounds]\nmin_updates = 2\nmin_updates_at_deadline = 3\n")
    assert "min_updates_at_deadline (3) must not exceed min_updates (2)" in error_of(path)


def test_key_file_readable_by_others_is_refused_without_showing_its_path(tmp_path: Path) -> None:
    key = tmp_path / "hidden-name.key"
    key.write_text("secret")
    key.chmod(0o644)
    text = EDGE_HEAD.replace(
        'node_id = "box-01"\n', f'node_id = "box-01"\nprivate_key_file = "{key}"\n'
    )
    message = error_of(write(tmp_path, text))
    assert "identity.private_key_file: permissions 0644 are too open" in message
    assert "hidden-name" not in message


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    text = EDGE_HEAD.replace(
        'node_id = "box-01"\n', f'node_id = "box-01"\nprivate_key_file = "{tmp_path}"\n'
    )
    message = error_of(write(tmp_path, text))
    assert "identity.private_key_file: must be a file, not a directory" in message
    assert str(tmp_path) not in message.split(": ", 1)[1]


def test_wrong_type_for_a_secret_does_not_echo_it(tmp_path: Path) -> None:
    text = EDGE_HEAD + "[mqtt]\npassword_file = 12345\n"
    message = error_of(write(tmp_path, text))
    assert "mqtt.password_file" in message
    assert "12345" not in message


# -- the command ------------------------------------------------------------------------------


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_command_exit_0_for_a_valid_file() -> None:
    result = run_check(str(REPO / "packaging" / "edge.toml"))
    assert result.returncode == 0, result.stderr
    assert "valid edge configuration" in result.stdout


def test_check_command_exit_2_and_the_reason(tmp_path: Path) -> None:
    path = write(tmp_path, EDGE_HEAD + "[training]\nrank = 3\n")
    result = run_check(str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"appliance: error: {path}: training.rank: must be a power of two between 1 and 256 (got 3)"
    )


def test_check_command_exit_2_for_a_missing_file(tmp_path: Path) -> None:
    result = run_check(str(tmp_path / "edge.toml"))
    assert result.returncode == 2
    assert "edge.toml: file does not exist" in result.stderr


def test_check_command_json_prints_the_effective_config_without_secrets() -> None:
    result = run_check(str(REPO / "packaging" / "aggregator.toml"), "--json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["role"] == "aggregator"
    assert config["rounds"]["min_updates"] == 2
    assert config["identity"]["private_key_file"] == "**********"


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated; regenerate it when a config model changes."""
    from appliance.config.reference import render

    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), (
        "docs/configuration.md is stale: run "
        "python -m appliance.config.reference > docs/configuration.md"
    )
