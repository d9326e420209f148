"""SecAgg+ (plan version 2) as a round protocol (appliance/federation/protocol.py).

Aggregator (`PlusRounds`): opens a `PlusCollector` when it configures a round (the plan
names threshold, neighbours, ring and DP noise), relays the key set once every participant's
keys are in (or `key_wait_s` passed), relays the shares once every key-set member shared (or
`share_wait_s` passed), admits each masked update before the round store keeps it; when
the round closes it commits the reporting set (phase `committed`), relays the signed acks
once every reporting box acked or `reveal_wait_s` passed (`revealing`), and answers the
unmasked sum once every secret has t shares, or fails after `reveal_wait_s` more. With DP
noise on, it records the round in the fleet's privacy ledger and reports the fleet epsilon.

Box (`PlusBox`): makes and persists its round keys when it joins, clips (DP) and encodes its
update to the round's fixed point, adds its noise share, persists it, and sends it masked
as soon as its shares are relayed; everything else the session answers on the transport
thread. After a restart both sides load the round from their vault and go on.
"""

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.federation.audit_events import AggregationFacts
from appliance.federation.messages import RoundAnnouncement, SecureAggregationPlan, TrainingPlan
from appliance.federation.privacy_claim import FleetDpReport
from appliance.federation.protocol import (
    Aggregated,
    AggregatorProtocol,
    BoxProtocol,
    Failed,
    LocalUpdate,
    Outcome,
    Prepared,
    RefusedUpdateError,
    Waiting,
)
from appliance.federation.rounds import Round, StoredUpdate
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import TrustStore
from appliance.privacy.accountant import PrivacyLedger, Release
from appliance.privacy.clipping import clip
from appliance.privacy.secagg import noise, ring
from appliance.privacy.secagg.collector import UnmaskedSum, secure_fedavg
from appliance.privacy.secagg.encoding import LEVELS, FixedPoint, layout_of, layout_size
from appliance.privacy.secagg.errors import SecAggError
from appliance.privacy.secagg.messages import b64, unb64
from appliance.privacy.secagg.plus_box import RoundParams
from appliance.privacy.secagg.plus_collector import CollectorState, Phase, PlusCollector
from appliance.privacy.secagg.plus_session import PlusAggregatorSession, PlusBoxSession, vault_of
from appliance.privacy.secagg.session import MASKED_UPDATE
from appliance.transport.node import TransportNode

log = logging.getLogger(__name__)
PENDING_SUFFIX = ".pending"
FLEET_LEDGER = "secagg-fleet-privacy.json"


def params_of(plan: SecureAggregationPlan) -> RoundParams:
    """What a box and the collector need of a version-2 plan."""
    return RoundParams(
        min_reporting=plan.min_reporting,
        threshold=plan.threshold,
        neighbours=plan.neighbours,
        ring_bits=plan.ring_bits,
    )


def noise_std_of(plan: SecureAggregationPlan, count: int) -> float:
    """Each box's noise share (code units) for a plan and vector length; 0 without DP."""
    if plan.noise_multiplier <= 0:
        return 0.0
    fixed = FixedPoint(plan.value_bound, plan.max_weight)
    sens = noise.sensitivity(plan.clip_norm, fixed.step, plan.max_weight, count)
    return noise.share_std(plan.noise_multiplier, sens, plan.min_reporting)


def plan_for(
    settings: SecureAggregationSettings, participants: int, count: int
) -> SecureAggregationPlan:
    """The version-2 plan for a round of `participants` boxes and `count` values: the
    smallest ring whose no-wrap bound holds unless the config fixes one."""
    s = settings
    plan = SecureAggregationPlan(
        value_bound=s.value_bound,
        max_weight=s.max_weight,
        min_reporting=s.min_reporting,
        version=2,
        threshold=s.threshold,
        neighbours=s.neighbours,
        ring_bits=32,
        noise_multiplier=s.noise_multiplier,
        clip_norm=s.clip_norm,
    )
    bound = participants * (LEVELS * s.max_weight + noise.per_box_margin(noise_std_of(plan, count)))
    bits = s.ring_bits or ring.ring_bits_for(bound)
    if bound > ring.signed_limit(bits):
        raise ValueError(
            f"{participants} boxes could wrap a {bits}-bit sum (bound {bound}); lower "
            "max_weight or the noise, or use ring_bits = 32"
        )
    return plan.model_copy(update={"ring_bits": bits})


