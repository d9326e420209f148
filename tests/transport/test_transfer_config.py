"""The `[outbox]` and `[transfer]` sections through the real config loader."""

from pathlib import Path

import pytest

from appliance.config import EdgeConfig, load_config
from appliance.errors import ConfigError

HEAD = 'role = "edge"\n[identity]\nplant_id = "plant1"\nnode_id = "box-01"\n'


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(HEAD + body)
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, "[outbox]\nmax_mb = 64\n[transfer]\nrequest_after_s = 2\n")
    )
    assert isinstance(config, EdgeConfig)
    assert config.outbox.max_mb == 64
    assert config.outbox.max_age_s == 7 * 24 * 3600
    assert config.transfer.request_after_s == 2
    assert config.transfer.max_artifact_mb == 512


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[outbox]\nmax_mb = "64"\n', "outbox.max_mb: expected an integer"),
        ("[outbox]\nmax_mb = 0\n", "outbox.max_mb:"),
        ("[transfer]\nchunk_window = 0\n", "transfer.chunk_window:"),
        ("[transfer]\nrequest_after = 5\n", "did you mean 'request_after_s'?"),
        ("[transfer]\nmax_artifact_mb = nan\n", "transfer.max_artifact_mb: expected an integer"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, body))
    assert message in str(caught.value)
