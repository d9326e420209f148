"""The full package test (packaging/test-in-chroot.sh): build both .debs with lintian, then
install, upgrade over an edited config, remove and purge in a debootstrapped bookworm root.

It needs root and takes minutes (a first run also compiles llama-cpp-python and debootstraps,
about 25 minutes on 2 cores), which does not fit CI's budget: it runs only when asked,
`APPLIANCE_DEB_TEST=1 pytest tests/packaging -m deb`, or directly as `make deb-test`.
The rest of tests/packaging is the fast subset that CI runs.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.deb,
    pytest.mark.skipif(
        os.environ.get("APPLIANCE_DEB_TEST") != "1",
        reason="full .deb build + chroot test: set APPLIANCE_DEB_TEST=1 (or run make deb-test)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root"),
]


@pytest.mark.timeout(3600)
def test_build_install_upgrade_purge_in_a_bookworm_root() -> None:
    done = subprocess.run(
        [str(ROOT / "packaging" / "test-in-chroot.sh")],
        capture_output=True, text=True, check=False, timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert "test-in-chroot: PASS" in done.stderr
