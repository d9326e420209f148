"""The aggregator's side of one SecAgg+ round (plan version 2).

Phases, in order (a message for another phase is refused with its reason):

    keys      add_key() per participant; close_keys() -> PlusKeySet to relay
    shares    add_shares() per box; close_shares() -> one ShareRelay per box that shared
    updates   add_masked() per box; commit() -> PlusCommit (who reported, who dropped)
    acks      add_ack() per reporting box; close_acks() -> AckSet (the consistency check)
    reveals   add_reveal() per acking box, until every secret has t shares
    done      unmask() -> the weighted mean B delta

The unmasking rule: for every reporting box rebuild its self-mask seed b_i (and check it
against its commitment) and remove PRG(b_i); for every box that shared but did not report
rebuild its mask key (checked against its signed public key) and remove the pairwise masks
its reporting neighbours added with it. The round completes as long as every secret has t
shares among the boxes that reveal, so any box may drop at any phase as long as each box
still has t of its share holders; with fewer, the step fails cleanly with
`too_many_dropouts` and nothing is revealed.

`state` is JSON-able (masked vectors excepted: they are in the round store and come back
through `restore_masked`), so a restarted aggregator goes on from the last step.
"""

import hashlib
from enum import StrEnum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from appliance.identity import TrustStore
from appliance.privacy.secagg import ring
from appliance.privacy.secagg.collector import UnmaskedSum
from appliance.privacy.secagg.encoding import LEVELS, FixedPoint, Layout, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.graph import neighbours, threshold_of
from appliance.privacy.secagg.masks import pair_seed, sign_for
from appliance.privacy.secagg.messages import b64, unb64
from appliance.privacy.secagg.plus_box import RoundParams, self_mask_commitment
from appliance.privacy.secagg.plus_messages import (
    MAX_BOXES,
    AckSet,
    CommitAck,
    PlusCommit,
    PlusKey,
    PlusKeySet,
    RelayedShare,
    ShareBundle,
    ShareRelay,
    ShareReveal,
    share_bytes,
    unpack_masked_v2,
)
from appliance.privacy.secagg.shamir import combine


class Phase(StrEnum):
    KEYS = "keys"
    SHARES = "shares"
    UPDATES = "updates"
    ACKS = "acks"
    REVEALS = "reveals"
    DONE = "done"


class CollectorState(BaseModel):
    """One round at the aggregator, as persisted (no secrets of any box until reveals)."""

    model_config = ConfigDict(extra="forbid")

    round_id: str
    participants: tuple[str, ...]
    params: RoundParams
    value_bound: float
    max_weight: int
    noise_margin: int = Field(default=0, ge=0)
    layout: tuple[tuple[str, int, int], ...]
    phase: Phase = Phase.KEYS
    keys: dict[str, PlusKey] = Field(default_factory=dict)
    keyset: PlusKeySet | None = None
    bundles: dict[str, ShareBundle] = Field(default_factory=dict)
    shared: tuple[str, ...] | None = None
    reported: dict[str, tuple[int, str]] = Field(default_factory=dict)
    """node -> (weight, sha256 of its masked blob)."""
    commit: PlusCommit | None = None
    acks: dict[str, CommitAck] = Field(default_factory=dict)
    ackset: AckSet | None = None
    seed_shares: dict[str, dict[int, str]] = Field(default_factory=dict)
    key_shares: dict[str, dict[int, str]] = Field(default_factory=dict)
    revealed_by: list[str] = Field(default_factory=list)


