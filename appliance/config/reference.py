"""Write the configuration reference (docs/configuration.md) from the pydantic models.

Generated, so it cannot drift from what `appliance config check` accepts; a test compares
the committed file with a fresh rendering. Regenerate with:
    python -m appliance.config.reference > docs/configuration.md
"""

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Secret
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from appliance.config.roles import AggregatorConfig, EdgeConfig

_HEADER = """\
# Configuration reference

Generated from `appliance/config/` by `python -m appliance.config.reference`; do not edit.

A node reads one TOML file: `/etc/appliance/edge.toml` on a box, `/etc/appliance/aggregator.toml`
on the aggregator (commented examples: `packaging/edge.toml`, `packaging/aggregator.toml`).
Check a file with `appliance config check FILE`: exit 0 when valid, exit 2 with one line per
problem, `FILE: key.path: reason`, otherwise. Unknown keys are errors (a typo never passes
silently) and values must have the right TOML type (`rank = "8"` is an error). Relative paths
are taken from the config file's directory. Key and password files are shown as `**********`
wherever a config is printed or logged.
"""
_TABLE_HEAD = "| key | type | default | meaning |\n|---|---|---|---|\n"
_SCALARS = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "path"}


def render() -> str:
    """The whole reference as Markdown."""
    parts = [_HEADER]
    for title, root in (("Edge box", EdgeConfig), ("Aggregator", AggregatorConfig)):
        parts.append(f'\n## {title} (`role = "{_role(root)}"`)\n')
        parts.extend(_sections(root, prefix=""))
    return "".join(parts)


def _role(root: type[BaseModel]) -> str:
    return str(typing.get_args(root.model_fields["role"].annotation)[0])


def _sections(model: type[BaseModel], prefix: str) -> list[str]:
    name = f"`[{prefix.rstrip('.')}]`" if prefix else "Top-level keys"
    rows = [f"\n### {name}\n\n{_doc(model)}\n\n{_TABLE_HEAD}"]
    nested: list[str] = []
    for key, field in model.model_fields.items():
        sub = _sub_model(field.annotation)
        if sub is not None:
            nested.extend(_sections(sub, f"{prefix}{key}."))
            continue
        cells = (f"`{key}`", _type(field.annotation), _default(field), _text(field))
        rows.append("| " + " | ".join(cells) + " |\n")
    return ([] if len(rows) == 1 and prefix else rows) + nested


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _text(field: FieldInfo) -> str:
    return (field.description or "").replace("|", "\\|").replace("\n", " ")


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(f'`"{a}"`' for a in args)
    if origin in (types.UnionType, typing.Union):
        present = [a for a in args if a is not type(None)]
        return " or ".join(_type(a) for a in present) + " (optional)"
    if origin is list:
        return f"array of {_type(args[0])}"
    if origin is Secret or annotation is Secret:
        return "path (secret)"
    return _SCALARS.get(annotation, str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Secret):  # a default key file's path is documentation, not a secret
        value = value.get_secret_value()
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f'`"{value}"`' if isinstance(value, str | Path) else f"`{value}`"


if __name__ == "__main__":
    print(render(), end="")
