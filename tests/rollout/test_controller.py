"""Rollout decisions and operator commands on a real SQLite store and a real audit log.

The aggregator's transport is the one thing replaced: `Actions` records what the controller
asks it to send (the end-to-end test in test_harmful_update.py sends it for real).
"""

import json
from pathlib import Path

import pytest

from appliance.config.rollout import RolloutSettings
from appliance.federation.audit import AuditLog, read_events, verify
from appliance.federation.audit_events import OperatorCommandCarriedOut, RolloutRejected
from appliance.federation.messages import Command, Evaluation
from appliance.rollout.controller import Actions, Rollout
from appliance.rollout.store import Stage
from tests.rollout.test_gate import report

FLEET = ("box-1", "box-2", "box-3")


class Sent:
    """What the controller asked the aggregator to send."""

    def __init__(self) -> None:
        self.globals: list[tuple[int, str, tuple[str, ...]]] = []
        self.commands: list[Command] = []

    def actions(self) -> Actions:
        return Actions(
            lambda v, r, boxes: self.globals.append((v, r, tuple(boxes))),
            self.commands.append,
            lambda: FLEET,
        )


def audit_kinds(path: Path) -> list[str]:
    return [event.kind for event in read_events(path)]


def evaluation(box: str, version: int, candidate: float) -> Evaluation:
    return report(box, candidate).model_copy(update={"global_version": version})


@pytest.fixture
def rollout(tmp_path: Path) -> Rollout:
    settings = RolloutSettings(canaries=["box-1"], canary_timeout_s=100)
    return Rollout(settings, tmp_path, AuditLog(tmp_path / "audit.jsonl"))


def test_a_good_candidate_reaches_the_rest_after_the_canary(
    rollout: Rollout, tmp_path: Path
) -> None:
    sent = Sent()
    assert rollout.start(1, "r1-a", 0, FLEET, now=10.0) == ("box-1",)
    assert rollout.waiting() is not None
    assert rollout.step(11.0, sent.actions()) is None
    assert sent.globals == []  # nothing goes further before the canary reports
    rollout.take(evaluation("box-2", 1, 2.0), 12.0)  # not a canary: ignored
    rollout.take(evaluation("box-1", 1, 2.9), 12.0)
    assert rollout.step(13.0, sent.actions()) is None
    assert sent.globals == [(1, "r1-a", ("box-2", "box-3"))]
    assert rollout.waiting() is None
    assert rollout.store.get(1).stage == Stage.PROMOTED  # type: ignore[union-attr]
    assert audit_kinds(tmp_path / "audit.jsonl") == ["rollout_started", "rollout_promoted"]


def test_a_bad_candidate_is_rolled_back_on_the_canary_and_goes_nowhere(
    rollout: Rollout, tmp_path: Path
) -> None:
    sent = Sent()
    rollout.start(3, "r3-a", 2, FLEET, now=10.0)
    rollout.take(evaluation("box-1", 3, 3.5), 12.0)
    assert rollout.step(13.0, sent.actions()) == 2
    assert sent.globals == []
    assert sent.commands == [Command(action="rollback", nodes=("box-1",), global_version=2)]
    assert rollout.blocked() == {3}
    assert rollout.next_version(2) == 4  # a rejected number is not reused
    *_, rejected = read_events(tmp_path / "audit.jsonl")
    assert isinstance(rejected, RolloutRejected)
    assert (rejected.rolled_back_to, rejected.never_sent_to) == (2, ("box-2", "box-3"))
    assert rejected.reports["box-1"].nll_candidate == 3.5
    assert "box-1: held-out NLL 3.5000 with v3" in rejected.reason
    verify(tmp_path / "audit.jsonl")


