#!/usr/bin/env bash
# Set everything up, then show the product: the built-in open model answering on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/appliance model info builtin
.venv/bin/appliance generate --model builtin --seed 1 --max-tokens 48 \
    "A maintenance technician checks a conveyor belt motor that runs hot. The first step is"
