"""The aggregator as the Sparkplug B primary host application for the plant's boxes.

It announces itself on `spBv1.0/STATE/<host_id>` (retained JSON, QoS 1) with a Will that
says offline with the same timestamp, so boxes configured to wait for it know when to send.
For every box it tracks the session: `bdSeq` from the NBIRTH, the expected `seq`, and the
alias -> name/datatype map. Anything out of order (NDATA before any NBIRTH, a `seq` gap or
replay, an unknown alias) is logged and answered with an NCMD Rebirth instead of being
stored: a fresh birth is the protocol's way to resynchronise. A box goes offline on an
NDEATH whose `bdSeq` matches its current session (an older one is stale and ignored) or
after `offline_after_s` of silence. Malformed payloads are logged and counted, never fatal.
Every tick also refreshes the host's heartbeat in the store (and a clean stop marks it
stopped), so `fleet status` can tell current data from what a stopped host left behind.
"""

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.config.mqtt import MqttSettings
from appliance.telemetry.alerts import AlertEvent, AlertTracker, Thresholds, evaluate, offline_alert
from appliance.telemetry.edge_node import now_ms
from appliance.telemetry.sparkplug import (
    BDSEQ,
    REBIRTH,
    DataType,
    Metric,
    Payload,
    SparkplugError,
    Topic,
    Value,
    decode,
    encode,
    encode_state,
    is_finite,
    node_topic,
    parse_topic,
    state_topic,
)
from appliance.telemetry.store import AlertRow, FleetStore, as_number
from appliance.transport.client import Inbound, MqttClient, Will
from appliance.transport.topics import ROOT

log = logging.getLogger(__name__)

REBIRTH_RETRY_MS = 30_000
COMPACT_EVERY_MS = 60_000


@dataclass(frozen=True)
class Retention:
    raw_keep_ms: int = 48 * 3600 * 1000
    bucket_ms: int = 300 * 1000
    rollup_keep_ms: int = 90 * 86400 * 1000


@dataclass
class _Session:
    """What the host knows of one box's current Sparkplug session."""

    bdseq: int | None = None
    expected_seq: int = 1
    known: dict[int | str, DataType] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    values: dict[str, float | str | None] = field(default_factory=dict)
    last_seen_ms: int = 0
    online: bool = False
    born: bool = False  # aliases known: only an NBIRTH seen by this process gives them
    offline_since_ms: int | None = None
    offline_reason: str | None = None
    rebirth_asked_ms: int | None = None
    dirty: bool = True


