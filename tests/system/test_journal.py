"""Journal fields: what systemd-python's handler hands to journald, and when it is used."""

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.system import journal
from appliance.system.journal import journal_handler, set_fields

pytest.importorskip("systemd.journal", reason="systemd-python is not installed")


@pytest.fixture(autouse=True)
def no_fields() -> Iterator[None]:
    journal.clear_fields()
    yield
    journal.clear_fields()


def capture_logger() -> tuple[logging.Logger, list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    handler = journal_handler(sender=lambda message, /, **fields: sent.append((message, fields)))
    assert handler is not None
    logger = logging.getLogger("tests.journal")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, sent


def test_records_carry_the_process_fields_and_their_own() -> None:
    logger, sent = capture_logger()
    set_fields(BOX_ID="box-07", PLANT_ID="plant1", ROLE="edge")
    logger.info("joined")
    set_fields(ROUND="r3-abc123")
    logger.warning("training %s", "now", extra={"STEP": 12})
    set_fields(ROUND=None)
    logger.info("idle again")

    (first, f1), (second, f2), (_third, f3) = sent
    assert first == "joined" and f1["BOX_ID"] == "box-07" and "ROUND" not in f1
    assert second == "training now"
    assert (f2["ROUND"], f2["STEP"], f2["PRIORITY"]) == ("r3-abc123", 12, "4")
    assert f2["SYSLOG_IDENTIFIER"] == "appliance" and f2["LOGGER"] == "tests.journal"
    assert "ROUND" not in f3 and f3["PLANT_ID"] == "plant1"
    # journald takes only upper-case names: the record's own attributes are not sent
    for fields in (f1, f2, f3):
        assert all(name == name.upper() for name in fields), sorted(fields)


def test_a_record_field_wins_over_the_process_field() -> None:
    logger, sent = capture_logger()
    set_fields(ROUND="r1")
    logger.info("late update", extra={"ROUND": "r0"})
    assert sent[0][1]["ROUND"] == "r0"


@pytest.mark.parametrize("name", ["round", "_ROUND", "BOX-ID", "", "A" * 65])
def test_invalid_field_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid journal field name"):
        set_fields(**{name: "x"})


PROBE = """
import logging, sys
from appliance.system.journal import stderr_is_journal
from appliance.system.logs import setup_logging
setup_logging("info")
print(stderr_is_journal(), type(logging.getLogger().handlers[0]).__name__)
"""


def run_probe(stderr_file: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_file.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=True,
        )
    return done.stdout.strip()


def test_native_journal_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    stderr_file = tmp_path / "stderr"
    stderr_file.touch()
    stat = stderr_file.stat()
    assert run_probe(stderr_file, f"{stat.st_dev}:{stat.st_ino}") == "True JournalHandler"
    # stderr redirected elsewhere (a pipe, a file) by a child: plain lines on stderr
    assert run_probe(stderr_file, f"{stat.st_dev}:{stat.st_ino + 1}") == "False StreamHandler"
    assert run_probe(stderr_file, "garbage") == "False StreamHandler"
    assert run_probe(stderr_file, None) == "False StreamHandler"
