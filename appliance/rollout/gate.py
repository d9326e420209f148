"""The promotion rule: no canary may get worse than the adapter it serves, beyond tolerance.

Each canary compares the candidate with its own current adapter on its own held-out data, so
boxes with different lines and data sizes are each judged against themselves. A regression in
either number (held-out NLL up, exact-match rate down) on any canary rejects the candidate.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.config.rollout import RolloutSettings
from appliance.federation.messages import Evaluation


@dataclass(frozen=True)
class Verdict:
    """Promote or not, and the reason in words (for the log, the audit log and fleet status)."""

    promote: bool
    reason: str
    regressions: tuple[str, ...] = ()


def _served(report: Evaluation) -> str:
    return "the base model" if report.current_version is None else f"v{report.current_version}"


def regressions(report: Evaluation, settings: RolloutSettings) -> list[str]:
    """What got worse on one canary, each as one sentence."""
    found = []
    current = report.nll_current if report.nll_current is not None else report.nll_base
    increase = report.nll_global - current
    if increase > settings.max_nll_increase:
        found.append(
            f"{report.node_id}: held-out NLL {report.nll_global:.4f} with v{report.global_version}"
            f" against {current:.4f} with {_served(report)} (+{increase:.4f} >"
            f" {settings.max_nll_increase:.4f} allowed)"
        )
    if report.task_global is not None and report.task_current is not None:
        drop = report.task_current - report.task_global
        if drop > settings.max_task_drop:
            found.append(
                f"{report.node_id}: exact match {report.task_global:.1%} with "
                f"v{report.global_version} against {report.task_current:.1%} with "
                f"{_served(report)} on {report.task_records} prompts (-{drop:.1%} > "
                f"{settings.max_task_drop:.1%} allowed)"
            )
    return found


def judge(
    version: int,
    canaries: Sequence[str],
    reports: Mapping[str, Evaluation],
    settings: RolloutSettings,
    *,
    timed_out: bool,
) -> Verdict | None:
    """The verdict once every canary reported or the wait is over; None while waiting."""
    missing = [box for box in canaries if box not in reports]
    if missing and not timed_out:
        return None
    if not reports:
        return Verdict(
            False,
            f"v{version}: no canary reported within {settings.canary_timeout_s:.0f} s "
            f"(waited for {', '.join(canaries)})",
        )
    found = tuple(line for box in sorted(reports) for line in regressions(reports[box], settings))
    late = f"; no report from {', '.join(missing)}" if missing else ""
    if found:
        return Verdict(
            False, f"v{version} regressed on canaries: " + "; ".join(found) + late, found
        )
    return Verdict(True, f"v{version}: no regression on {', '.join(sorted(reports))}{late}")
