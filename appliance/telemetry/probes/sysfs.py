"""Reading sysfs/procfs files under an injectable root, collecting errors instead of raising."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1 << 20
"""Sysfs attributes are tiny; anything this large is not the file we expect."""


class Tree:
    """A filesystem root (`/` on a box, a recorded tree in tests) and the errors met in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.errors: list[str] = []

    def path(self, absolute: str) -> Path:
        """`absolute` (like `/sys/class/hwmon`) inside this root."""
        return self.root / absolute.lstrip("/")

    def text(self, path: Path) -> str | None:
        """The stripped content of `path`; None when missing or unreadable (then noted)."""
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.note(path, exc.strerror or type(exc).__name__)
            return None
        if len(data) > MAX_FILE_BYTES:
            self.note(path, f"larger than {MAX_FILE_BYTES} bytes")
            return None
        try:
            return data.decode().strip()
        except UnicodeDecodeError:
            self.note(path, "not UTF-8 text")
            return None

    def integer(self, path: Path) -> int | None:
        """An integer attribute (`temp1_input` is millidegrees, for example)."""
        value: int | None = self._parse(path, int, "not an integer")
        return value

    def _parse(self, path: Path, kind: Callable[[str], Any], reason: str) -> Any:
        raw = self.text(path)
        if raw is None:
            return None
        try:
            return kind(raw)
        except ValueError:
            self.note(path, f"{reason}: {raw[:40]!r}")
            return None

    def children(self, directory: Path, pattern: str) -> list[Path]:
        """Entries of `directory` matching `pattern`, in natural order; [] if it is missing."""
        try:
            found = list(directory.glob(pattern))
        except OSError as exc:
            self.note(directory, exc.strerror or type(exc).__name__)
            return []
        return sorted(found, key=_natural)

    def note(self, path: Path, reason: str) -> None:
        shown = "/" + str(path.relative_to(self.root)) if path.is_relative_to(self.root) else path
        self.errors.append(f"{shown}: {reason}")


def _natural(path: Path) -> tuple[Any, ...]:
    """`hwmon10` after `hwmon2`: split the name into text and number parts."""
    parts: list[Any] = []
    digits = ""
    for char in path.name + "\0":
        if char.isdigit():
            digits += char
            continue
        if digits:
            parts.append((1, int(digits)))
            digits = ""
        parts.append((0, char))
    return tuple(parts)


def probe_main(
    name: str,
    read: Callable[[argparse.Namespace], dict[str, Any]],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Shared `main` of the firmware scripts: parse `--root`, print one JSON object."""
    parser = argparse.ArgumentParser(description=f"Print the {name} probe's reading as JSON.")
    parser.add_argument("--root", type=Path, default=Path("/"), help="filesystem root to read")
    if add_arguments is not None:
        add_arguments(parser)
    reading = read(parser.parse_args())
    json.dump(reading, sys.stdout, separators=(",", ":"), allow_nan=False)
    sys.stdout.write("\n")
    return 0
