"""A minimal daemon main loop built on DaemonLife, run as a real process by the tests.

argv: CONFIG HANG_FLAG. It loads the config, reports loading and readiness, ticks every
20 ms, hangs (stops ticking) once HANG_FLAG exists, reloads on SIGHUP and exits 0 on SIGTERM.
"""

import logging
import sys
import time
from pathlib import Path

from appliance.config import load_config
from appliance.system.life import DaemonLife


def main(config_path: Path, hang_flag: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    life = DaemonLife()
    life.install_signal_handlers()
    config = load_config(config_path)
    life.loading("loading model", expected_s=30)
    life.ready(f"ready: {config.identity.node_id}")
    turn = 0
    while not life.stopping:
        if hang_flag.exists():
            print("hanging", flush=True)
            time.sleep(3600)
        config = life.take_reload(lambda: load_config(config_path), config)
        turn += 1
        life.tick(f"node {config.identity.node_id}, turn {turn // 50}")
        time.sleep(0.02)
    life.stopping_now("stopping: outbox flushed")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
