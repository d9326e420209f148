"""Open a page in headless Chromium (no network, fresh profile): its DOM, console, screenshot."""

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=15000",
)
_CONSOLE = re.compile(r":CONSOLE:\d+\] (.*)")


@dataclass(frozen=True)
class Visit:
    """What Chromium made of a page."""

    dom: str
    console: list[str]


def chromium() -> str:
    """The browser binary; the set-up script installs the Debian package `chromium`."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed (scripts/setup.sh installs it)"
    return path


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def visit(page: Path, profile: Path) -> Visit:
    """The DOM after scripts ran, and every console message the page produced."""
    result = _run(page, profile, "--dump-dom")
    return Visit(result.stdout, _CONSOLE.findall(result.stderr))


def screenshot(page: Path, profile: Path, out: Path) -> Path:
    """A PNG of the whole report."""
    _run(page, profile, f"--screenshot={out}", "--window-size=1280,4200")
    assert out.exists() and out.stat().st_size > 0
    return out
