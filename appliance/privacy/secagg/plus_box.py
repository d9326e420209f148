"""A box's side of one SecAgg+ round (plan version 2; Bonawitz et al. 2017, Bell et al. 2020).

Order: `key_message()` -> `accept_key_set()` (-> ShareBundle) -> `accept_relay()` ->
`mask()` -> `accept_commit()` (-> CommitAck) -> `reveal()` (-> ShareReveal).

What the box enforces itself, whatever the aggregator sends:

- every key in the relayed set carries its owner's identity signature;
- a share is accepted only from a neighbour, sealed under the key that neighbour signed;
- it masks one vector per round, with its self-mask b and pairwise masks with exactly the
  neighbours the relay lists as having shared (the commit must repeat that set);
- it acks only the first commit it sees, and only one that lists it as reporting, keeps at
  least `min_reporting` boxes and leaves at least t of its share holders reporting;
- it reveals only after the consistency check: an ack set holding at least t acks from its
  own share holders, each signed by its box over this very commit and echoing the same global
  adapter hash as its own (an aggregator that sent two globals, or two survivor sets, is
  caught here, before any share leaves the box);
- per owner it reveals the self-mask share (the owner reported) or the mask-key share (it
  dropped), never both: the kind revealed is remembered (and persisted) per owner.

`state` is the whole round as a JSON-able model; the owner persists it (encrypted, see
`vault.py`) before sending what a step returns, so a restarted box goes on from there.
"""

import hashlib
import os
from collections.abc import Callable
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from appliance.identity import NodeKey, TrustStore
from appliance.privacy.secagg import ring
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.graph import neighbours, threshold_of
from appliance.privacy.secagg.masks import SEED_BYTES, pair_seed, sign_for
from appliance.privacy.secagg.messages import b64, unb64
from appliance.privacy.secagg.plus_messages import (
    AckSet,
    CommitAck,
    EncryptedShare,
    MaskedHeaderV2,
    PlusCommit,
    PlusKey,
    PlusKeySet,
    RevealedShare,
    ShareBundle,
    ShareRelay,
    ShareReveal,
    pack_masked_v2,
)
from appliance.privacy.secagg.sealing import open_share, seal_share
from appliance.privacy.secagg.shamir import SHARE_BYTES, split

_COMMIT_CONTEXT = b"appliance/secagg/v2/self-mask"
Kind = Literal["self_mask", "mask_key"]


def self_mask_commitment(seed: bytes) -> str:
    """sha256 of the self-mask seed: published with the keys, checked after rebuilding."""
    return hashlib.sha256(_COMMIT_CONTEXT + seed).hexdigest()


class RoundParams(BaseModel):
    """The plan's numbers a box needs (from `SecureAggregationPlan` version 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_reporting: int = Field(ge=2)
    threshold: float = Field(gt=0.5, le=1.0)
    neighbours: int = Field(ge=0)
    ring_bits: Literal[16, 32]


class BoxState(BaseModel):
    """Everything a box knows in one round (secrets included: persist it encrypted only)."""

    model_config = ConfigDict(extra="forbid")

    round_id: str
    aggregator_id: str
    params: RoundParams
    share_sk: str
    mask_sk: str
    self_seed: str
    keyset: PlusKeySet | None = None
    bundle: ShareBundle | None = None
    own_shares: tuple[str, str] | None = None
    """This box's own shares of its self-mask seed and mask key (it holds them too)."""
    shared: tuple[str, ...] | None = None
    held: dict[str, tuple[str, str]] = Field(default_factory=dict)
    """owner -> (self-mask share, mask-key share) for every owner this box holds shares of."""
    masked: bool = False
    global_sha256: str | None = None
    dropped: bool = False
    commit: PlusCommit | None = None
    ack: CommitAck | None = None
    revealed: dict[str, Kind] = Field(default_factory=dict)