def test_a_replayed_or_stale_report_counts_once(rollout: Rollout) -> None:
    rollout.start(2, "r2-a", 1, FLEET, now=10.0)
    rollout.take(evaluation("box-1", 1, 9.0), 11.0)  # an evaluation of an older version
    assert rollout.store.reports(2) == {}
    rollout.take(evaluation("box-1", 2, 2.0), 11.0)
    rollout.take(evaluation("box-1", 2, 9.0), 12.0)  # replayed with other numbers
    assert rollout.store.reports(2)["box-1"].nll_global == 2.0


def test_silent_canaries_reject_at_the_timeout(rollout: Rollout) -> None:
    sent = Sent()
    rollout.start(1, "r1-a", 0, FLEET, now=10.0)
    assert rollout.step(109.0, sent.actions()) is None
    assert rollout.step(110.0, sent.actions()) == 0
    assert "no canary reported within 100 s" in (rollout.store.get(1).reason or "")  # type: ignore[union-attr]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    settings = RolloutSettings(canaries=["box-1"])
    first = Rollout(settings, tmp_path, AuditLog(tmp_path / "audit.jsonl"))
    first.start(1, "r1-a", 0, FLEET, now=10.0)
    first.take(evaluation("box-1", 1, 2.0), 11.0)
    first.close()
    again = Rollout(settings, tmp_path, AuditLog(tmp_path / "audit.jsonl"))
    assert again.start(1, "r1-a", 0, FLEET, now=50.0) == ("box-1",)  # idempotent
    assert again.waiting().started_at == 10.0  # type: ignore[union-attr]
    sent = Sent()
    again.step(12.0, sent.actions())
    assert sent.globals == [(1, "r1-a", ("box-2", "box-3"))]


def test_off_sends_to_everybody_at_once_and_keeps_the_history(tmp_path: Path) -> None:
    rollout = Rollout(RolloutSettings(), tmp_path, AuditLog(tmp_path / "audit.jsonl"))
    assert rollout.start(1, "r1-a", 0, FLEET, now=1.0) == FLEET
    assert rollout.waiting() is None
    assert rollout.store.get(1).stage == Stage.PROMOTED  # type: ignore[union-attr]
    assert not (tmp_path / "audit.jsonl").exists()  # nothing new in the audit log


def test_operator_fleet_rollback_pin_and_unpin(rollout: Rollout, tmp_path: Path) -> None:
    sent = Sent()
    for version in (1, 2):
        rollout.start(version, f"r{version}-a", version - 1, FLEET, now=float(version))
        rollout.take(evaluation("box-1", version, 1.0 / version), float(version))
        rollout.step(float(version), sent.actions())
    sent = Sent()
    store = rollout.store
    store.queue_command("pin", ("box-3",), 1, 5.0)
    store.queue_command("rollback", (), None, 6.0)
    store.queue_command("unpin", ("box-3",), None, 7.0)
    store.queue_command("rollback", ("box-2",), None, 8.0)
    assert rollout.step(9.0, sent.actions()) == 1
    assert sent.commands == [
        Command(action="pin", nodes=("box-3",), global_version=1),
        Command(action="rollback", nodes=FLEET, global_version=1),
        Command(action="unpin", nodes=("box-3",)),
        Command(action="rollback", nodes=("box-2",), command_id=4),  # carried out once by id
    ]
    assert sent.globals == [(1, "r1-a", ("box-3",))]  # the pinned box gets the file it needs
    assert store.get(2).stage == Stage.ROLLED_BACK  # type: ignore[union-attr]
    assert store.unsent_commands() == []
    assert [c.outcome for c in store.commands()][::-1] == [
        "box-3 pinned to v1",
        "fleet rolled back from v2 to v1",
        "box-3 unpinned",
        "box-2 told to go back to their previous adapter",
    ]
    assert store.pins() == {}
    assert audit_kinds(tmp_path / "audit.jsonl")[-4:] == ["operator_command"] * 4
    events = read_events(tmp_path / "audit.jsonl")
    done = [e for e in events if isinstance(e, OperatorCommandCarriedOut)]
    assert [(e.action, e.nodes, e.global_version, e.outcome) for e in done] == [
        ("pin", ("box-3",), 1, "box-3 pinned to v1"),
        ("rollback", "fleet", None, "fleet rolled back from v2 to v1"),
        ("unpin", ("box-3",), None, "box-3 unpinned"),
        ("rollback", ("box-2",), None, "box-2 told to go back to their previous adapter"),
    ]
    assert rollout.step(10.0, sent.actions()) is None  # each command is carried out once


