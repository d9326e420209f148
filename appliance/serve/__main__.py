"""`python -m appliance.serve --config edge.toml`: the inference API alone, without the
daemon's training and federation (for benchmarks, and for boxes that only serve)."""

import sys

from appliance.config import EdgeConfig
from appliance.serve.server import InferenceServer
from appliance.system.daemon import run_part_alone


def main(argv: list[str] | None = None) -> int:
    """Serve `[serve]` of an edge config until SIGTERM or Ctrl-C."""
    return run_part_alone(
        argv,
        "OpenAI-compatible inference API of an edge box, alone",
        EdgeConfig,
        lambda config: InferenceServer(config.serve, config.model),
    )


if __name__ == "__main__":
    sys.exit(main())
