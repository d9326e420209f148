"""Drive rollouts from the aggregator's main loop: start, judge, promote or roll back.

The aggregator calls `start` with each new global adapter (it sends the adapter only to the
boxes returned), `take` with each evaluation, and `step` once per loop: `step` decides a
candidate whose canaries all reported (or whose wait ran out), carries out the operator's
queued commands, and returns the version the fleet should build on when that changed (after
a rejection or a fleet rollback). Every decision is written to the audit log with its reason.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config.rollout import RolloutSettings
from appliance.federation.audit import AuditLog
from appliance.federation.audit_events import (
    CanaryNumbers,
    OperatorCommandCarriedOut,
    RolloutPromoted,
    RolloutRejected,
    RolloutStarted,
)
from appliance.federation.messages import Command, Evaluation
from appliance.rollout.canary import pick_canaries
from appliance.rollout.gate import judge
from appliance.rollout.store import STORE_FILE, CommandRow, RolloutRow, RolloutStore, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actions:
    """What the controller asks the aggregator to do (the aggregator owns the transport)."""

    send_global: Callable[[int, str, Sequence[str]], None]
    """Send global adapter `version` (made in round `round_id`) to these boxes."""
    send_command: Callable[[Command], None]
    fleet: Callable[[], tuple[str, ...]]
    """Every box of the plant."""


class Rollout:
    """Staged rollout state and decisions for one aggregator."""

    def __init__(self, settings: RolloutSettings, state_dir: Path, audit: AuditLog) -> None:
        self.settings = settings
        self.store = RolloutStore(state_dir / STORE_FILE)
        self.audit = audit

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def blocked(self) -> set[int]:
        """Versions rejected on canaries or rolled back: never served, never built on."""
        return self.store.blocked()

    def next_version(self, current: int) -> int:
        """The version number of the next global adapter (a rejected number is not reused)."""
        return max(current, self.store.highest_version()) + 1

    def waiting(self) -> RolloutRow | None:
        """The candidate whose canaries have not decided yet (no new round meanwhile)."""
        return self.store.pending()

    def start(
        self,
        version: int,
        round_id: str,
        base_version: int,
        participants: Sequence[str],
        now: float,
    ) -> tuple[str, ...]:
        """Record a new candidate; returns the boxes that get it now. Called again for the
        same version after a crash, it returns what the first call decided."""
        canaries = pick_canaries(participants, self.settings)
        others = tuple(box for box in participants if box not in canaries)
        known = self.store.get(version)
        row = self.store.begin(version, round_id, base_version, canaries, others, now)
        if row.stage != Stage.CANARY:
            return (*row.canaries, *row.others)
        if known is None:
            self.audit.append_event(
                RolloutStarted(
                    global_version=version,
                    round_id=round_id,
                    base_version=base_version,
                    canaries=row.canaries,
                    waiting=row.others,
                )
            )
        log.info("global adapter v%d goes to canaries %s first", version, ", ".join(row.canaries))
        return row.canaries

    def take(self, evaluation: Evaluation, now: float) -> None:
        """Keep a canary's evaluation of the pending candidate."""
        pending = self.store.pending()
        if (
            pending is not None
            and evaluation.global_version == pending.version
            and evaluation.node_id in pending.canaries
        ):
            self.store.add_report(evaluation, now)

    def step(self, now: float, actions: Actions) -> int | None:
        """Decide what is due; returns the version to build on when it changed."""
        revert = self._judge_pending(now, actions)
        for command in self.store.unsent_commands():
            revert = self._carry_out(command, now, actions) or revert
        return revert

    # -- canary decisions ---------------------------------------------------------------------

    def _judge_pending(self, now: float, actions: Actions) -> int | None:
        pending = self.store.pending()
        if pending is None:
            return None
        if not pending.canaries:  # written by a version that could crash between two steps
            self._promote(pending, "no canaries (staged rollout was off)", {}, now, actions)
            return None
        reports = self.store.reports(pending.version)
        timed_out = now >= pending.started_at + self.settings.canary_timeout_s
        verdict = judge(
            pending.version, pending.canaries, reports, self.settings, timed_out=timed_out
        )
        if verdict is None:
            return None
        if verdict.promote:
            self._promote(pending, verdict.reason, reports, now, actions)
            return None
        self._reject(pending, verdict.reason, verdict.regressions, reports, now, actions)
        return pending.base_version

    def _promote(
        self,
        pending: RolloutRow,
        reason: str,
        reports: dict[str, Evaluation],
        now: float,
        actions: Actions,
    ) -> None:
        """Send to the waiting boxes, audit, then decide: a crash before the decision repeats
        the send (a box installs a version once) and never loses it."""
        if pending.others:
            actions.send_global(pending.version, pending.round_id, pending.others)
        promoted = RolloutPromoted(
            global_version=pending.version,
            round_id=pending.round_id,
            canaries=pending.canaries,
            reports=_numbers(reports),
            reason=reason,
            recipients=pending.others,
        )
        self.audit.append_event_once(promoted, "global_version")
        self.store.decide(pending.version, Stage.PROMOTED, reason, now)
        log.info("global adapter v%d promoted: %s", pending.version, reason)

    def _reject(  # noqa: PLR0917 (a decision and what it rests on)
        self,
        pending: RolloutRow,
        reason: str,
        regressions: Sequence[str],
        reports: dict[str, Evaluation],
        now: float,
        actions: Actions,
    ) -> None:
        """Tell the canaries to go back, audit, then decide (the same order as `_promote`)."""
        actions.send_command(
            Command(action="rollback", nodes=pending.canaries, global_version=pending.base_version)
        )
        rejected = RolloutRejected(
            global_version=pending.version,
            round_id=pending.round_id,
            canaries=pending.canaries,
            reports=_numbers(reports),
            reason=reason,
            regressions=tuple(regressions),
            rolled_back_to=pending.base_version,
            never_sent_to=pending.others,
        )
        self.audit.append_event_once(rejected, "global_version")
        self.store.decide(pending.version, Stage.REJECTED, reason, now)
        log.warning(
            "global adapter v%d rejected, canaries roll back to v%d: %s",
            pending.version,
            pending.base_version,
            reason,
        )

    # -- operator commands --------------------------------------------------------------------

    def _carry_out(self, command: CommandRow, now: float, actions: Actions) -> int | None:
        revert = None
        if command.action == "rollback" and not command.nodes:
            outcome, revert = self._fleet_rollback(now, actions)
        elif command.action == "rollback":
            actions.send_command(
                Command(action="rollback", nodes=command.nodes, command_id=command.id)
            )
            outcome = f"{', '.join(command.nodes)} told to go back to their previous adapter"
        elif command.action == "pin" and command.version is not None:
            box = command.nodes[0]
            self.store.pin(box, command.version, now)
            actions.send_command(
                Command(action="pin", nodes=command.nodes, global_version=command.version)
            )
            made_in = self.store.get(command.version)
            actions.send_global(command.version, made_in.round_id if made_in else "pin", [box])
            outcome = f"{box} pinned to v{command.version}"
        else:
            for box in command.nodes:
                self.store.unpin(box)
            actions.send_command(Command(action="unpin", nodes=command.nodes))
            outcome = f"{', '.join(command.nodes)} unpinned"
        self.store.command_sent(command.id, outcome, now)
        self.audit.append_event(
            OperatorCommandCarriedOut(
                command_id=command.id,
                action=command.action,
                nodes=command.nodes or "fleet",
                global_version=command.version,
                outcome=outcome,
            )
        )
        log.warning("operator command %d (%s): %s", command.id, command.action, outcome)
        return revert

    def _fleet_rollback(self, now: float, actions: Actions) -> tuple[str, int | None]:
        current = self.store.pending() or self.store.latest_promoted()
        if current is None:
            return "nothing to roll back: no global adapter was rolled out yet", None
        target = self.store.promoted_before(current.version)
        self.store.decide(current.version, Stage.ROLLED_BACK, "operator rolled the fleet back", now)
        fleet = actions.fleet()
        if fleet:
            actions.send_command(Command(action="rollback", nodes=fleet, global_version=target))
        return f"fleet rolled back from v{current.version} to v{target}", target


def _numbers(reports: dict[str, Evaluation]) -> dict[str, CanaryNumbers]:
    """The canaries' numbers a promotion or rejection is audited with."""
    return {
        box: CanaryNumbers(
            nll_base=r.nll_base,
            nll_current=r.nll_current,
            nll_candidate=r.nll_global,
            current_version=r.current_version,
            task_base=r.task_base,
            task_current=r.task_current,
            task_candidate=r.task_global,
            task_records=r.task_records,
        )
        for box, r in sorted(reports.items())
    }
