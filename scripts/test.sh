#!/usr/bin/env bash
# Set everything up, then run the linter, the type checker (mypy strict, pyproject.toml) and
# the whole test suite.
# pytest's exit code 5 (no tests collected) is a failure here, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy appliance
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$status"
