"""The failpoint switch: off unless armed, loud on typos, fires on the named hit only."""

import os
import subprocess
import sys

import pytest

from appliance.system.failpoints import ENVIRONMENT, EXIT_STATUS, FailpointError, parse


def run_with(armed: str, code: str) -> subprocess.CompletedProcess[str]:
    """Python code in a fresh process with the failpoints armed (they are read at import)."""
    return subprocess.run(
        [sys.executable, "-c", f"from appliance.system.failpoints import failpoint\n{code}"],
        env={**os.environ, ENVIRONMENT: armed},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nothing_fires_when_nothing_is_armed() -> None:
    result = run_with("", "failpoint('edge.update_queued'); print('went on')")
    assert result.returncode == 0 and result.stdout.strip() == "went on"


def test_kill_sends_sigkill_to_the_process_at_the_point() -> None:
    result = run_with(
        "edge.update_queued=kill", "print('before', flush=True); failpoint('edge.update_queued')"
    )
    assert result.returncode == -9
    assert result.stdout.strip() == "before"
    assert "failpoint edge.update_queued fired (kill)" in result.stderr


def test_exit_at_the_second_hit_only() -> None:
    code = "for i in range(3):\n    print(i, flush=True); failpoint('edge.training')"
    result = run_with("edge.training=exit@2", code)
    assert result.returncode == EXIT_STATUS
    assert result.stdout.split() == ["0", "1"]


def test_an_armed_point_elsewhere_does_not_fire_here() -> None:
    result = run_with("edge.training=kill", "failpoint('edge.update_queued'); print('ok')")
    assert result.returncode == 0 and "ok" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aggregator.no_such_step=kill", "unknown failpoint 'aggregator.no_such_step'"),
        ("edge.training=panic", "action must be kill or exit"),
        ("edge.training", "action must be kill or exit"),
        ("edge.training=kill@0", "positive number"),
        ("edge.training=kill@x", "positive number"),
    ],
)
def test_a_typo_is_refused_loudly(text: str, message: str) -> None:
    with pytest.raises(FailpointError, match=message):
        parse(text)


def test_a_daemon_started_with_a_bad_failpoint_fails_at_import() -> None:
    result = run_with("aggregator.no_such_step=kill", "pass")
    assert result.returncode == 1
    assert "unknown failpoint 'aggregator.no_such_step'" in result.stderr


def test_calling_an_undeclared_point_is_a_programming_error() -> None:
    result = run_with("", "failpoint('edge.nowhere')")
    assert result.returncode == 1 and "unknown failpoint 'edge.nowhere'" in result.stderr
