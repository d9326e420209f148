"""Read a config file and turn every failure into one line: `FILE: key.path: reason`.

Operators fix config files by reading these lines, so each names the file, the exact key
and what was expected, and never prints a secret (key files are shown as the key name only).
"""

import difflib
import tomllib
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from appliance.config.roles import ROLES, NodeConfig
from appliance.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024

_TOML_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "tuple_type": "an array",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
}


def load_config(path: Path | str) -> NodeConfig:
    """Load and validate an edge or aggregator config file; raise `ConfigError` if invalid."""
    path = Path(path)
    data = _read_toml(path)
    role = data.get("role")
    if role is None:
        _fail(path, 'role: required key is missing (expected "edge" or "aggregator")')
    if role not in ROLES:
        _fail(path, f'role: must be "edge" or "aggregator" (got {_show(role)})')
    model = ROLES[role]
    try:
        return model.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        lines = [f"{path}: {_describe(model, err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        _fail(path, "file does not exist")
    except IsADirectoryError:
        _fail(path, "is a directory, not a config file")
    except PermissionError:
        _fail(path, "permission denied (is the daemon's user allowed to read it?)")
    except OSError as exc:
        _fail(path, f"cannot be read: {exc.strerror}")
    if len(raw) > MAX_CONFIG_BYTES:
        _fail(path, f"file is too large ({len(raw)} bytes; the limit is {MAX_CONFIG_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(path, f"not UTF-8 text (invalid byte at offset {exc.start})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        _fail(path, f"invalid TOML: {exc}")


def _fail(path: Path, reason: str) -> NoReturn:
    raise ConfigError(f"{path}: {reason}")


def _describe(root: type[BaseModel], err: ErrorDetails) -> str:
    loc = tuple(str(part) for part in err["loc"] if not str(part).startswith("function-"))
    key = ".".join(loc) if loc else "(top level)"
    field = _field_at(root, loc)
    secret = field is not None and "Secret" in repr(field.annotation)
    return f"{key}: {_reason(root, loc, err, show_input=not secret)}"


def _reason(
    root: type[BaseModel], loc: tuple[str, ...], err: ErrorDetails, show_input: bool
) -> str:
    kind, given = err["type"], err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key(root, loc)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]} (got {_toml_type(given)})"
    if kind == "finite_number":
        return "must be a finite number (got nan or inf)"
    message = err["msg"].removeprefix("Value error, ")
    for pydantic_words in ("Input should", "List should", "String should"):
        message = message.replace(pydantic_words, "must")
    if show_input and "(got" not in message and not isinstance(given, dict):
        message += f" (got {_show(given)})"
    return message


def _unknown_key(root: type[BaseModel], loc: tuple[str, ...]) -> str:
    parent = _model_at(root, loc[:-1])
    known = sorted(parent.model_fields) if parent else []
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (known keys: {', '.join(known)})"


def _model_at(root: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        field = model.model_fields.get(part) if model else None
        model = _sub_model(field) if field else None
    return model


def _field_at(root: type[BaseModel], loc: tuple[str, ...]) -> FieldInfo | None:
    parent = _model_at(root, loc[:-1]) if loc else None
    return parent.model_fields.get(loc[-1]) if parent else None


def _sub_model(field: FieldInfo) -> type[BaseModel] | None:
    candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _toml_type(value: Any) -> str:
    name = _TOML_TYPE_NAMES.get(type(value), type(value).__name__)
    return f"{name} {_show(value)}" if isinstance(value, int | float | str) else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