def adapter_sha256(base: GlobalAdapter) -> str:
    """A digest of the global adapter a box trains from (echoed in its commit ack)."""
    h = hashlib.sha256()
    names = sorted(base.factors)
    head: list[object] = [base.version, base.alpha, base.frozen_a]
    head += [[n, *base.factors[n][0].shape, *base.factors[n][1].shape] for n in names]
    h.update(json.dumps(head).encode())
    for name in names:
        for part in base.factors[name]:
            h.update(np.ascontiguousarray(part, dtype="<f4").tobytes())
    return h.hexdigest()


class PlusRounds(AggregatorProtocol):
    """The aggregator's side (when `fleet.secure_aggregation.version = 2`)."""

    update_kind = MASKED_UPDATE

    def __init__(
        self, transport: TransportNode, trust: TrustStore, settings: SecureAggregationSettings
    ) -> None:
        self.settings = settings
        self.session = PlusAggregatorSession(transport, trust, vault_of(transport))
        self.session.restore()  # a round in flight when the aggregator stopped goes on
        self.ledger_path: Path = transport.outbox.path.parent / FLEET_LEDGER
        self._failed: dict[str, str] = {}

    def configure(
        self,
        plan: TrainingPlan,
        round_id: str,
        participants: tuple[str, ...],
        base: GlobalAdapter,
        now: float,
    ) -> TrainingPlan:
        """Start collecting keys for the new round (they may come at once)."""
        if not base.frozen_a:
            raise ValueError("secure aggregation needs a frozen A (training.freeze_a = true)")
        layout = layout_of(base)
        secure = plan_for(self.settings, len(participants), layout_size(layout))
        margin = noise.per_box_margin(noise_std_of(secure, layout_size(layout)))
        state = CollectorState(
            round_id=round_id,
            participants=participants,
            params=params_of(secure),
            value_bound=secure.value_bound,
            max_weight=secure.max_weight,
            noise_margin=len(participants) * margin,
            layout=layout,
        )
        self.session.begin(state, now)
        return plan.model_copy(update={"secure_aggregation": secure})

    def tick(self, now: float) -> None:
        """Relay the key set, then the shares, when everyone is in or the wait is over."""
        collector, timers = self.session.collector, self.session.round
        if collector is None or timers is None or collector.round_id in self._failed:
            return
        try:
            if collector.phase is Phase.KEYS:
                self._close_keys(collector, now - timers.opened_at >= self.settings.key_wait_s, now)
            elif collector.phase is Phase.SHARES:
                keyset = collector.state.keyset
                assert keyset is not None
                everyone = set(collector.shares_received) == set(keyset.members)
                if everyone or now - timers.phase_at >= self.settings.share_wait_s:
                    relays = self.session.publish_relays(now)
                    log.info(
                        "round %s: shares of %d boxes relayed", collector.round_id, len(relays)
                    )
        except SecAggError as exc:
            log.error("round %s: secure aggregation failed: %s", collector.round_id, exc)
            self._failed[collector.round_id] = f"{exc.reason}: {exc.detail}"

    def _close_keys(self, collector: PlusCollector, waited: bool, now: float) -> None:
        have = len(collector.keys_received)
        everyone = have == len(collector.state.participants)
        if everyone or (waited and have >= max(2, collector.state.params.min_reporting)):
            keyset = self.session.publish_keys(now)
            log.info(
                "round %s: key set of %d boxes relayed (%s)",
                collector.round_id,
                len(keyset.keys),
                "all keys in" if everyone else "key wait over",
            )

    def admit(self, blob: bytes, sender: str, round_: Round, base: GlobalAdapter) -> int:
        """Validate and hold a masked update; its weight."""
        del base
        collector = self.session.restore(round_.round_id)
        if collector is None or collector.round_id != round_.round_id:
            raise RefusedUpdateError(f"wrong_round: {round_.round_id} is not the open secure round")
        try:
            return self.session.add_masked(blob, sender, time.time())
        except SecAggError as exc:
            raise RefusedUpdateError(f"{exc.reason}: {exc.detail}") from None

    def finish(
        self, round_: Round, base: GlobalAdapter, updates: Iterable[StoredUpdate], now: float
    ) -> Outcome:
        """Commit (phase `committed`), relay the acks (`revealing`), unmask."""
        round_id = round_.round_id
        collector = self.session.restore(round_id)
        if collector is None or collector.round_id != round_id:
            return Failed(f"secure aggregation: lost: no state for {round_id}")
        stored = list(updates)
        try:
            if round_id in self._failed:
                raise SecAggError(*self._failed.pop(round_id).split(": ", 1))
            for update in stored:
                if update.node_id in collector.state.reported:
                    collector.restore_masked(update.blob, update.node_id)
            waiting = self._advance(collector, now)
            if waiting is not None:
                return waiting
            unmasked = self.session.step(lambda c: c.unmask(), now)
            assert isinstance(unmasked, UnmaskedSum)
        except SecAggError as exc:
            log.error("round %s: secure aggregation failed: %s", round_id, exc)
            self.session.end(round_id)
            return Failed(f"secure aggregation: {exc.reason}: {exc.detail}")
        result = secure_fedavg(base, unmasked)
        report = dict(result.report)
        plan = round_.plan.secure_aggregation
        report["ring_bits"] = plan.ring_bits if plan is not None else 32
        dense = 4 * layout_size(layout_of(base))
        facts = AggregationFacts(
            participants=tuple(unmasked.reporting),
            dropped=tuple(unmasked.dropped),
            update_bytes={u.node_id: len(u.blob) for u in stored},
            update_dense_fp32_bytes={u.node_id: dense for u in stored},
            rejected={},
            update_sha256={u.node_id: u.sha256 for u in stored},
            strategy=report,
            codec=round_.plan.codec,
            secure_aggregation=plan,
            fleet_privacy=self._fleet_privacy(round_, unmasked),
        )
        self.session.end(round_id)
        return Aggregated(type(result)(result.factors, report), facts)

    def _advance(self, collector: PlusCollector, now: float) -> Waiting | None:
        """One step of a closed round; Waiting while it needs more, None once unmaskable."""
        timers = self.session.round
        assert timers is not None
        phase = collector.phase
        if phase in (Phase.KEYS, Phase.SHARES):
            raise SecAggError("too_few_reporting", f"round closed in phase {phase.value}")
        if phase is Phase.UPDATES:
            made = self.session.publish_commit(now)
            log.info(
                "round %s: committed %d reporting, %d dropped",
                collector.round_id,
                len(made.reporting),
                len(made.dropped),
            )
            return Waiting("committed", "waiting for the reporting boxes' acks")
        commit = collector.state.commit
        assert commit is not None
        waited = now - timers.phase_at >= self.settings.reveal_wait_s
        if phase is Phase.ACKS:
            if set(collector.acked) == set(commit.reporting) or waited:
                acks = self.session.publish_acks(now)
                log.info("round %s: %d acks relayed", collector.round_id, len(acks.acks))
                return Waiting("revealing", "waiting for shares")
            return Waiting("committed", "waiting for the reporting boxes' acks")
        if phase is Phase.REVEALS:
            missing = collector.missing_shares()
            if waited:
                raise SecAggError("reveal_timeout", f"secrets of {sorted(missing)} lack shares")
            return Waiting("revealing", f"secrets of {len(missing)} boxes lack shares")
        return None

    def _fleet_privacy(self, round_: Round, unmasked: UnmaskedSum) -> FleetDpReport | None:
        """The fleet-level DP of the round (the ledger composes all rounds); None without
        noise."""
        plan = round_.plan.secure_aggregation
        if plan is None or plan.noise_multiplier <= 0:
            return None
        z = noise.effective_multiplier(
            plan.noise_multiplier, len(unmasked.reporting), plan.min_reporting
        )
        ledger = PrivacyLedger.load(self.ledger_path)
        if round_.round_id not in ledger.rounds():
            ledger.record(Release(round_.round_id, z))
        return FleetDpReport(
            noise_multiplier=z,
            clip_norm=plan.clip_norm,
            delta=self.settings.dp_delta,
            epsilon=ledger.spent(self.settings.dp_delta),
            rounds=len(ledger.rounds()),
        )


