"""The box as a Sparkplug B 3.0 edge node: births, data by exception, death as Will.

Rules followed (Sparkplug 3.0, chapter 7 and the edge-node statements of chapter 6/8):
- Clean Start session; the Will is the NDEATH (QoS 1, not retained) carrying only `bdSeq`,
  which grows by one on every CONNECT, wraps at 255 and survives restarts (`BdSeqFile`).
- The node subscribes to its NCMD (and to the primary host's STATE) before its NBIRTH.
- NBIRTH (QoS 0, `seq` 0) carries `bdSeq`, `Node Control/Rebirth` and every metric with
  name, alias, datatype and current value. NDATA (QoS 0) carries only metrics that changed
  beyond their deadband (or were not sent for `report_unchanged_after_s`), by alias, with
  `seq` one higher than the previous message, wrapping 255 -> 0.
- An NCMD `Node Control/Rebirth = true` is answered with a new NBIRTH (same `bdSeq`).
- With a primary host configured, no NBIRTH is sent until its STATE says online; a STATE
  older than the last one seen is ignored. When the host goes offline the node publishes its
  NDEATH, disconnects and connects again (new `bdSeq`), then waits for the host. While the
  host is offline (or the broker unreachable) data messages are kept in memory and replayed
  after the next NBIRTH with `is_historical = true` and their original timestamps.
- A change in the set of metrics (a disk added) is announced with a new NBIRTH, since NDATA
  may only carry metrics that the last birth declared.

All state is touched only in the MQTT client's worker thread; `update()` hands values over.
"""

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.config.mqtt import MqttSettings
from appliance.telemetry.bdseq import BdSeqFile
from appliance.telemetry.metrics import MetricValues
from appliance.telemetry.sparkplug import (
    BDSEQ,
    REBIRTH,
    DataType,
    Metric,
    Payload,
    SparkplugError,
    Value,
    decode,
    decode_state,
    encode,
    node_topic,
    state_topic,
)
from appliance.transport.client import Inbound, MqttClient, PublishResult, Will

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EdgeNodeOptions:
    """How the node reports; mirrors `[health]` of the edge config."""

    primary_host_id: str | None = None
    deadbands: Mapping[str, float] | None = None
    report_unchanged_after_s: float = 300.0
    max_history_messages: int = 20_000
    max_payload_bytes: int = 256 * 1024