def _private(text: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(unb64(text, 32, "private key"))


def _public(text: str) -> bytes:
    return _private(text).public_key().public_bytes_raw()


class PlusParticipant:
    """One box in one SecAgg+ round. `on_change(state)` is called after every change, before
    the step returns its message (the owner persists the state there)."""

    def __init__(
        self,
        key: NodeKey,
        trust: TrustStore,
        state: BoxState,
        on_change: Callable[[BoxState], None] | None = None,
    ) -> None:
        self.key, self.trust, self.state = key, trust, state
        self.on_change = on_change or (lambda _s: None)
        self._mine: tuple[PlusKeySet, tuple[str, ...]] | None = None
        self._publics: tuple[PlusKeySet, dict[str, tuple[bytes, bytes]]] | None = None
        """Called with the state after every change (the owner persists it there)."""

    @classmethod
    def fresh(
        cls,
        key: NodeKey,
        trust: TrustStore,
        aggregator_id: str,
        round_id: str,
        *,
        params: RoundParams,
        on_change: Callable[[BoxState], None] | None = None,
        secrets: tuple[bytes, bytes, bytes] | None = None,
    ) -> "PlusParticipant":
        """New keys and self-mask seed for the round (`secrets` only to make tests exact)."""
        share, mask, seed = secrets or (
            X25519PrivateKey.generate().private_bytes_raw(),
            X25519PrivateKey.generate().private_bytes_raw(),
            os.urandom(SEED_BYTES),
        )
        state = BoxState(
            round_id=round_id,
            aggregator_id=aggregator_id,
            params=params,
            share_sk=b64(share),
            mask_sk=b64(mask),
            self_seed=b64(seed),
        )
        participant = cls(key, trust, state, on_change)
        participant._changed()
        return participant

    @property
    def node_id(self) -> str:
        return self.key.node_id

    @property
    def round_id(self) -> str:
        return self.state.round_id

    # -- keys and shares ----------------------------------------------------------------------

    def key_message(self) -> PlusKey:
        """This box's signed public keys and self-mask commitment for the round."""
        s = self.state
        seed = unb64(s.self_seed, SEED_BYTES, "self seed")
        return PlusKey.create(
            self.key,
            s.round_id,
            _public(s.share_sk),
            _public(s.mask_sk),
            self_mask_commitment(seed),
        )

    def accept_key_set(self, keyset: PlusKeySet, signer: str) -> ShareBundle:
        """Check the relayed key set; the Shamir shares of this box's secrets, sealed to each
        neighbour (the same bundle again if the same set is relayed again)."""
        s = self.state
        self._from_aggregator(signer, keyset.round_id)
        if s.keyset is not None:
            if keyset.sha256 == s.keyset.sha256 and s.bundle is not None:
                return s.bundle
            raise SecAggError("conflicting_keyset", f"round {s.round_id} already has a key set")
        if self.node_id not in keyset.members:
            raise SecAggError("not_participant", f"{self.node_id} is not in the key set")
        if keyset.key_of(self.node_id) != self.key_message():
            raise SecAggError("key_mismatch", "the key set holds other keys for this box")
        if len(keyset.members) < s.params.min_reporting:
            raise SecAggError(
                "too_few_reporting", f"{len(keyset.members)} keys < {s.params.min_reporting}"
            )
        publics = self._public_keys(keyset)  # every signature, checked once
        graph = neighbours(keyset.members, s.params.neighbours, s.round_id)
        mine = graph[self.node_id]
        holders = (*mine, self.node_id)
        t = threshold_of(s.params.threshold, len(holders))
        x = _points(keyset)
        xs = [x[h] for h in holders]
        seed_shares = split(unb64(s.self_seed, SEED_BYTES, "self seed"), t, xs)
        key_shares = split(unb64(s.mask_sk, 32, "mask key"), t, xs)
        sealed = []
        for peer in mine:
            sealed.append(
                EncryptedShare(
                    recipient=peer,
                    sealed=seal_share(
                        _private(s.share_sk),
                        publics[peer][0],
                        seed_shares[x[peer]] + key_shares[x[peer]],
                        round_id=s.round_id,
                        keyset_sha256=keyset.sha256,
                        sender=self.node_id,
                        recipient=peer,
                    ),
                )
            )
        own = x[self.node_id]
        s.keyset = keyset
        s.own_shares = (b64(seed_shares[own]), b64(key_shares[own]))
        s.bundle = ShareBundle(
            round_id=s.round_id,
            node_id=self.node_id,
            keyset_sha256=keyset.sha256,
            shares=tuple(sealed),
        )
        self._changed()
        return s.bundle

    def accept_relay(self, relay: ShareRelay, signer: str) -> None:
        """Open the neighbours' shares sealed to this box and fix who it masks with."""
        s = self.state
        keyset = self._keyset()
        self._from_aggregator(signer, relay.round_id)
        if relay.recipient != self.node_id:
            raise SecAggError("not_recipient", f"relay for {relay.recipient}")
        if relay.keyset_sha256 != keyset.sha256:
            raise SecAggError("stale_keyset", "the relay names another key set")
        if s.shared is not None:
            if tuple(relay.shared) == s.shared:
                return
            raise SecAggError("conflicting_relay", "this round's shares were already relayed")
        if self.node_id not in relay.shared or not set(relay.shared) <= set(keyset.members):
            raise SecAggError("wrong_members", "the shared set is not within the key set")
        mine = self._neighbours()
        expected = sorted(set(mine) & set(relay.shared))
        if [r.sender for r in relay.shares] != expected:
            raise SecAggError(
                "missing_share", f"shares from {[r.sender for r in relay.shares]}, not {expected}"
            )
        t = self._threshold()
        if len(expected) + 1 < t:
            raise SecAggError(
                "too_few_shared", f"{len(expected) + 1} of this box's holders shared < t = {t}"
            )
        held = {}
        for relayed in relay.shares:
            publics = self._public_keys(keyset)[relayed.sender]
            plain = open_share(
                _private(s.share_sk),
                publics[0],
                relayed.sealed,
                round_id=s.round_id,
                keyset_sha256=keyset.sha256,
                sender=relayed.sender,
                recipient=self.node_id,
            )
            held[relayed.sender] = (b64(plain[:SHARE_BYTES]), b64(plain[SHARE_BYTES:]))
        assert s.own_shares is not None
        held[self.node_id] = s.own_shares
        s.shared, s.held = tuple(relay.shared), held
        self._changed()

    # -- the masked update --------------------------------------------------------------------

    def mask(
        self,
        values: np.ndarray,
        layout: tuple[tuple[str, int, int], ...],
        weight: int,
        global_sha256: str,
    ) -> bytes:
        """y = x + PRG(b) + sum over neighbours that shared of +-PRG(s_ij), in the round's
        ring; once per round. `global_sha256` is echoed in this box's commit ack."""
        s = self.state
        keyset = self._keyset()
        if s.shared is None:
            raise SecAggError("wrong_phase", "the shares were not relayed yet")
        if s.masked:
            raise SecAggError("already_masked", "a box masks one update per round")
        if s.dropped:
            raise SecAggError("late", "the round was committed without this box")
        bits = s.params.ring_bits
        masked = ring.reduce(values, bits)
        masked = ring.apply_mask(masked, unb64(s.self_seed, SEED_BYTES, "self seed"), 1, bits)
        for peer, seed in self._pair_seeds(keyset, set(s.shared)).items():
            masked = ring.apply_mask(masked, seed, sign_for(self.node_id, peer), bits)
        s.masked, s.global_sha256 = True, global_sha256
        self._changed()
        header = MaskedHeaderV2(
            format=2,
            round_id=s.round_id,
            node_id=self.node_id,
            keyset_sha256=keyset.sha256,
            ring_bits=bits,
            weight=weight,
            layout=layout,
            count=int(masked.size),
        )
        return pack_masked_v2(header, masked)

    # -- commit, consistency check, reveal ----------------------------------------------------

    def accept_commit(self, commit: PlusCommit, signer: str) -> CommitAck:
        """Sign the first acceptable commit (with the global hash this box trained from)."""
        s = self.state
        keyset = self._keyset()
        self._from_aggregator(signer, commit.round_id)
        if commit.keyset_sha256 != keyset.sha256:
            raise SecAggError("stale_keyset", "the commit names another key set")
        if s.commit is not None:
            if commit.sha256 == s.commit.sha256 and s.ack is not None:
                return s.ack
            raise SecAggError("conflicting_commit", "this round was already committed otherwise")
        if s.shared is None or tuple(commit.shared) != s.shared:
            raise SecAggError("wrong_members", "the commit's shared set is not the relayed one")
        if self.node_id not in commit.reporting:
            s.dropped = True  # never mask now: the neighbours reveal its mask-key shares
            self._changed()
            raise SecAggError("not_reporting", f"{self.node_id} is not in the reporting set")
        if not s.masked or s.global_sha256 is None:
            raise SecAggError("not_reporting", f"{self.node_id} sent no masked update")
        if len(commit.reporting) < s.params.min_reporting:
            raise SecAggError(
                "too_few_reporting",
                f"{len(commit.reporting)} reporting < {s.params.min_reporting}: the sum would "
                "expose single updates",
            )
        holders = {*self._neighbours(), self.node_id}
        t = self._threshold()
        if len(holders & set(commit.reporting)) < t:
            raise SecAggError("too_few_reporting", f"fewer than t = {t} holders reported")
        ack = CommitAck.create(self.key, s.round_id, commit.sha256, s.global_sha256)
        s.commit, s.ack = commit, ack
        self._changed()
        return ack

    def reveal(self, acks: AckSet, signer: str) -> ShareReveal:
        """After the consistency check, the shares the unmasking needs; one kind per owner."""
        s = self.state
        self._from_aggregator(signer, acks.round_id)
        commit, own_ack = s.commit, s.ack
        if commit is None or own_ack is None:
            raise SecAggError("wrong_phase", "no commit acked yet")
        if acks.commit_sha256 != commit.sha256:
            raise SecAggError("stale_commit", "the acks answer another commit")
        if own_ack not in acks.acks:
            raise SecAggError("missing_ack", "this box's own ack is not in the set")
        self._check_acks(acks, commit)
        self_mask: list[RevealedShare] = []
        mask_key: list[RevealedShare] = []
        for owner in sorted(s.held):
            kind: Kind = "self_mask" if owner in commit.reporting else "mask_key"
            if owner not in commit.reporting and owner not in commit.dropped:
                continue  # cannot happen: held owners shared, and shared is partitioned
            earlier = s.revealed.get(owner)
            if earlier is not None and earlier != kind:
                raise SecAggError(
                    "both_secrets", f"{owner}'s {earlier} share was revealed; not its {kind}"
                )
            seed_share, key_share = s.held[owner]
            share = RevealedShare(
                owner=owner, share=seed_share if kind == "self_mask" else key_share
            )
            (self_mask if kind == "self_mask" else mask_key).append(share)
        for share in self_mask:
            s.revealed[share.owner] = "self_mask"
        for share in mask_key:
            s.revealed[share.owner] = "mask_key"
        self._changed()
        return ShareReveal(
            round_id=s.round_id,
            node_id=self.node_id,
            commit_sha256=commit.sha256,
            self_mask=tuple(self_mask),
            mask_key=tuple(mask_key),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _check_acks(self, acks: AckSet, commit: PlusCommit) -> None:
        """The consistency check: every ack signed by its reporting box over this commit, with
        the global hash this box trained from, and t of this box's share holders among them."""
        s = self.state
        for ack in acks.acks:
            if ack.round_id != s.round_id or ack.commit_sha256 != commit.sha256:
                raise SecAggError("inconsistent", f"{ack.node_id} acked another commit")
            if ack.node_id not in commit.reporting:
                raise SecAggError("inconsistent", f"{ack.node_id} is not reporting")
            ack.verify(self.trust)
            if ack.global_sha256 != s.global_sha256:
                raise SecAggError(
                    "global_mismatch",
                    f"{ack.node_id} trained from global {ack.global_sha256[:12]}, this box from "
                    f"{(s.global_sha256 or '')[:12]}: the aggregator sent different adapters",
                )
        holders = {*self._neighbours(), self.node_id}
        t = self._threshold()
        if len(holders & set(acks.signers)) < t:
            raise SecAggError("too_few_acks", f"fewer than t = {t} of this box's holders acked")

    def _pair_seeds(self, keyset: PlusKeySet, shared: set[str]) -> dict[str, bytes]:
        own = _private(self.state.mask_sk)
        seeds = {}
        for peer in self._neighbours():
            if peer not in shared:
                continue
            seeds[peer] = pair_seed(
                own,
                self._public_keys(keyset)[peer][1],
                round_id=self.state.round_id,
                keyset_sha256=keyset.sha256,
                own_id=self.node_id,
                peer_id=peer,
            )
        return seeds

    def _public_keys(self, keyset: PlusKeySet) -> dict[str, tuple[bytes, bytes]]:
        """Every member's (share, mask) public key, each signature verified once."""
        if self._publics is None or self._publics[0] is not keyset:
            self._publics = (keyset, {k.node_id: k.verify(self.trust) for k in keyset.keys})
        return self._publics[1]

    def _neighbours(self) -> tuple[str, ...]:
        """This box's neighbours in the round (computed once per key set object)."""
        keyset = self._keyset()
        if self._mine is None or self._mine[0] is not keyset:
            graph = neighbours(keyset.members, self.state.params.neighbours, self.state.round_id)
            self._mine = (keyset, graph[self.node_id])
        return self._mine[1]

    def _threshold(self) -> int:
        return threshold_of(self.state.params.threshold, len(self._neighbours()) + 1)

    def _keyset(self) -> PlusKeySet:
        if self.state.keyset is None:
            raise SecAggError("wrong_phase", "no key set accepted yet")
        return self.state.keyset

    def _from_aggregator(self, signer: str, round_id: str) -> None:
        if signer != self.state.aggregator_id:
            raise SecAggError("sender_mismatch", f"{signer} is not the aggregator")
        if round_id != self.state.round_id:
            raise SecAggError("wrong_round", f"{round_id} is not round {self.state.round_id}")

    def _changed(self) -> None:
        self.on_change(self.state)


def _points(keyset: PlusKeySet) -> dict[str, int]:
    """Each member's Shamir point: its 1-based place in the key set."""
    return {member: i + 1 for i, member in enumerate(keyset.members)}
