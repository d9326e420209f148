"""One SecAgg+ round in memory: `PlusParticipant`s and a `PlusCollector`, every message
through its JSON schema (serialised and parsed again, as the transport does), with boxes that
drop out at a chosen phase."""

from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from appliance.privacy.secagg import ring
from appliance.privacy.secagg.encoding import Encoded
from appliance.privacy.secagg.plus_box import BoxState, PlusParticipant, RoundParams
from appliance.privacy.secagg.plus_collector import CollectorState, PlusCollector
from appliance.privacy.secagg.plus_messages import AckSet, PlusCommit
from tests.privacy.secagg_support import AGG, FIXED, ROUND, World, deltas

M = TypeVar("M", bound=BaseModel)
PHASES = ("keys", "shares", "update", "ack", "reveal")
"""Where a box can drop: before sending its keys, its shares, its masked update, its commit
ack, or its reveal."""
GLOBAL = "ab" * 32


def wire(message: M) -> M:
    """Serialise and parse again, as the transport does."""
    return type(message).model_validate_json(message.model_dump_json())


class PlusRound:
    """A round between participants and a collector; `dropped[phase]` never send that step
    (nor anything after it)."""

    def __init__(
        self,
        w: World,
        *,
        threshold: float = 0.6,
        degree: int = 0,
        ring_bits: int = 32,
        min_reporting: int = 2,
        max_weight: int = 1024,
        seed: int = 11,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.w = w
        self.params = RoundParams(
            min_reporting=min_reporting, threshold=threshold, neighbours=degree, ring_bits=ring_bits
        )
        names = tuple(b.node_id for b in w.boxes)
        self.state = CollectorState(
            round_id=ROUND,
            participants=names,
            params=self.params,
            value_bound=FIXED.value_bound,
            max_weight=max_weight,
            layout=w.layout,
        )
        self.collector = PlusCollector(self.state, w.trust)
        self.saved: dict[str, BoxState] = {}
        self.boxes = {
            b.node_id: PlusParticipant.fresh(
                b, w.trust, AGG, ROUND, params=self.params, on_change=self._saver(b.node_id)
            )
            for b in w.boxes
        }
        fixed = type(FIXED)(FIXED.value_bound, max_weight)
        self.encoded: dict[str, Encoded] = {
            name: fixed.encode(deltas(w.base, rng), w.layout, int(rng.integers(50, 3000)))
            for name in names
        }
        self.blobs: dict[str, bytes] = {}
        self.gone: set[str] = set()
        self.commit: PlusCommit | None = None
        self.ackset: AckSet | None = None

    def _saver(self, name: str):
        def save(state: BoxState) -> None:
            self.saved[name] = BoxState.model_validate_json(state.model_dump_json())

        return save

    def alive(self, phase: str, dropped: dict[str, tuple[str, ...]]) -> list[str]:
        """Boxes still there at `phase` (those dropping at it or before are gone)."""
        upto = PHASES[: PHASES.index(phase) + 1]
        self.gone = {n for p in upto for n in dropped.get(p, ())}
        return [n for n in self.boxes if n not in self.gone]

    def keys(self, dropped: dict[str, tuple[str, ...]]) -> None:
        for name in self.alive("keys", dropped):
            self.collector.add_key(wire(self.boxes[name].key_message()), name)
        keyset = wire(self.collector.close_keys())
        bundles = {}
        for name in self.alive("shares", dropped):
            if name in keyset.members:
                bundles[name] = wire(self.boxes[name].accept_key_set(keyset, AGG))
        for name, bundle in bundles.items():
            self.collector.add_shares(bundle, name)

    def relay(self, dropped: dict[str, tuple[str, ...]]) -> None:
        relays = self.collector.close_shares()
        for name in self.alive("update", dropped):
            if name in relays:
                self.boxes[name].accept_relay(wire(relays[name]), AGG)

    def send(self, dropped: dict[str, tuple[str, ...]]) -> None:
        shared = self.state.shared or ()
        for name in self.alive("update", dropped):
            if name in shared:
                enc = self.encoded[name]
                blob = self.boxes[name].mask(enc.values, self.w.layout, enc.weight, GLOBAL)
                self.blobs[name] = blob
                self.collector.add_masked(blob, name)

    def acks(self, dropped: dict[str, tuple[str, ...]]) -> None:
        self.commit = wire(self.collector.commit())
        for name in self.alive("ack", dropped):
            if name in self.commit.reporting:
                self.collector.add_ack(wire(self.boxes[name].accept_commit(self.commit, AGG)), name)
        self.ackset = wire(self.collector.close_acks())

    def reveal(self, dropped: dict[str, tuple[str, ...]]) -> None:
        assert self.ackset is not None
        for name in self.alive("reveal", dropped):
            if name in self.ackset.signers:
                self.collector.add_reveal(wire(self.boxes[name].reveal(self.ackset, AGG)), name)

    def run(self, dropped: dict[str, tuple[str, ...]] | None = None):
        dropped = dropped or {}
        self.keys(dropped)
        self.relay(dropped)
        self.send(dropped)
        self.acks(dropped)
        self.reveal(dropped)
        return self.collector.unmask()

    def plain_sum(self, names) -> np.ndarray:
        """The exact signed sum of the boxes' codes (as the ring reads it back)."""
        bits = self.params.ring_bits
        total = sum(self.encoded[n].values.view(np.int32).astype(np.int64) for n in names)
        return ring.to_signed(ring.reduce(total, bits), bits)
