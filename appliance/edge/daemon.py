"""`appliance edge run`: the box's main loop under systemd (or in a terminal)."""

import logging
import time
from pathlib import Path

from appliance.config import EdgeConfig, load_config
from appliance.edge.service import EdgeService
from appliance.errors import ConfigError
from appliance.system.life import DaemonLife
from appliance.system.logs import setup_logging

log = logging.getLogger(__name__)
STEP_S = 0.2


def run(config_path: Path) -> int:
    """Run until SIGTERM; exit status 0 after a clean stop (training stopped at a step)."""
    config = _load(config_path)
    setup_logging(config.logging.level, config.logging.llama_level)
    life = DaemonLife()
    life.install_signal_handlers()
    life.loading("loading the model", expected_s=120)
    service = EdgeService(config)
    service.start()
    life.ready(service.status())
    try:
        while not life.stopping:
            fresh = life.take_reload(lambda: _load(config_path), config)
            if fresh is not config:
                config = service.config = fresh
                setup_logging(config.logging.level, config.logging.llama_level)
            life.tick(service.step())
            time.sleep(STEP_S)
    finally:
        life.stopping_now("stopping: finishing the training step, flushing state")
        service.stop()
    return 0


def _load(path: Path) -> EdgeConfig:
    config = load_config(path)
    if not isinstance(config, EdgeConfig):
        raise ConfigError(f'{path}: role: must be "edge" for `appliance edge run`')
    return config
