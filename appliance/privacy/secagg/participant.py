"""A box's side of one secure-aggregation round.

Order: `key_message()` -> `accept_key_set()` -> `mask()` -> `reveal()`. Each step checks what
the aggregator sent; the rules that keep the box's update private are enforced here, not
trusted to the aggregator:

- every key in the relayed set must carry its owner's identity signature (no substitution);
- the box masks exactly one vector per round (two vectors under the same masks would leak
  their difference);
- it reveals seeds only for peers the signed commit lists as dropped, never for a reporting
  peer, only once per round, and only for the first commit it sees (a second, different
  commit could declare a reporting peer dropped to unmask it);
- it reveals nothing when fewer than `min_reporting` boxes reported (a sum of one is that box);
- once a commit lists it as dropped it masks nothing more in the round (its peers reveal
  their seeds with it, so a masked update would be readable).
"""

from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from appliance.identity import NodeKey, TrustStore
from appliance.privacy.secagg.encoding import Encoded, Layout, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.masks import apply_mask, pair_seed, sign_for
from appliance.privacy.secagg.messages import (
    KeySet,
    MaskedHeader,
    MaskKey,
    PeerSeed,
    ReportingSet,
    SeedReveal,
    b64,
    pack_masked,
)


@dataclass
class Participant:
    """One box in one round; its X25519 key lives only in memory and only for the round."""

    key: NodeKey
    trust: TrustStore
    aggregator_id: str
    round_id: str
    min_reporting: int = 2
    mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    keyset: KeySet | None = field(default=None, init=False)
    _seeds: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)
    _masked: bool = field(default=False, init=False)
    _dropped: bool = field(default=False, init=False)
    _commit_sha256: str | None = field(default=None, init=False)

    @property
    def node_id(self) -> str:
        return self.key.node_id

    def key_message(self) -> MaskKey:
        """This box's public mask key for the round, signed with its identity key."""
        return MaskKey.create(
            self.key, self.round_id, self.mask_key.public_key().public_bytes_raw()
        )

    def accept_key_set(self, keyset: KeySet, signer: str) -> None:
        """Verify the relayed key set and agree a seed with every peer in it."""
        self._from_aggregator(signer, keyset.round_id)
        if self.keyset is not None:
            if keyset.sha256 == self.keyset.sha256:
                return  # the same set relayed again
            raise SecAggError("conflicting_keyset", f"round {self.round_id} already has a key set")
        own = [k for k in keyset.keys if k.node_id == self.node_id]
        if not own:
            raise SecAggError("not_participant", f"{self.node_id} is not in the key set")
        if own[0].public_key != b64(self.mask_key.public_key().public_bytes_raw()):
            raise SecAggError("key_mismatch", "the key set holds another key for this box")
        seeds = {}
        digest = keyset.sha256
        for entry in keyset.keys:
            public = entry.verify(self.trust)  # every inner signature, ours included
            if entry.node_id == self.node_id:
                continue
            seeds[entry.node_id] = pair_seed(
                self.mask_key,
                public,
                round_id=self.round_id,
                keyset_sha256=digest,
                own_id=self.node_id,
                peer_id=entry.node_id,
            )
        self.keyset, self._seeds = keyset, seeds

    def mask(self, encoded: Encoded, layout: Layout) -> bytes:
        """The masked-update blob: the encoded vector plus every pairwise mask, once per round."""
        keyset = self._require_keyset()
        if self._masked:
            raise SecAggError("already_masked", "a box masks one update per round")
        if self._dropped:
            raise SecAggError("late", "the round was committed without this box")
        if encoded.values.dtype != np.uint32 or encoded.values.size != layout_size(layout):
            raise SecAggError("wrong_length", "encoded vector does not match the layout")
        masked = encoded.values.copy()
        for peer, seed in self._seeds.items():
            masked = apply_mask(masked, seed, sign_for(self.node_id, peer))
        self._masked = True
        header = MaskedHeader(
            format=1,
            round_id=self.round_id,
            node_id=self.node_id,
            keyset_sha256=keyset.sha256,
            weight=encoded.weight,
            layout=layout,
            count=masked.size,
        )
        return pack_masked(header, masked)

    def reveal(self, commit: ReportingSet, signer: str) -> SeedReveal:
        """Seeds shared with the dropped boxes of the committed round, after every check."""
        self._from_aggregator(signer, commit.round_id)
        keyset = self._require_keyset()
        if commit.keyset_sha256 != keyset.sha256:
            raise SecAggError("stale_keyset", "the commit names another key set")
        if self._commit_sha256 is not None and self._commit_sha256 != commit.sha256:
            raise SecAggError(
                "conflicting_commit", "this round was already committed with other sets"
            )
        members = set(keyset.members)
        if set(commit.reporting) | set(commit.dropped) != members or len(commit.reporting) + len(
            commit.dropped
        ) != len(members):
            raise SecAggError("wrong_members", "reporting and dropped do not partition the key set")
        if self.node_id not in commit.reporting:
            self._dropped = True  # never send an update now: the peers reveal their seeds
            raise SecAggError("not_reporting", f"{self.node_id} is not in the reporting set")
        if not self._masked:
            raise SecAggError("not_reporting", f"{self.node_id} sent no masked update")
        if len(commit.reporting) < self.min_reporting:
            raise SecAggError(
                "too_few_reporting",
                f"{len(commit.reporting)} reporting boxes < {self.min_reporting}: the sum "
                "would expose single updates",
            )
        self._commit_sha256 = commit.sha256
        seeds = tuple(
            PeerSeed(peer=peer, seed=b64(self.seed_for(peer, commit))) for peer in commit.dropped
        )
        return SeedReveal(
            round_id=self.round_id,
            node_id=self.node_id,
            commit_sha256=commit.sha256,
            seeds=seeds,
        )

    def seed_for(self, peer: str, commit: ReportingSet) -> bytes:
        """One pairwise seed; refused for any peer the commit lists as reporting."""
        if peer in commit.reporting:
            raise SecAggError(
                "not_dropped", f"{peer} reported: revealing its seed would unmask its update"
            )
        if peer not in commit.dropped or peer not in self._seeds:
            raise SecAggError("not_dropped", f"{peer} is not a dropped member of the key set")
        return self._seeds[peer]

    def _from_aggregator(self, signer: str, round_id: str) -> None:
        if signer != self.aggregator_id:
            raise SecAggError("sender_mismatch", f"{signer} is not the aggregator")
        if round_id != self.round_id:
            raise SecAggError("wrong_round", f"{round_id} is not round {self.round_id}")

    def _require_keyset(self) -> KeySet:
        if self.keyset is None:
            raise SecAggError("wrong_phase", "no key set accepted yet")
        return self.keyset
