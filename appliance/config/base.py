"""Shared pieces of every config section: the strict base model and path types.

Every section forbids unknown keys (a typo fails loudly instead of being ignored) and is
strict about TOML types (`rank = "8"` is an error, not a silent conversion). Relative paths
are resolved against the directory of the config file that names them, so a file means the
same thing whatever the current directory of the process reading it.
"""

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Secret, ValidationInfo

BUILTIN_MODEL = "builtin"
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Section(BaseModel):
    """Base of every config section: strict, closed, immutable once loaded."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        validate_default=True,
    )


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def _as_path(value: Any, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        raw = value
    elif isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        raw = Path(os.path.expanduser(value))
    else:
        raise ValueError(f"expected a path string (got {type(value).__name__})")
    return raw if raw.is_absolute() else _base_dir(info) / raw


def _as_secret_file(value: Any, info: ValidationInfo) -> Path:
    """Resolve a key file path; errors never include the path itself."""
    if isinstance(value, Secret):
        value = value.get_secret_value()
    path = _as_path(value, info)
    if path.is_dir():
        raise ValueError("must be a file, not a directory")
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(
                f"permissions {mode:04o} are too open for a key file; run chmod 600 on it"
            )
    return path


def _topic_safe(value: str) -> str:
    if not _TOPIC_SAFE.fullmatch(value):
        raise ValueError(
            "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            f"(MQTT topic levels cannot hold '+', '#' or '/') (got {value!r})"
        )
    return value


TopicSafeId = Annotated[str, AfterValidator(_topic_safe)]
"""A name that is safe as one MQTT topic level and as a Sparkplug id."""

ConfigPath = Annotated[Path, BeforeValidator(_as_path)]
"""A path; relative ones are taken from the config file's directory."""

SecretFile = Annotated[Secret[Path], BeforeValidator(_as_secret_file)]
"""A key file: may be absent (created on first start), must not be readable by others,
and is shown as '**********' wherever the config is printed or logged."""


def existing_file(path: Path) -> Path:
    """Require that `path` names a readable regular file."""
    if not path.exists():
        raise ValueError(f"file does not exist: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file is not readable: {path}")
    return path
