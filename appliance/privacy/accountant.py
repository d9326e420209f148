"""Epsilon from noise: Google's `dp-accounting` RDP accountant, and the box's durable ledger.

Every update a box releases is one Gaussian mechanism with noise multiplier z (noise std over
the clip norm) applied to the box's whole contribution, possibly subsampled with probability
q (1 unless the aggregator samples participants secretly). The ledger keeps one entry per
release; epsilon for the configured delta is the RDP composition of all of them, converted
once (the conversion is not additive, so it is never accumulated round by round).

The ledger fails closed: a missing file is a fresh box, but a damaged one is an error, never
an empty budget, because forgetting past releases would silently re-spend privacy.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

MAX_LEDGER_BYTES = 16 * 1024 * 1024


class PrivacyLedgerError(ApplianceError):
    """The ledger file cannot be trusted; the box takes no DP round until an operator looks."""


@dataclass(frozen=True)
class Release:
    """One update that left the box: which round, with what noise and sampling rate."""

    round_id: str
    noise_multiplier: float
    sampling_rate: float = 1.0


def epsilon(releases: Sequence[Release], delta: float) -> float:
    """Epsilon at `delta` of all `releases` composed (RDP, dp-accounting's default orders)."""
    import dp_accounting  # noqa: PLC0415 (scipy, ~1 s): loaded only where DP is on
    from dp_accounting import rdp  # noqa: PLC0415

    if not releases:
        return 0.0
    accountant = rdp.RdpAccountant()
    counts: dict[tuple[float, float], int] = {}
    for release in releases:
        key = (release.noise_multiplier, release.sampling_rate)
        counts[key] = counts.get(key, 0) + 1
    for (z, q), count in counts.items():
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
        if q < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    """The releases of one box, persisted as JSON (atomic replace, fsync'd)."""

    def __init__(self, path: Path, releases: list[Release] | None = None) -> None:
        self.path = path
        self.releases: list[Release] = list(releases or [])

    @classmethod
    def load(cls, path: Path) -> "PrivacyLedger":
        if not path.exists():
            return cls(path)
        try:
            if path.stat().st_size > MAX_LEDGER_BYTES:
                raise ValueError(f"larger than {MAX_LEDGER_BYTES} bytes")
            raw = json.loads(path.read_bytes())
            if not isinstance(raw, dict) or raw.get("v") != 1:
                raise ValueError("not a version 1 ledger")
            releases = [_release(item) for item in raw["releases"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrivacyLedgerError(
                f"{path}: damaged privacy ledger ({exc}); refusing DP rounds rather than "
                "forgetting spent privacy"
            ) from None
        return cls(path, releases)

    def spent(self, delta: float) -> float:
        """Epsilon spent so far."""
        return epsilon(self.releases, delta)

    def after(self, release: Release, delta: float) -> float:
        """Epsilon once `release` is added too (nothing is recorded)."""
        return epsilon([*self.releases, release], delta)

    def rounds(self) -> set[str]:
        return {r.round_id for r in self.releases}

    def record(self, release: Release) -> None:
        """Add a release and make it durable before the update may leave the box."""
        self.releases.append(release)
        body = {
            "v": 1,
            "releases": [
                {"round_id": r.round_id, "noise_multiplier": r.noise_multiplier,
                 "sampling_rate": r.sampling_rate}
                for r in self.releases
            ],
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w") as handle:
            json.dump(body, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)


def _release(item: object) -> Release:
    if not isinstance(item, dict) or set(item) != {"round_id", "noise_multiplier", "sampling_rate"}:
        raise ValueError(f"bad release entry {item!r:.100}")
    round_id, z, q = item["round_id"], item["noise_multiplier"], item["sampling_rate"]
    if not isinstance(round_id, str) or not round_id:
        raise ValueError("release without a round id")
    for name, value in (("noise_multiplier", z), ("sampling_rate", q)):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"{name} {value!r} is not a finite number")
    if z <= 0 or not 0 < q <= 1:
        raise ValueError(f"noise multiplier {z} or sampling rate {q} out of range")
    return Release(round_id, float(z), float(q))