class EdgeNode:
    """One Sparkplug edge node over one MQTT connection."""

    def __init__(
        self,
        mqtt: MqttSettings,
        group_id: str,
        node_id: str,
        state_dir: Path,
        *,
        options: EdgeNodeOptions | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.group_id = group_id
        self.node_id = node_id
        self.options = options or EdgeNodeOptions()
        self._clock = clock
        self._bdseq_file = BdSeqFile(state_dir / "sparkplug-bdseq")
        self._session_bdseq = 0  # set before every CONNECT, in paho's thread
        self._deadbands = sorted(
            (self.options.deadbands or {}).items(), key=lambda item: -len(item[0])
        )
        self._values: MetricValues = {}
        self._sent: dict[str, tuple[Value, int]] = {}  # last reported value and when
        self._aliases: dict[str, int] = {}
        self._born = False
        self._seq = 0
        self._host_online = self.options.primary_host_id is None
        self._host_timestamp = -1
        self._history: deque[tuple[int, tuple[Metric, ...]]] = deque(
            maxlen=self.options.max_history_messages or None
        )
        self.dropped_history = 0
        # its own client id: the federation transport of the same box connects as `node_id`,
        # and a broker drops the older of two connections with one client id
        self.client = MqttClient(
            mqtt, f"{node_id}-sparkplug", will_factory=self._next_will, clean_start=True, tick_s=1.0
        )
        self.client.subscribe(self._topic("NCMD"), self._on_command)
        if self.options.primary_host_id is not None:
            self.client.subscribe(state_topic(self.options.primary_host_id), self._on_host_state)
        self.client.on_connected(self._on_connected)
        self.client.every_tick(self._refresh_stale)

    # ------------------------------------------------------------ public
    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        """Publish the NDEATH ourselves (a clean DISCONNECT drops the Will), then leave."""
        if self.client.connected and self._born:
            self.client.publish(self._topic("NDEATH"), self._death_payload(), qos=1)
        self.client.stop()

    def update(self, values: MetricValues) -> None:
        """Hand over the latest values (from any thread); unchanged ones are not sent."""
        snapshot = dict(values)
        self.client.call_soon(lambda: self._update(snapshot))

    @property
    def born(self) -> bool:
        return self._born

    # ------------------------------------------------------------ connection
    def _topic(self, message_type: str) -> str:
        return node_topic(self.group_id, message_type, self.node_id)

    def _next_will(self) -> Will:
        """Runs before every CONNECT: a new bdSeq, persisted, in the Will's NDEATH."""
        self._session_bdseq = self._bdseq_file.next()
        return Will(self._topic("NDEATH"), self._death_payload())

    def _death_payload(self) -> bytes:
        bdseq = Metric(BDSEQ, DataType.INT64, self._session_bdseq)
        return encode(Payload(self._clock(), None, (bdseq,)))

    def _on_connected(self) -> None:
        self._born = False
        if self.options.primary_host_id is not None:
            self._host_online = False  # wait for the (retained) STATE of this session
            log.info("connected; waiting for primary host %s", self.options.primary_host_id)
            return
        self._birth()

    def _on_host_state(self, message: Inbound) -> None:
        try:
            online, timestamp = decode_state(message.payload)
        except SparkplugError as exc:
            log.warning("ignored STATE on %s: %s", message.topic, exc)
            return
        if timestamp < self._host_timestamp:
            log.info("ignored STATE on %s older than the last one seen", message.topic)
            return
        self._host_timestamp = timestamp
        was_online, self._host_online = self._host_online, online
        if online and not self._born and self.client.connected:
            self._birth()
        elif not online and was_online and self._born:
            log.warning("primary host went offline: NDEATH, new session, keeping data meanwhile")
            self._born = False
            # reconnect once the broker has the NDEATH (nothing left in flight to re-send);
            # the next birth comes with the next session's bdSeq
            self.client.publish(
                self._topic("NDEATH"),
                self._death_payload(),
                qos=1,
                on_done=lambda _result: self.client.reconnect(),
            )

    def _on_command(self, message: Inbound) -> None:
        try:
            payload = decode(
                message.payload,
                max_bytes=self.options.max_payload_bytes,
                known={REBIRTH: DataType.BOOLEAN},
            )
        except SparkplugError as exc:
            log.warning("rejected NCMD: %s", exc)
            return
        for metric in payload.metrics:
            if metric.name == REBIRTH and metric.value is True:
                log.info("rebirth requested by NCMD")
                if self.client.connected and self._host_online:
                    self._birth()
            else:
                log.warning("ignored NCMD metric %r (only %s is supported)", metric.name, REBIRTH)

    # ------------------------------------------------------------ messages
    def _birth(self) -> None:
        """NBIRTH with every metric, then the data kept while we could not send."""
        timestamp = self._clock()
        metrics = [
            Metric(BDSEQ, DataType.INT64, self._session_bdseq, timestamp_ms=timestamp),
            Metric(REBIRTH, DataType.BOOLEAN, False, timestamp_ms=timestamp),
        ]
        for name, (datatype, value) in sorted(self._values.items()):
            metrics.append(Metric(name, datatype, value, self._aliases[name], timestamp))
            self._sent[name] = (value, timestamp)
        self._seq = 0
        self._send("NBIRTH", Payload(timestamp, 0, tuple(metrics)), datatypes=True)
        self._born = True
        log.info("NBIRTH sent (bdSeq %d, %d metrics)", self._session_bdseq, len(metrics))
        replay, self._history = list(self._history), deque(maxlen=self._history.maxlen)
        declared = {self._aliases[name] for name in self._values}
        for sent_at, kept in replay:
            historical = tuple(
                Metric(None, m.datatype, m.value, m.alias, m.timestamp_ms, True)
                for m in kept
                if m.alias in declared  # a metric gone since is not in this birth
            )
            if not historical:
                continue
            self._send("NDATA", Payload(sent_at, self._next_seq(), historical))
        if replay:
            log.info("replayed %d kept data messages as historical", len(replay))

    def _update(self, values: MetricValues) -> None:
        timestamp = self._clock()
        if set(values) != set(self._values) or any(
            values[name][0] != self._values[name][0] for name in values
        ):
            self._values = values  # a new metric set needs a new birth
            for name in sorted(values):
                self._aliases.setdefault(name, len(self._aliases) + 1)
            if self._can_send():
                self._birth()
            return
        self._values = values
        self._report([name for name in values if self._changed(name, timestamp)], timestamp)

    def _refresh_stale(self) -> None:
        timestamp = self._clock()
        limit_ms = self.options.report_unchanged_after_s * 1000
        stale = [
            name
            for name in self._values
            if timestamp - self._sent.get(name, (None, 0))[1] >= limit_ms
        ]
        self._report(stale, timestamp)

    def _report(self, names: list[str], timestamp: int) -> None:
        if not names:
            return
        metrics = []
        for name in names:
            datatype, value = self._values[name]
            metrics.append(Metric(None, datatype, value, self._aliases[name], timestamp))
            self._sent[name] = (value, timestamp)
        if self._can_send():
            self._send("NDATA", Payload(timestamp, self._next_seq(), tuple(metrics)))
            return
        if len(self._history) == self._history.maxlen:
            self.dropped_history += 1
            log.warning("history full (%d messages): dropped the oldest", len(self._history))
        self._history.append((timestamp, tuple(metrics)))

    def _changed(self, name: str, timestamp: int) -> bool:
        value = self._values[name][1]
        if name not in self._sent:
            return True
        previous, _ = self._sent[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value != previous
        if isinstance(previous, bool) or not isinstance(previous, int | float):
            return True
        return abs(value - previous) > self._deadband(name)

    def _deadband(self, name: str) -> float:
        return next((band for prefix, band in self._deadbands if name.startswith(prefix)), 0.0)

    def _can_send(self) -> bool:
        return self._born and self._host_online and self.client.connected

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _send(self, message_type: str, payload: Payload, *, datatypes: bool = False) -> None:
        self.client.publish(
            self._topic(message_type),
            encode(payload, datatypes=datatypes),
            qos=0,
            on_done=_log_refusal,
        )


def _log_refusal(result: PublishResult) -> None:
    if not result.ok:
        log.warning("Sparkplug message on %s not sent: %s", result.topic, result.reason)
