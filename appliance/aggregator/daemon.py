"""`appliance aggregator run`: the aggregator's main loop under systemd (or in a terminal)."""

import logging
import time
from pathlib import Path

from appliance.aggregator.service import AggregatorService
from appliance.config import AggregatorConfig, load_config
from appliance.errors import ConfigError
from appliance.system.life import DaemonLife
from appliance.system.logs import setup_logging

log = logging.getLogger(__name__)
STEP_S = 0.2


def run(config_path: Path) -> int:
    """Run until SIGTERM; exit status 0 after a clean stop."""
    config = _load(config_path)
    setup_logging(config.logging.level, config.logging.llama_level)
    life = DaemonLife()
    life.install_signal_handlers()
    life.loading("reading the base model and round state", expected_s=60)
    service = AggregatorService(config)
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
        life.stopping_now("stopping: round state is on disk")
        service.stop()
    return 0


def _load(path: Path) -> AggregatorConfig:
    config = load_config(path)
    if not isinstance(config, AggregatorConfig):
        raise ConfigError(f'{path}: role: must be "aggregator" for `appliance aggregator run`')
    return config
