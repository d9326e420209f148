"""`[serve]` in edge.toml: defaults, and the errors `appliance config check` gives."""

import os
from pathlib import Path

import pytest

from appliance.config import EdgeConfig, load_config
from appliance.errors import ConfigError

HEAD = """role = "edge"
[identity]
plant_id = "p"
node_id = "box"
"""


def load(tmp_path: Path, serve: str) -> EdgeConfig:
    path = tmp_path / "edge.toml"
    path.write_text(HEAD + "[serve]\n" + serve)
    config = load_config(path)
    assert isinstance(config, EdgeConfig)
    return config


def test_defaults_are_off_and_local(tmp_path: Path) -> None:
    serve = load(tmp_path, "").serve
    assert not serve.enabled
    assert serve.listen == "127.0.0.1"
    assert serve.token_file is None
    assert serve.contexts == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("enabled = 1\n", "serve.enabled: expected a boolean"),
        ('port = "8080"\n', "serve.port: expected an integer"),
        ("port = 70000\n", "serve.port: must be less than or equal to 65535"),
        ("contexts = 0\n", "serve.contexts: must be greater than or equal to 1"),
        ("max_body_bytes = 10\n", "serve.max_body_bytes: must be greater than or equal to 1024"),
        ("training_resume_after_s = nan\n", "serve.training_resume_after_s: must be a finite"),
        ("rate_limit = 5\n", "serve.rate_limit: unknown key; did you mean"),
        ('listen = ""\n', "serve.listen: must have at least 1 character"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)


def test_token_file_readable_by_others_is_refused_without_showing_the_path(
    tmp_path: Path,
) -> None:
    token = tmp_path / "secret-place.token"
    token.write_text("abc")
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'token_file = "{token}"\n')
    assert "serve.token_file: permissions 0644 are too open" in str(caught.value)
    assert "secret-place" not in str(caught.value)
    os.chmod(token, 0o600)
    assert load(tmp_path, f'token_file = "{token}"\n').serve.token_file is not None
