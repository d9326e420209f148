#!/usr/bin/env bash
# Set everything up, then run the demo: a private Mosquitto, the aggregator and three boxes on
# this machine, three federated rounds on the built-in open model. Extra arguments go to
# `appliance demo` (for example --model tiny for a one-minute run, or --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/appliance demo "$@"