def test_fleet_rollback_with_nothing_rolled_out(rollout: Rollout) -> None:
    rollout.store.queue_command("rollback", (), None, 1.0)
    sent = Sent()
    assert rollout.step(2.0, sent.actions()) is None
    assert sent.commands == []
    assert rollout.store.commands()[0].outcome == (
        "nothing to roll back: no global adapter was rolled out yet"
    )


def test_without_canaries_a_candidate_is_promoted_in_the_same_write(tmp_path: Path) -> None:
    """Staged rollout off: no moment exists at which the store holds a candidate waiting for
    canaries it does not have (the crash that once made v1 'rejected: no canary reported')."""
    rollout = Rollout(RolloutSettings(), tmp_path, AuditLog(tmp_path / "audit.jsonl"))
    assert rollout.start(1, "r1-a", 0, FLEET, now=10.0) == FLEET
    row = rollout.store.get(1)
    assert row is not None and row.stage == Stage.PROMOTED and row.reason == "staged rollout off"
    assert rollout.waiting() is None


def test_a_pending_row_without_canaries_left_by_an_old_crash_is_promoted_not_a_crash(
    tmp_path: Path,
) -> None:
    """State an earlier version wrote: stage canary, no canaries. It used to raise pydantic's
    ValidationError (Command with nodes=()) at every start; now it is promoted and sent."""
    rollout = Rollout(RolloutSettings(), tmp_path, AuditLog(tmp_path / "audit.jsonl"))
    rollout.store._db.execute(
        "INSERT INTO rollouts (version, round_id, base_version, canaries, others, stage,"
        " started_at) VALUES (1, 'r1-a', 0, '[]', ?, 'canary', 0)",
        (json.dumps(FLEET),),
    )
    sent = Sent()
    assert rollout.step(5000.0, sent.actions()) is None
    assert sent.globals == [(1, "r1-a", FLEET)]
    assert sent.commands == []
    assert rollout.store.get(1).stage == Stage.PROMOTED  # type: ignore[union-attr]
    assert audit_kinds(tmp_path / "audit.jsonl") == ["rollout_promoted"]


def test_start_again_after_a_crash_returns_the_first_decision_and_audits_once(
    rollout: Rollout, tmp_path: Path
) -> None:
    assert rollout.start(1, "r1-a", 0, FLEET, now=10.0) == ("box-1",)
    assert rollout.start(1, "r1-a", 0, FLEET, now=99.0) == ("box-1",)
    assert rollout.store.get(1).started_at == 10.0  # type: ignore[union-attr]
    assert audit_kinds(tmp_path / "audit.jsonl") == ["rollout_started"]


def test_a_promotion_repeated_after_a_crash_sends_again_and_audits_once(
    rollout: Rollout, tmp_path: Path
) -> None:
    """A crash between the send and the decision: the next step sends again (a box installs
    a version once) and the audit keeps one promotion."""
    rollout.start(1, "r1-a", 0, FLEET, now=10.0)
    rollout.take(evaluation("box-1", 1, 2.9), 12.0)
    sent = Sent()
    rollout.step(13.0, sent.actions())
    rollout.store._db.execute("UPDATE rollouts SET stage = 'canary' WHERE version = 1")
    rollout.step(14.0, sent.actions())
    assert sent.globals == [(1, "r1-a", ("box-2", "box-3"))] * 2
    assert audit_kinds(tmp_path / "audit.jsonl") == ["rollout_started", "rollout_promoted"]
