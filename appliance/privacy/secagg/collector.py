"""The aggregator's side of one secure-aggregation round: keys, masked updates, commit,
seed reveals, unmasked sum.

Phases, in order (a message for another phase is refused with its reason):

    KEYS      add_key() for each participant; close_keys() -> KeySet to relay
    UPDATES   add_masked() for each reporting box; commit() -> ReportingSet to publish
    REVEALS   add_reveal() from each reporting box (only needed when someone dropped)
    DONE      unmask() -> the sample-weighted mean B delta, and nothing about any one box

After the commit the set of reporting boxes is fixed: a dropped box's late update is refused
(`late`) because its peers' seeds with it are revealed, so accepting it would expose it.
"""

import hashlib
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from appliance.federation.strategies import FedAvgFrozenA
from appliance.federation.strategies.base import Aggregate
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter
from appliance.identity import TrustStore
from appliance.privacy.secagg.encoding import FixedPoint, Layout, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.masks import apply_mask, sign_for
from appliance.privacy.secagg.messages import (
    MAX_KEYS,
    KeySet,
    MaskKey,
    ReportingSet,
    SeedReveal,
    seed_bytes,
    unpack_masked,
)


class Phase(Enum):
    KEYS = "keys"
    UPDATES = "updates"
    REVEALS = "reveals"
    DONE = "done"


@dataclass(frozen=True)
class UnmaskedSum:
    """What the aggregator learns: the weighted mean B delta, total weight, who is in it."""

    mean_b: dict[str, np.ndarray]
    total: np.ndarray
    """The unmasked sum of the weighted integer codes (int64, exact)."""
    total_weight: int
    reporting: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass
