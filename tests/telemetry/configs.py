"""Edge and aggregator config files for telemetry tests and test processes."""

import shutil
from pathlib import Path

from appliance.config.loading import load_config
from appliance.config.roles import AggregatorConfig, EdgeConfig
from tests.telemetry.conftest import GROUP


def edge_config(
    directory: Path, port: int, node_id: str, tree: Path, extra: str = ""
) -> tuple[Path, EdgeConfig]:
    """A box reading a copy of `tree` as its root, reporting to the broker on `port`.

    Its state directory is the copy's `/var/lib/appliance`, so the disks probe measures it.
    """
    root = directory / f"{node_id}-root"
    shutil.copytree(tree, root, symlinks=True)
    state = root / "var/lib/appliance"
    (state / "keys").mkdir(parents=True, exist_ok=True)
    path = directory / f"{node_id}.toml"
    path.write_text(
        f"""role = "edge"
[identity]
plant_id = "{GROUP}"
node_id = "{node_id}"
private_key_file = "{state}/keys/node.key"
trust_dir = "{state}/trust"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_max_delay_s = 1
[paths]
state_dir = "{state}"
spool_dir = "{state}/spool"
[health]
root_dir = "{root}"
probe_interval_s = 3600
{extra}
"""
    )
    config = load_config(path)
    assert isinstance(config, EdgeConfig)
    return path, config


def aggregator_config(directory: Path, port: int, extra: str = "") -> tuple[Path, AggregatorConfig]:
    state = directory / "aggregator"
    (state / "keys").mkdir(parents=True, exist_ok=True)
    path = directory / "aggregator.toml"
    path.write_text(
        f"""role = "aggregator"
[identity]
plant_id = "{GROUP}"
node_id = "aggregator"
private_key_file = "{state}/keys/node.key"
trust_dir = "{state}/trust"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_max_delay_s = 1
[paths]
state_dir = "{state}"
[health]
host_id = "scada"
{extra}
"""
    )
    config = load_config(path)
    assert isinstance(config, AggregatorConfig)
    return path, config
