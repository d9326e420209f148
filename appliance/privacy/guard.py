"""The edge daemon's one privacy hook: may this box join a round, and privatize its update.

Order on the box when DP is on (see docs/privacy.md):
1. `refusal(round_id)` before training: would one more release exceed the epsilon budget?
2. `privatize(round_id, deltas)` on the raw delta to the global adapter (B only under frozen
   A), *before* error feedback: clip to S, add N(0, (z*S)^2), record the release in the
   ledger (fsync'd) and only then return the noised update. Error feedback then works on
   noised data only: its residual (noised update minus what compression sent) is a function
   of released outputs, i.e. post-processing, so it leaks nothing un-noised and costs no
   extra epsilon. Clipping after error feedback instead would leave un-noised data in the
   residual and let it leak into later rounds.
With DP off every method is a no-op and the box behaves exactly as before.
"""

import logging
from pathlib import Path

import numpy as np

from appliance.config.privacy import PrivacySettings
from appliance.federation.privacy_claim import DpReport
from appliance.federation.updates import Delta
from appliance.privacy.accountant import PrivacyLedger, PrivacyLedgerError, Release
from appliance.privacy.dp import privatize

log = logging.getLogger(__name__)


class BudgetExceededError(PrivacyLedgerError):
    """Releasing this update would spend more epsilon than the box's budget."""


class PrivacyGuard:
    """DP state of one box: settings, ledger, and a log line once per refused round."""

    def __init__(
        self,
        settings: PrivacySettings,
        state_dir: Path,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self._ledger_path = state_dir / "privacy-ledger.json"
        self._rng = rng or np.random.default_rng()  # seeded from OS entropy
        self._refused: set[str] = set()
        self._ledger: PrivacyLedger | None = None
        self._ledger_error: str | None = None
        if settings.enabled:
            try:
                self._ledger = PrivacyLedger.load(self._ledger_path)
            except PrivacyLedgerError as exc:
                self._ledger_error = str(exc)
                log.error("%s", exc)
        self.epsilon_spent: float | None = self._spent() if settings.enabled else None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def _spent(self) -> float | None:
        return None if self._ledger is None else self._ledger.spent(self.settings.target_delta)

    def _next(self, round_id: str) -> Release:
        return Release(round_id, self.settings.noise_multiplier)

    def refusal(self, round_id: str) -> str | None:
        """Why this box must not join `round_id` (logged once per round), or None."""
        if not self.enabled:
            return None
        reason = self._why_not(round_id)
        if reason is not None and round_id not in self._refused:
            self._refused.add(round_id)
            log.warning("round %s: not joining: %s", round_id, reason)
        return reason

    def _why_not(self, round_id: str) -> str | None:
        if self._ledger is None:
            return f"privacy ledger unusable: {self._ledger_error}"
        if round_id in self._ledger.rounds():
            return "an update for this round was already released under DP"
        settings = self.settings
        after = self._ledger.after(self._next(round_id), settings.target_delta)
        if after > settings.epsilon_budget:
            return (
                f"privacy budget: one more update would bring epsilon to {after:.3f} > budget "
                f"{settings.epsilon_budget} at delta {settings.target_delta} "
                f"(spent {self.epsilon_spent or 0.0:.3f} in {len(self._ledger.releases)} updates)"
            )
        return None

    def privatize(
        self, round_id: str, deltas: dict[str, Delta]
    ) -> tuple[dict[str, Delta], DpReport | None]:
        """Clip and noise `deltas` and record the release; `BudgetExceededError` instead
        when the budget does not allow it. With DP off: the deltas unchanged and no report."""
        if not self.enabled:
            return deltas, None
        reason = self._why_not(round_id)
        if reason is not None or self._ledger is None:
            raise BudgetExceededError(f"round {round_id}: update not sent: {reason}")
        settings = self.settings
        result = privatize(deltas, settings.clip_norm, settings.noise_multiplier, self._rng)
        self._ledger.record(self._next(round_id))  # durable before anything leaves the box
        self.epsilon_spent = self._ledger.spent(settings.target_delta)
        log.info(
            "round %s: update clipped to %.4g (norm was %.4g), noise std %.4g; epsilon spent "
            "%.3f of %.3f at delta %g",
            round_id,
            settings.clip_norm,
            result.norm_before,
            result.noise_std,
            self.epsilon_spent,
            settings.epsilon_budget,
            settings.target_delta,
        )
        report = DpReport(
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            delta=settings.target_delta,
            epsilon=self.epsilon_spent,
            releases=len(self._ledger.releases),
        )
        return result.deltas, report