class PlusCollector:
    """The aggregator's side of one SecAgg+ round."""

    def __init__(self, state: CollectorState, trust: TrustStore) -> None:
        if state.params.min_reporting < 2:
            raise ValueError("min_reporting must be at least 2")
        if len(state.participants) > MAX_BOXES:
            raise ValueError(f"{len(state.participants)} participants > {MAX_BOXES} per round")
        self.state, self.trust = state, trust
        self.fixed_point = FixedPoint(state.value_bound, state.max_weight)
        self._values: dict[str, np.ndarray] = {}
        self._graph_of: tuple[PlusKeySet, dict[str, tuple[str, ...]]] | None = None

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def round_id(self) -> str:
        return self.state.round_id

    @property
    def layout(self) -> Layout:
        return self.state.layout

    @property
    def keys_received(self) -> tuple[str, ...]:
        return tuple(sorted(self.state.keys))

    @property
    def shares_received(self) -> tuple[str, ...]:
        return tuple(sorted(self.state.bundles))

    @property
    def reported(self) -> tuple[str, ...]:
        return tuple(sorted(self.state.reported))

    @property
    def acked(self) -> tuple[str, ...]:
        return tuple(sorted(self.state.acks))

    def weight_of(self, node: str) -> int:
        return self.state.reported[node][0]

    def holders_of(self, owner: str) -> tuple[str, ...]:
        """The boxes holding `owner`'s shares: its neighbours and itself."""
        return (*self._graph()[owner], owner)

    def threshold_for(self, owner: str) -> int:
        """How many of its holders' shares rebuild `owner`'s secrets."""
        return self._threshold_of(owner)

    # -- keys ---------------------------------------------------------------------------------

    def add_key(self, key: PlusKey, signer: str) -> bool:
        """A participant's signed keys; True when this exact message was already held (the
        box may have restarted: its owner re-sends what followed)."""
        s = self.state
        if key.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the keys of {key.node_id}")
        self._round(key.round_id)
        known = s.keys.get(signer)
        if known is not None and known == key:
            return True
        self._expect(Phase.KEYS, f"keys of {signer}", late=True)
        if signer not in s.participants:
            raise SecAggError("not_participant", f"{signer} is not a participant of the round")
        key.verify(self.trust)
        if known is not None:
            raise SecAggError("duplicate_key", f"{signer} already sent other keys this round")
        taken = {k.share_key for k in s.keys.values()} | {k.mask_key for k in s.keys.values()}
        if key.share_key in taken or key.mask_key in taken or key.share_key == key.mask_key:
            raise SecAggError("duplicate_key", f"{signer}'s public key is already in use")
        s.keys[signer] = key
        return False

    def close_keys(self) -> PlusKeySet:
        """Fix the key set (boxes without keys are out of the round)."""
        s = self.state
        self._expect(Phase.KEYS, "closing the key set")
        if len(s.keys) < max(2, s.params.min_reporting):
            raise SecAggError(
                "too_few_reporting", f"{len(s.keys)} keys < min_reporting {s.params.min_reporting}"
            )
        s.keyset = PlusKeySet(round_id=s.round_id, keys=tuple(s.keys[n] for n in sorted(s.keys)))
        s.phase = Phase.SHARES
        return s.keyset

    # -- shares -------------------------------------------------------------------------------

    def add_shares(self, bundle: ShareBundle, signer: str) -> bool:
        """A box's sealed shares, one per neighbour; True for the same bundle again."""
        s = self.state
        keyset = self._keyset()
        if bundle.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the shares of {bundle.node_id}")
        self._round(bundle.round_id)
        known = s.bundles.get(signer)
        if known is not None:
            if known == bundle:
                return True
            raise SecAggError("duplicate", f"{signer} already sent other shares")
        self._expect(Phase.SHARES, f"shares of {signer}", late=True)
        if signer not in keyset.members:
            raise SecAggError("not_participant", f"{signer} has no keys in the key set")
        if bundle.keyset_sha256 != keyset.sha256:
            raise SecAggError("stale_keyset", f"{signer} shared against another key set")
        expected = list(self._graph()[signer])
        if [e.recipient for e in bundle.shares] != expected:
            raise SecAggError("missing_share", f"{signer}'s shares are not for its neighbours")
        s.bundles[signer] = bundle
        return False

    def close_shares(self) -> dict[str, ShareRelay]:
        """Fix who shared; the relay for each of them (masks are made with these only)."""
        s = self.state
        self._expect(Phase.SHARES, "closing the shares")
        shared = tuple(sorted(s.bundles))
        self._recoverable(shared, "shared")
        s.shared = shared
        s.phase = Phase.UPDATES
        return self.relays()

    def relays(self) -> dict[str, ShareRelay]:
        """The relays of the closed share phase (again, for a box that restarted)."""
        s = self.state
        keyset = self._keyset()
        if s.shared is None:
            raise SecAggError("wrong_phase", "the shares are not closed yet")
        graph = self._graph()
        out = {}
        for recipient in s.shared:
            relayed = []
            for sender in graph[recipient]:
                if sender not in s.bundles:
                    continue
                sealed = next(e for e in s.bundles[sender].shares if e.recipient == recipient)
                relayed.append(RelayedShare(sender=sender, sealed=sealed.sealed))
            out[recipient] = ShareRelay(
                round_id=s.round_id,
                recipient=recipient,
                keyset_sha256=keyset.sha256,
                shared=s.shared,
                shares=tuple(relayed),
            )
        return out

    # -- masked updates -----------------------------------------------------------------------

    def add_masked(self, blob: bytes, sender: str) -> None:
        """A masked update from `sender` (the artifact's verified signer)."""
        s = self.state
        digest = hashlib.sha256(blob).hexdigest()
        previous = s.reported.get(sender)
        if previous is not None:
            raise SecAggError(
                "replay" if previous[1] == digest else "duplicate",
                f"{sender} already reported in round {s.round_id}",
            )
        if s.phase in (Phase.KEYS, Phase.SHARES):
            raise SecAggError("wrong_phase", f"masked update of {sender} before the relay")
        if s.phase is not Phase.UPDATES:
            raise SecAggError("late", f"round {s.round_id} is committed without {sender}")
        assert s.shared is not None
        header, values = unpack_masked_v2(blob, self.layout, s.params.ring_bits)
        if header.node_id != sender:
            raise SecAggError("sender_mismatch", f"{sender} sent an update of {header.node_id}")
        self._round(header.round_id)
        if sender not in s.shared:
            raise SecAggError("not_participant", f"{sender} shared no keys in this round")
        if header.keyset_sha256 != self._keyset().sha256:
            raise SecAggError("stale_keyset", f"{sender} masked against another key set")
        if header.weight > s.max_weight:
            raise SecAggError(
                "weight_out_of_range", f"weight {header.weight} > max_weight {s.max_weight}"
            )
        s.reported[sender] = (header.weight, digest)
        self._values[sender] = values

    def restore_masked(self, blob: bytes, sender: str) -> None:
        """After a restart: take back a masked update this round already accepted."""
        known = self.state.reported.get(sender)
        if known is None or hashlib.sha256(blob).hexdigest() != known[1]:
            raise SecAggError("unknown_update", f"{sender}'s stored update was never accepted")
        _, values = unpack_masked_v2(blob, self.layout, self.state.params.ring_bits)
        self._values[sender] = values

    def commit(self) -> PlusCommit:
        """Fix who reported; late updates are refused from now on."""
        s = self.state
        self._expect(Phase.UPDATES, "commit")
        assert s.shared is not None
        reporting = tuple(sorted(s.reported))
        if len(reporting) < s.params.min_reporting:
            raise SecAggError(
                "too_few_reporting",
                f"{len(reporting)} masked updates < min_reporting {s.params.min_reporting}",
            )
        self._recoverable(reporting, "reporting")
        s.commit = PlusCommit(
            round_id=s.round_id,
            keyset_sha256=self._keyset().sha256,
            shared=s.shared,
            reporting=reporting,
            dropped=tuple(n for n in s.shared if n not in s.reported),
        )
        s.phase = Phase.ACKS
        return s.commit

    # -- consistency check --------------------------------------------------------------------

    def add_ack(self, ack: CommitAck, signer: str) -> bool:
        """A reporting box's signed ack of the commit; True for the same ack again."""
        s = self.state
        commit = self._commit()
        if ack.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the ack of {ack.node_id}")
        self._round(ack.round_id)
        known = s.acks.get(signer)
        if known is not None:
            if known == ack:
                return True
            raise SecAggError("duplicate", f"{signer} already acked")
        self._expect(Phase.ACKS, f"ack of {signer}", late=True)
        if ack.commit_sha256 != commit.sha256:
            raise SecAggError("stale_commit", f"{signer} acked another commit")
        if signer not in commit.reporting:
            raise SecAggError("not_reporting", f"{signer} is not in the reporting set")
        ack.verify(self.trust)
        s.acks[signer] = ack
        return False

    def close_acks(self) -> AckSet:
        """The acks to relay: every box checks them before it reveals anything."""
        s = self.state
        commit = self._commit()
        self._expect(Phase.ACKS, "closing the acks")
        self._recoverable(tuple(sorted(s.acks)), "acked")
        s.ackset = AckSet(
            round_id=s.round_id,
            commit_sha256=commit.sha256,
            acks=tuple(s.acks[n] for n in sorted(s.acks)),
        )
        s.phase = Phase.REVEALS
        return s.ackset

    # -- reveals ------------------------------------------------------------------------------

    def add_reveal(self, reveal: ShareReveal, signer: str) -> None:
        """A box's shares: self-mask shares of reporting owners, mask-key shares of dropped."""
        s = self.state
        commit = self._commit()
        if reveal.node_id != signer:
            raise SecAggError("sender_mismatch", f"{signer} sent the reveal of {reveal.node_id}")
        self._round(reveal.round_id)
        if signer in s.revealed_by:
            raise SecAggError("replay", f"{signer} already revealed its shares")
        if s.phase is not Phase.REVEALS and s.phase is not Phase.DONE:
            raise SecAggError("wrong_phase", f"reveal of {signer} in phase {s.phase.value}")
        if reveal.commit_sha256 != commit.sha256:
            raise SecAggError("stale_commit", f"{signer} answers another commit")
        if signer not in s.acks:
            raise SecAggError("not_reporting", f"{signer} is not in the ack set")
        assert s.shared is not None
        held = {*self._graph()[signer], signer} & set(s.shared)
        want_b = sorted(held & set(commit.reporting))
        want_k = sorted(held & set(commit.dropped))
        if [r.owner for r in reveal.self_mask] != want_b or [
            r.owner for r in reveal.mask_key
        ] != want_k:
            raise SecAggError(
                "missing_share",
                f"{signer} must reveal self-mask shares of {want_b} and "
                f"mask-key shares of {want_k}",
            )
        x = self._points()[signer]
        for revealed in reveal.self_mask:
            s.seed_shares.setdefault(revealed.owner, {})[x] = b64(share_bytes(revealed))
        for revealed in reveal.mask_key:
            s.key_shares.setdefault(revealed.owner, {})[x] = b64(share_bytes(revealed))
        s.revealed_by.append(signer)
        if self.missing_shares() == {}:
            s.phase = Phase.DONE

    def missing_shares(self) -> dict[str, int]:
        """Owners whose secret lacks shares, and how many more it needs."""
        s = self.state
        commit = self._commit()
        out = {}
        for owner in commit.reporting:
            need = self._threshold_of(owner) - len(s.seed_shares.get(owner, {}))
            if need > 0:
                out[owner] = need
        for owner in commit.dropped:
            need = self._threshold_of(owner) - len(s.key_shares.get(owner, {}))
            if need > 0:
                out[owner] = need
        return out

    # -- result -------------------------------------------------------------------------------

    def unmask(self) -> UnmaskedSum:
        """Sum the reporting boxes' vectors, remove every self mask and every pairwise mask
        with a dropped box, decode the weighted mean."""
        s = self.state
        commit = self._commit()
        if s.phase is not Phase.DONE:
            raise SecAggError(
                "wrong_phase", f"waiting for shares of {sorted(self.missing_shares())}"
            )
        missing = [n for n in commit.reporting if n not in self._values]
        if missing:
            raise SecAggError("lost", f"masked updates of {missing} are not at hand")
        bits = s.params.ring_bits
        keyset = self._keyset()
        total = np.zeros(layout_size(self.layout), np.uint32)
        weight = 0
        for node in commit.reporting:
            total = ring.add(total, self._values[node], 1, bits)
            weight += s.reported[node][0]
        for owner in commit.reporting:
            seed = self._rebuild(s.seed_shares[owner], owner)
            if self_mask_commitment(seed) != keyset.key_of(owner).self_mask_sha256:
                raise SecAggError("share_mismatch", f"{owner}'s self-mask seed does not rebuild")
            total = ring.apply_mask(total, seed, -1, bits)
        graph = self._graph()
        publics = {k.node_id: k.verify(self.trust) for k in keyset.keys}
        for dropped in commit.dropped:
            secret = self._rebuild(s.key_shares[dropped], dropped)
            private = X25519PrivateKey.from_private_bytes(secret)
            mask_public = publics[dropped][1]
            if private.public_key().public_bytes_raw() != mask_public:
                raise SecAggError("share_mismatch", f"{dropped}'s mask key does not rebuild")
            for peer in graph[dropped]:
                if peer not in commit.reporting:
                    continue
                seed = pair_seed(
                    private,
                    publics[peer][1],
                    round_id=s.round_id,
                    keyset_sha256=keyset.sha256,
                    own_id=dropped,
                    peer_id=peer,
                )
                # the peer added sign_for(peer, dropped) * PRG(seed); take it out again
                total = ring.apply_mask(total, seed, -sign_for(peer, dropped), bits)
        signed = ring.to_signed(total, bits)
        bound = LEVELS * weight + s.noise_margin
        if signed.size and int(np.abs(signed).max()) > bound:
            raise SecAggError(
                "unmask_failed",
                f"unmasked sum exceeds {bound} = 127 x total weight + noise margin: a mask was "
                "not removed or an update is forged",
            )
        mean = self.fixed_point.decode_signed(signed, weight, self.layout)
        return UnmaskedSum(mean, signed, weight, commit.reporting, commit.dropped)

    # -- helpers ------------------------------------------------------------------------------

    def _rebuild(self, shares: dict[int, str], owner: str) -> bytes:
        raw = {x: unb64(text, 66, f"share of {owner}") for x, text in shares.items()}
        return combine(raw, self._threshold_of(owner))

    def _graph(self) -> dict[str, tuple[str, ...]]:
        """The round's neighbour graph (computed once per key set object)."""
        keyset = self._keyset()
        if self._graph_of is None or self._graph_of[0] is not keyset:
            graph = neighbours(keyset.members, self.state.params.neighbours, self.state.round_id)
            self._graph_of = (keyset, graph)
        return self._graph_of[1]

    def _points(self) -> dict[str, int]:
        return {m: i + 1 for i, m in enumerate(self._keyset().members)}

    def _threshold_of(self, owner: str) -> int:
        return threshold_of(self.state.params.threshold, len(self._graph()[owner]) + 1)

    def _recoverable(self, alive: tuple[str, ...], what: str) -> None:
        """Every box that shared keeps at least t share holders among `alive`, or the step
        fails now (before anything is revealed)."""
        graph, alive_set = self._graph(), set(alive)
        owners = self.state.shared if self.state.shared is not None else alive
        for owner in owners:
            holders = ({*graph[owner], owner}) & alive_set
            if self.state.shared is not None:
                holders &= set(self.state.shared)
            t = self._threshold_of(owner)
            if len(holders) < t:
                raise SecAggError(
                    "too_many_dropouts",
                    f"{owner} has {len(holders)} {what} share holders < t = {t}: its secrets "
                    "could not be rebuilt",
                )

    def _expect(self, phase: Phase, what: str, *, late: bool = False) -> None:
        if self.state.phase is not phase:
            order = list(Phase)
            reason = (
                "late"
                if late and order.index(self.state.phase) > order.index(phase)
                else "wrong_phase"
            )
            raise SecAggError(
                reason, f"{what} in phase {self.state.phase.value}, not {phase.value}"
            )

    def _round(self, round_id: str) -> None:
        if round_id != self.state.round_id:
            raise SecAggError("wrong_round", f"{round_id} is not round {self.state.round_id}")

    def _keyset(self) -> PlusKeySet:
        if self.state.keyset is None:
            raise SecAggError("wrong_phase", "the key set is not closed yet")
        return self.state.keyset

    def _commit(self) -> PlusCommit:
        if self.state.commit is None:
            raise SecAggError("wrong_phase", "no commit yet")
        return self.state.commit