class PrimaryHost:
    """Receives every box's births, data and deaths; keeps the fleet store and alerts."""

    def __init__(
        self,
        mqtt: MqttSettings,
        host_id: str,
        group_id: str,
        store: FleetStore,
        *,
        thresholds: Thresholds | None = None,
        offline_after_s: float = 900.0,
        retention: Retention | None = None,
        max_payload_bytes: int = 256 * 1024,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.host_id = host_id
        self.group_id = group_id
        self.store = store
        self.thresholds = thresholds or Thresholds()
        self.offline_after_ms = int(offline_after_s * 1000)
        self.retention = retention or Retention()
        self.max_payload_bytes = max_payload_bytes
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()  # well-formed, but not for the host (or stale)
        self.received = 0
        self.announced = threading.Event()  # set once the broker took our STATE online
        self._clock = clock
        self._state_timestamp = 0
        self._sessions: dict[str, _Session] = {}
        for row in store.nodes():  # online state, timers and alerts survive a host restart
            self._sessions[row.node] = _Session(
                bdseq=row.bdseq,  # so the NDEATH of a session born before the restart counts
                last_seen_ms=row.last_seen_ms,
                online=row.online,  # until its NDEATH or silence, like any live box
                offline_since_ms=row.offline_since_ms,
                offline_reason=row.offline_reason,
            )
        self.alerts = AlertTracker(store.active_alerts())
        self._last_compact_ms = 0
        self.client = MqttClient(  # a tick a second: commits and alert checks are batched
            mqtt, f"{host_id}-sparkplug-host", will_factory=self._will, clean_start=True, tick_s=1.0
        )
        self.client.subscribe(f"spBv1.0/{group_id}/#", self._on_message)
        self.client.on_connected(self._announce)
        self.client.every_tick(self.tick)

    def start(self) -> None:
        """Heartbeat first: from now on readers know a host runs, connected or not."""
        self.store.host_heartbeat(self.host_id, self._clock(), connected=False)
        self.store.commit()
        self.client.start()

    def stop(self) -> None:
        """Say offline (a clean DISCONNECT drops the Will), then store the last batch."""
        if self.client.connected:
            payload = encode_state(False, self._state_timestamp)
            self.client.publish(state_topic(self.host_id), payload, retain=True)
        self.client.stop()
        self.store.host_stopped(self.host_id, self._clock())
        self.store.close()

    # ------------------------------------------------------------ STATE
    def _will(self) -> Will:
        self._state_timestamp = self._clock()
        payload = encode_state(False, self._state_timestamp)
        return Will(state_topic(self.host_id), payload, retain=True)

    def _announce(self) -> None:
        payload = encode_state(True, self._state_timestamp)
        self.client.publish(
            state_topic(self.host_id),
            payload,
            retain=True,
            on_done=lambda result: self.announced.set() if result.ok else None,
        )
        log.info("primary host %s online", self.host_id)

    # ------------------------------------------------------------ inbound
    def _on_message(self, message: Inbound) -> None:
        try:
            topic = parse_topic(message.topic)
        except SparkplugError as exc:
            self._reject("topic", f"ignored message on {message.topic!r}: {exc}")
            return
        if topic.device is not None or topic.message_type == "NCMD":
            # commands to boxes (ours are not echoed: noLocal), and devices (boxes have none)
            self.ignored["device" if topic.device is not None else "ncmd"] += 1
            return
        self.received += 1
        handler = {"NBIRTH": self._birth, "NDATA": self._data, "NDEATH": self._death}
        handler[topic.message_type](topic, message.payload)

    def _birth(self, topic: Topic, data: bytes) -> None:
        node = topic.edge_node
        try:
            payload = decode(data, max_bytes=self.max_payload_bytes)
            bdseq = _bdseq(payload)
            if payload.seq != 0:
                raise SparkplugError(f"NBIRTH seq is {payload.seq}, must be 0")
        except SparkplugError as exc:
            self._reject("nbirth", f"rejected NBIRTH from {node}: {exc}")
            self._ask_rebirth(node)
            return
        now = self._clock()
        session = _Session(bdseq=bdseq, last_seen_ms=now, online=True, born=True)
        for metric in payload.metrics:
            if metric.name is None:
                continue
            session.known[metric.name] = metric.datatype
            if metric.alias is not None:
                session.known[metric.alias] = metric.datatype
                session.names[metric.alias] = metric.name
        self._sessions[node] = session
        self.store.node_online(node, bdseq, now)
        self._store(node, session, payload.metrics, payload.timestamp_ms or now)
        log.info("NBIRTH from %s (bdSeq %d, %d metrics)", node, bdseq, len(payload.metrics))

    def _data(self, topic: Topic, data: bytes) -> None:
        node = topic.edge_node
        session = self._sessions.get(node)
        if session is None or not session.online or not session.born:
            self._reject("unborn", f"NDATA from {node} without a current NBIRTH; asking rebirth")
            self._ask_rebirth(node)
            return
        try:
            payload = decode(data, max_bytes=self.max_payload_bytes, known=session.known)
            if payload.seq is None:
                raise SparkplugError("NDATA without seq")
            unknown = [
                m.alias for m in payload.metrics if m.name is None and m.alias not in session.names
            ]
            if unknown:
                raise SparkplugError(f"aliases {unknown} were not declared in the NBIRTH")
        except SparkplugError as exc:
            self._reject("ndata", f"rejected NDATA from {node}: {exc}")
            return
        if payload.seq != session.expected_seq:
            self._reject(
                "seq",
                f"seq gap from {node}: expected {session.expected_seq}, got {payload.seq}; "
                "message dropped, asking rebirth",
            )
            self._ask_rebirth(node)
            return
        session.expected_seq = (payload.seq + 1) % 256
        now = self._clock()
        session.last_seen_ms = now
        self.store.node_seen(node, now)
        self._store(node, session, payload.metrics, payload.timestamp_ms or now)

    def _death(self, topic: Topic, data: bytes) -> None:
        node = topic.edge_node
        try:
            bdseq = _bdseq(decode(data, max_bytes=self.max_payload_bytes))
        except SparkplugError as exc:
            self._reject("ndeath", f"rejected NDEATH from {node}: {exc}")
            return
        session = self._sessions.get(node)
        if session is None or session.bdseq != bdseq or not session.online:
            current = None if session is None else session.bdseq
            log.info("stale NDEATH from %s ignored (bdSeq %d, current %s)", node, bdseq, current)
            self.ignored["stale_ndeath"] += 1
            return
        session.last_seen_ms = self._clock()  # heard from it (or from its Will): last seen
        self.store.node_seen(node, session.last_seen_ms)
        self._offline(node, session, "NDEATH")

    # ------------------------------------------------------------ helpers
    def _store(
        self, node: str, session: _Session, metrics: tuple[Metric, ...], sent_ms: int
    ) -> None:
        live: list[tuple[str, Value, int]] = []
        past: list[tuple[str, Value, int]] = []
        for metric in metrics:
            name = metric.name if metric.name is not None else session.names[metric.alias or 0]
            if not is_finite(metric):
                self._reject(
                    "nonfinite", f"{node}: metric {name!r} is {metric.value!r}; not stored"
                )
                continue
            row = (name, metric.value, metric.timestamp_ms or sent_ms)
            (past if metric.is_historical else live).append(row)
        if past:
            self.store.record(node, past, historical=True)
        if live:
            self.store.record(node, live)
            for name, value, _ in live:
                session.values[name] = value if isinstance(value, str) else as_number(value)
            session.dirty = True

    def _offline(self, node: str, session: _Session, reason: str) -> None:
        now = self._clock()
        session.online = False
        session.offline_since_ms = now
        session.offline_reason = reason
        session.dirty = True
        self.store.node_offline(node, reason, now)
        log.warning("box %s offline: %s", node, reason)

    def _ask_rebirth(self, node: str) -> None:
        """NCMD Rebirth, at most once per `REBIRTH_RETRY_MS` per box (a box that keeps
        sending bad births must not turn the host into a rebirth loop)."""
        session = self._sessions.setdefault(node, _Session())
        now = self._clock()
        asked = session.rebirth_asked_ms
        if asked is not None and now - asked < REBIRTH_RETRY_MS:
            return
        session.rebirth_asked_ms = now
        command = Payload(now, None, (Metric(REBIRTH, DataType.BOOLEAN, True, timestamp_ms=now),))
        self.client.publish(node_topic(self.group_id, "NCMD", node), encode(command), qos=0)
        log.info("asked %s for a rebirth", node)

    def _reject(self, kind: str, message: str) -> None:
        self.rejected[kind] += 1
        log.warning("%s", message)

    # ------------------------------------------------------------ periodic
    def tick(self) -> None:
        """Silence, alerts, the heartbeat, one store commit; compaction now and then."""
        now = self._clock()
        for node, session in self._sessions.items():
            if session.online and now - session.last_seen_ms > self.offline_after_ms:
                self._offline(node, session, f"silent for {(now - session.last_seen_ms) // 1000} s")
            if session.dirty or not session.online:
                self._evaluate(node, session, now)
        self.store.host_heartbeat(self.host_id, now, connected=self.client.connected)
        self.store.commit()
        if now - self._last_compact_ms >= COMPACT_EVERY_MS:
            self._last_compact_ms = now
            r = self.retention
            folded = self.store.compact(now, r.raw_keep_ms, r.bucket_ms, r.rollup_keep_ms)
            if folded:
                log.info("folded %d raw samples into %d-ms buckets", folded, r.bucket_ms)
            self.store.commit()

    def _evaluate(self, node: str, session: _Session, now: int) -> None:
        session.dirty = False
        alerts = evaluate(session.values, self.thresholds)
        offline = offline_alert(
            None if session.online else session.offline_since_ms,
            session.offline_reason,
            now,
            self.thresholds,
        )
        if offline is not None:
            alerts.append(offline)
        for event in self.alerts.update(node, alerts, now):
            self._announce_alert(event)

    def _announce_alert(self, event: AlertEvent) -> None:
        alert = event.alert
        if event.state == "firing":
            log.warning(
                "ALERT %s %s on %s: %s", alert.severity, alert.rule, event.node, alert.message
            )
            row = AlertRow(
                event.node,
                alert.rule,
                alert.subject,
                alert.severity,
                alert.message,
                event.at_ms,
                None,
            )
            self.store.alert_fired(row)
        else:
            log.info("resolved %s on %s: %s", alert.rule, event.node, alert.subject)
            self.store.alert_resolved(event.node, alert.rule, alert.subject, event.at_ms)
        body = {
            "box": event.node,
            "state": event.state,
            "rule": alert.rule,
            "subject": alert.subject,
            "severity": alert.severity,
            "message": alert.message,
            "at_ms": event.at_ms,
        }
        topic = f"{ROOT}/{self.group_id}/alert/{self.host_id}/{event.node}"
        self.client.publish(topic, json.dumps(body).encode())


def _bdseq(payload: Payload) -> int:
    for metric in payload.metrics:
        if metric.name == BDSEQ:
            if (
                not isinstance(metric.value, int)
                or isinstance(metric.value, bool)
                or not 0 <= metric.value <= 255
            ):
                raise SparkplugError(f"bdSeq must be an integer 0..255 (got {metric.value!r})")
            return metric.value
    raise SparkplugError("no bdSeq metric")
