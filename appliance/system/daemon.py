"""The main loop every daemon shares: load, ready, tick until SIGTERM, reload on SIGHUP.

A service is anything with `start()`, `step() -> status line`, `stop()` and a `config`
attribute; the edge and aggregator daemons differ only in the service they run.
"""

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from appliance.config import AggregatorConfig, EdgeConfig, load_config
from appliance.errors import ConfigError
from appliance.system.journal import set_fields
from appliance.system.life import DaemonLife
from appliance.system.logs import setup_logging

STEP_S = 0.2
C = TypeVar("C", EdgeConfig, AggregatorConfig)


class Service(Protocol[C]):
    """What a daemon runs."""

    config: C

    def start(self) -> None: ...
    def step(self) -> str: ...
    def stop(self) -> None: ...


def run_daemon(
    config_path: Path, role: type[C], make: Callable[[C], Service[C]], loading: str
) -> int:
    """Run `make(config)` until SIGTERM; exit status 0 after a clean stop."""
    config = load_role(config_path, role)
    setup_logging(config.logging.level, config.logging.llama_level)
    set_identity_fields(config)
    life = DaemonLife()
    life.install_signal_handlers()
    life.loading(loading, expected_s=120)
    service = make(config)
    service.start()
    life.ready(service.step())
    try:
        while not life.stopping:
            fresh = life.take_reload(lambda: load_role(config_path, role), config)
            if fresh is not config:
                config = service.config = fresh
                setup_logging(config.logging.level, config.logging.llama_level)
                set_identity_fields(config)
            life.tick(service.step())
            time.sleep(STEP_S)
    finally:
        life.stopping_now("stopping: finishing the current step, state is on disk")
        service.stop()
    return 0


def set_identity_fields(config: EdgeConfig | AggregatorConfig) -> None:
    """Journal fields of every line: `journalctl BOX_ID=box-07`, `PLANT_ID=`, `ROLE=`."""
    node = config.identity.node_id
    set_fields(
        NODE_ID=node,
        PLANT_ID=config.identity.plant_id,
        ROLE=config.role,
        BOX_ID=node if config.role == "edge" else None,
    )


def load_role(path: Path, role: type[C]) -> C:
    """Load a config file that must be of the given role."""
    config = load_config(path)
    if not isinstance(config, role):
        wanted = "edge" if role is EdgeConfig else "aggregator"
        raise ConfigError(f'{path}: role: must be "{wanted}" for this command')
    return config


class Part(Protocol):
    """A piece that runs on its own threads between `start()` and `stop()`."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_part_alone(
    argv: Sequence[str] | None, description: str, role: type[C], make: Callable[[C], Part]
) -> int:
    """`python -m ...` entry point of one part of a daemon: `--config FILE`, run until
    SIGTERM or Ctrl-C (for running it on its own and for tests that kill it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path, help="config file (TOML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging("debug" if args.verbose else "info")
    try:
        config = load_role(args.config, role)
    except ConfigError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    part = make(config)
    stopped = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda _signum, _frame: stopped.set())
    part.start()
    stopped.wait()
    part.stop()
    return 0
