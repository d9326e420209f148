"""Reading the shipped unit files, and copies of them runnable on a development machine."""

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS_DIR = ROOT / "packaging" / "systemd"
UNITS = sorted(p.name for p in UNITS_DIR.iterdir() if p.suffix in {".service", ".timer"})
DAEMONS = ("appliance-edge.service", "appliance-aggregator.service")


def settings(name: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys included."""
    section, out = "", []
    for raw in (UNITS_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match.group(1)
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def value(name: str, key: str) -> str:
    """The last value of `key` (what systemd uses for a single-valued setting)."""
    values = [v for _, k, v in settings(name) if k == key]
    assert values, f"{name} has no {key}="
    return values[-1]


def local_copy(name: str, target: Path) -> Path:
    """The unit with its installed paths pointing at this checkout, so that systemd-analyze
    finds the executables (it checks that they exist)."""
    appliance = shutil.which("appliance") or str(Path(sys.executable).parent / "appliance")
    text = (UNITS_DIR / name).read_text()
    text = text.replace("/usr/bin/appliance", appliance)
    text = text.replace("/usr/lib/appliance/venv/bin/python3", sys.executable)
    text = text.replace("/usr/lib/appliance/firmware_scripts", str(ROOT / "firmware_scripts"))
    target.mkdir(parents=True, exist_ok=True)
    path = target / name
    path.write_text(text)
    return path
