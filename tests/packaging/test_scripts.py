"""Shell scripts of the package: shellcheck-clean, and the maintainer scripts follow the
rules their behaviour in the chroot test depends on (full run: packaging/test-in-chroot.sh)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "packaging" / "debian"
MAINTAINER = ["postinst", "prerm", "postrm"]
POSIX = [DEBIAN / n for n in MAINTAINER] + [
    ROOT / "firmware_scripts" / "provision-identity",
    ROOT / "firmware_scripts" / "plant-ca-sign",
]
BASH = [
    ROOT / "packaging" / "build-deb.sh",
    ROOT / "packaging" / "test-in-chroot.sh",
    ROOT / "packaging" / "trim-venv.sh",
]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing")
@pytest.mark.parametrize("script", POSIX + BASH, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shell = ["-s", "sh"] if script in POSIX else []
    done = subprocess.run(
        ["shellcheck", *shell, str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("script", POSIX + BASH, ids=lambda p: p.name)
def test_executable_with_a_shebang_and_valid_syntax(script: Path) -> None:
    assert script.stat().st_mode & 0o111
    first = script.read_text().splitlines()[0]
    assert first in ("#!/bin/sh", "#!/usr/bin/env bash")
    shell = "sh" if first == "#!/bin/sh" else "bash"
    subprocess.run([shell, "-n", str(script)], check=True)


@pytest.mark.parametrize("name", MAINTAINER)
def test_maintainer_scripts_fail_fast_and_end_cleanly(name: str) -> None:
    text = (DEBIAN / name).read_text()
    assert "\nset -e\n" in text
    assert text.rstrip().endswith("exit 0")
    assert 'case "$1" in' in text
    # dpkg runs them non-interactively: nothing may read from the terminal
    assert not re.search(r"\bread\b|debconf|whiptail", text)


def test_postinst_creates_the_config_only_when_missing() -> None:
    text = (DEBIAN / "postinst").read_text()
    writes = [line for line in text.splitlines() if "/etc/appliance/edge.toml" in line
              and ("install " in line or "cp " in line or ">" in line)]
    assert writes == [
        "            install -m 0644 /usr/share/appliance/edge.toml /etc/appliance/edge.toml"
    ]
    guard = text.index('if [ -e /etc/appliance/edge.toml ]; then')
    assert guard < text.index(writes[0].strip())
    assert "adduser --system --group" in text


def test_postrm_purges_config_state_and_systemd_helper_state() -> None:
    text = (DEBIAN / "postrm").read_text()
    purge = text[text.index("    purge)"):]
    assert "rm -rf /etc/appliance /var/lib/appliance /var/log/appliance /run/appliance" in purge
    assert 'deb-systemd-helper purge "$unit"' in purge
    units = re.search(r'UNITS="([^"]+)"', text)
    assert units and set(units.group(1).split()) == {
        "appliance-edge.service", "appliance-aggregator.service", "appliance-smart.timer"
    }
    assert re.search(r'UNITS="([^"]+)"', (DEBIAN / "postinst").read_text()).group(1) == units.group(1)


def test_no_conffiles_so_upgrades_never_prompt() -> None:
    """Defaults live in /usr/share/appliance; /etc/appliance/edge.toml belongs to the admin."""
    build = (ROOT / "packaging" / "build-deb.sh").read_text()
    assert "conffiles" not in build
    assert '"$PKG/etc' not in build and "$PKG/etc" not in build