class Collector:
    """One round at the aggregator."""

    round_id: str
    participants: tuple[str, ...]
    layout: Layout
    fixed_point: FixedPoint
    trust: TrustStore
    min_reporting: int = 2
    phase: Phase = field(default=Phase.KEYS, init=False)
    keyset: KeySet | None = field(default=None, init=False)
    commitment: ReportingSet | None = field(default=None, init=False)
    _keys: dict[str, MaskKey] = field(default_factory=dict, init=False)
    _masked: dict[str, tuple[int, np.ndarray, str]] = field(default_factory=dict, init=False)
    _reveals: dict[str, dict[str, bytes]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.min_reporting < 2:
            raise ValueError("min_reporting must be at least 2: a sum of one is that box's update")
        if len(self.participants) > MAX_KEYS:
            raise ValueError(f"{len(self.participants)} participants > {MAX_KEYS} per key set")
        self.fixed_point.check_participants(len(self.participants))

    @property
    def keys_received(self) -> tuple[str, ...]:
        """Boxes whose mask key was accepted."""
        return tuple(sorted(self._keys))

    @property
    def reported(self) -> tuple[str, ...]:
        """Boxes whose masked update was accepted."""
        return tuple(sorted(self._masked))

    def weight_of(self, node: str) -> int:
        """The weight a reporting box declared."""
        return self._masked[node][0]

    # -- keys ---------------------------------------------------------------------------------

    def add_key(self, key: MaskKey, signer: str) -> None:
        """A participant's signed mask key (from its own `msg/<box>/secagg_key` topic)."""
        self._expect(Phase.KEYS, f"mask key of {signer}")
        if key.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the key of {key.node_id}")
        self._round(key.round_id)
        if signer not in self.participants:
            raise SecAggError("not_participant", f"{signer} is not a participant of the round")
        key.verify(self.trust)
        known = self._keys.get(signer)
        if known is not None:
            if known == key:
                return  # the same message delivered again
            raise SecAggError("duplicate_key", f"{signer} already sent another key this round")
        if any(k.public_key == key.public_key for k in self._keys.values()):
            raise SecAggError("duplicate_key", f"{signer}'s public key is another box's key")
        self._keys[signer] = key

    def close_keys(self) -> KeySet:
        """Fix the key set (boxes without a key are out of this round) and return it to relay."""
        self._expect(Phase.KEYS, "closing the key set")
        if len(self._keys) < self.min_reporting:
            raise SecAggError(
                "too_few_reporting", f"{len(self._keys)} keys < min_reporting {self.min_reporting}"
            )
        self.keyset = KeySet(
            round_id=self.round_id, keys=tuple(self._keys[n] for n in sorted(self._keys))
        )
        self.phase = Phase.UPDATES
        return self.keyset

    # -- masked updates -----------------------------------------------------------------------

    def add_masked(self, blob: bytes, sender: str) -> None:
        """A masked update artifact from `sender` (the artifact's verified signer)."""
        keyset = self._require_keyset()
        digest = hashlib.sha256(blob).hexdigest()
        previous = self._masked.get(sender)
        if previous is not None:
            same = previous[2] == digest
            raise SecAggError(
                "replay" if same else "duplicate",
                f"{sender} already reported in round {self.round_id}",
            )
        if self.phase is not Phase.UPDATES:
            raise SecAggError(
                "late", f"round {self.round_id} is committed without {sender}; update refused"
            )
        header, values = unpack_masked(blob, self.layout)
        if header.node_id != sender:
            raise SecAggError("sender_mismatch", f"{sender} sent an update of {header.node_id}")
        self._round(header.round_id)
        if sender not in keyset.members:
            raise SecAggError("not_participant", f"{sender} has no key in the round's key set")
        if header.keyset_sha256 != keyset.sha256:
            raise SecAggError("stale_keyset", f"{sender} masked against another key set")
        if header.weight > self.fixed_point.max_weight:
            raise SecAggError(
                "weight_out_of_range",
                f"weight {header.weight} > max_weight {self.fixed_point.max_weight}",
            )
        self._masked[sender] = (header.weight, values, digest)

    def commit(self) -> ReportingSet:
        """Fix who reported; from now on late updates are refused. Publish the result signed."""
        keyset = self._require_keyset()
        self._expect(Phase.UPDATES, "commit")
        reporting = tuple(sorted(self._masked))
        if len(reporting) < self.min_reporting:
            raise SecAggError(
                "too_few_reporting",
                f"{len(reporting)} masked updates < min_reporting {self.min_reporting}",
            )
        dropped = tuple(n for n in keyset.members if n not in self._masked)
        self.commitment = ReportingSet(
            round_id=self.round_id,
            keyset_sha256=keyset.sha256,
            reporting=reporting,
            dropped=dropped,
        )
        self.phase = Phase.REVEALS if dropped else Phase.DONE
        return self.commitment

    # -- reveals ------------------------------------------------------------------------------

    def missing_reveals(self) -> tuple[str, ...]:
        """Reporting boxes whose seeds are still needed."""
        if self.commitment is None or not self.commitment.dropped:
            return ()
        return tuple(n for n in self.commitment.reporting if n not in self._reveals)

    def add_reveal(self, reveal: SeedReveal, signer: str) -> None:
        """A reporting box's seeds with the dropped boxes."""
        commit = self.commitment
        if commit is None:
            raise SecAggError("wrong_phase", "no commit yet; nothing to reveal")
        if reveal.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the reveal of {reveal.node_id}")
        self._round(reveal.round_id)
        if reveal.commit_sha256 != commit.sha256:
            raise SecAggError("stale_commit", f"{signer} answers another commit")
        if signer not in commit.reporting:
            raise SecAggError("not_reporting", f"{signer} is not in the reporting set")
        if signer in self._reveals:
            raise SecAggError("replay", f"{signer} already revealed its seeds")
        peers = [s.peer for s in reveal.seeds]
        if sorted(peers) != sorted(commit.dropped) or len(set(peers)) != len(peers):
            raise SecAggError(
                "missing_seed", f"{signer} revealed seeds for {peers}, not {list(commit.dropped)}"
            )
        self._reveals[signer] = {s.peer: seed_bytes(s) for s in reveal.seeds}
        if not self.missing_reveals():
            self.phase = Phase.DONE

    # -- result -------------------------------------------------------------------------------

    def unmask(self) -> UnmaskedSum:
        """Sum the masked updates, remove the masks shared with dropped boxes, decode the mean."""
        commit = self.commitment
        if commit is None or self.phase is not Phase.DONE:
            raise SecAggError(
                "wrong_phase", f"waiting for reveals from {list(self.missing_reveals())}"
            )
        total = np.zeros(layout_size(self.layout), np.uint32)
        weight = 0
        with np.errstate(over="ignore"):
            for node in commit.reporting:
                node_weight, values, _ = self._masked[node]
                total = (total + values).astype(np.uint32)
                weight += node_weight
        for survivor, seeds in self._reveals.items():
            for dropped, seed in seeds.items():
                # the survivor added sign * PRG(seed); subtracting it removes the orphan mask
                total = apply_mask(total, seed, -sign_for(survivor, dropped))
        try:
            mean = self.fixed_point.decode_sum(total, weight, self.layout)
        except ValueError as exc:
            raise SecAggError("unmask_failed", str(exc)) from None
        signed = total.view(np.int32).astype(np.int64)
        return UnmaskedSum(mean, signed, weight, commit.reporting, commit.dropped)

    # -- helpers ------------------------------------------------------------------------------

    def _expect(self, phase: Phase, what: str) -> None:
        if self.phase is not phase:
            reason = "late" if phase is Phase.KEYS else "wrong_phase"
            raise SecAggError(reason, f"{what} in phase {self.phase.value}, not {phase.value}")

    def _round(self, round_id: str) -> None:
        if round_id != self.round_id:
            raise SecAggError("wrong_round", f"{round_id} is not round {self.round_id}")

    def _require_keyset(self) -> KeySet:
        if self.keyset is None:
            raise SecAggError("wrong_phase", "the key set is not closed yet")
        return self.keyset


def secure_fedavg(base: GlobalAdapter, result: UnmaskedSum) -> Aggregate:
    """FedAvg of B under frozen A from the unmasked weighted mean: one pseudo-update that
    carries the total weight, so the result equals plain sample-weighted FedAvg."""
    strategy = FedAvgFrozenA()
    strategy.begin(base)
    deltas = {name: Delta(None, mean) for name, mean in result.mean_b.items()}
    strategy.accept(ClientUpdate("secure-aggregate", result.total_weight, deltas))
    aggregate = strategy.finish()
    report = dict(aggregate.report)
    report.update(
        {
            "secure_aggregation": 1,
            "updates": len(result.reporting),
            "dropped": len(result.dropped),
        }
    )
    return Aggregate(aggregate.factors, report)