class _Pending(BaseModel):
    """An encoded update waiting for its round's shares to be relayed (persisted)."""

    model_config = ConfigDict(extra="forbid")

    round_id: str
    values: str
    """int64 little-endian, base64."""
    layout: tuple[tuple[str, int, int], ...]
    weight: int
    global_sha256: str

    def array(self) -> np.ndarray:
        raw = unb64(self.values, 8 * layout_size(self.layout), "pending values")
        return np.frombuffer(raw, dtype="<i8").astype(np.int64)


class PlusBox(BoxProtocol):
    """A box's side: one round at a time."""

    update_kind = MASKED_UPDATE

    def __init__(self, transport: TransportNode, aggregator_id: str) -> None:
        self.vault = vault_of(transport)
        self.session = PlusBoxSession(transport, aggregator_id, self.vault)
        self._lock = threading.Lock()
        self._pending: _Pending | None = None
        restored = self.session.restore()
        self._hello_due = restored is not None
        if restored is not None:
            raw = self.vault.load(restored + PENDING_SUFFIX)
            self._pending = None if raw is None else _Pending.model_validate_json(raw)

    def join(self, round_: RoundAnnouncement) -> None:
        """Make and persist this box's round keys, then publish them."""
        plan = self._plan(round_)
        with self._lock:
            if self._pending is not None and self._pending.round_id != round_.round_id:
                self.vault.remove(self._pending.round_id + PENDING_SUFFIX)
                self._pending = None
        self.session.join(round_.round_id, params_of(plan))

    def prepare(self, round_: RoundAnnouncement, local: LocalUpdate) -> Prepared:
        """Clip (DP), encode to the round's fixed point, add the noise share, persist; sent
        masked by the next `tick` once the shares are relayed, never from here: the box marks
        the round done after `prepare` returns, so a crash right after the send would make it
        train the round again. Credited: the codes without the noise."""
        plan = self._plan(round_)
        fixed, layout = FixedPoint(plan.value_bound, plan.max_weight), layout_of(local.base)
        deltas = local.deltas
        if plan.noise_multiplier > 0:
            b_only = {name: Delta(None, d.b) for name, d in deltas.items()}
            deltas = clip(b_only, plan.clip_norm).deltas
        encoded = fixed.encode(deltas, layout, local.sample_count)
        values = encoded.values.view(np.int32).astype(np.int64)
        std = noise_std_of(plan, values.size)
        values = values + noise.noise_share(values.size, std, np.random.default_rng())
        pending = _Pending(
            round_id=round_.round_id,
            values=b64(values.astype("<i8").tobytes()),
            layout=layout,
            weight=encoded.weight,
            global_sha256=adapter_sha256(local.base),
        )
        self.vault.save(round_.round_id + PENDING_SUFFIX, pending.model_dump_json().encode())
        with self._lock:
            self._pending = pending
        credited = {name: Delta(None, b) for name, b in fixed.reconstruct(encoded, layout).items()}
        return Prepared(credited, None)

    def tick(self) -> None:
        """Say hello after a restart; send the pending masked update once shares are here."""
        if self._hello_due:
            self._hello_due = False
            self.session.hello()
        with self._lock:
            pending = self._pending
            participant = self.session.participant
            if (
                pending is None
                or participant is None
                or participant.round_id != pending.round_id
                or not self.session.relayed.is_set()
            ):
                return
            self._pending = None
        try:
            if not participant.state.masked:
                blob = self.session.send(
                    pending.array(), pending.layout, pending.weight, pending.global_sha256
                )
                log.info(
                    "round %s: masked update sent, %d bytes (weight %d)",
                    pending.round_id,
                    len(blob),
                    pending.weight,
                )
        except SecAggError as exc:
            log.error("round %s: masked update not sent: %s", pending.round_id, exc)
        self.vault.remove(pending.round_id + PENDING_SUFFIX)

    @staticmethod
    def _plan(round_: RoundAnnouncement) -> SecureAggregationPlan:
        plan = round_.plan.secure_aggregation
        if plan is None or plan.version != 2:
            raise ValueError(f"round {round_.round_id} is not a SecAgg+ round")
        return plan
