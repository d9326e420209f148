"""One MQTT v5 connection to the plant broker, safe to use from application code.

paho runs its network loop in its own thread and calls back into ours; a callback that blocks
stalls keep-alives and acknowledgements. So every paho callback only records what happened and
hands the work to a queue; one worker thread runs all handlers, publish completions and
periodic ticks in order. Code built on this client (sender, receiver) is therefore
single-threaded and needs no locks of its own.

The client keeps a persistent session (Clean Start off, session expiry from the config), so
QoS 1 messages queued by the broker survive reconnects and broker restarts. It never sends a
packet larger than the smaller of the configured cap and the broker's CONNACK
`MaximumPacketSize`: paho does not enforce the broker's limit, and an oversize QoS 1 message
would be re-sent after every reconnect, forever.

Sparkplug B needs the opposite session: `clean_start=True` gives a fresh session on every
connect, and `will_factory` builds the Last Will anew before every CONNECT (its payload
carries a per-connect `bdSeq`).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.config.mqtt import MqttSettings
from appliance.errors import ApplianceError
from appliance.transport.rejects import Counters
from appliance.transport.tls import broker_password, ssl_context

log = logging.getLogger(__name__)

QOS = 1


class PacketTooLargeError(ApplianceError):
    """A message would exceed the broker's or the configured packet limit; it was not sent."""


class NotConnectedError(ApplianceError):
    """The client did not connect within the time asked for."""


@dataclass(frozen=True)
class Inbound:
    """A message from the broker, as handed to a handler."""

    topic: str
    payload: bytes
    retain: bool
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    """Set for a subscription made with `ack_later`: call it (from any thread) once the
    message is safe; until then the broker keeps it and re-sends it after a reconnect."""


@dataclass(frozen=True)
class PublishResult:
    """The broker's answer to one QoS 1 publish (`ok` False: refused, e.g. not authorized)."""

    topic: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class Will:
    """Last Will: published by the broker when this node vanishes without saying goodbye."""

    topic: str
    payload: bytes
    retain: bool = False


Handler = Callable[[Inbound], None]
Done = Callable[[PublishResult], None]


def packet_properties(packet_type: int) -> Properties:
    """Empty MQTT v5 properties for `packet_type` (a `PacketTypes` value)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def publish_packet_bytes(topic: str, payload_bytes: int, properties: Properties | None) -> int:
    """Exact size on the wire of a QoS 1 PUBLISH packet (MQTT v5)."""
    props = 1 if properties is None else len(properties.pack())  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + 2 + props + payload_bytes
    return 1 + _varint_bytes(remaining) + remaining


def _varint_bytes(value: int) -> int:
    count = 1
    while value >= 128:
        value //= 128
        count += 1
    return count


class MqttClient:
    """A paho client with a worker thread, a packet-size guard and logged reason codes."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: Will | None = None,
        will_factory: Callable[[], Will] | None = None,
        clean_start: bool = False,
        counters: Counters | None = None,
        tick_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.counters = counters or Counters()
        self._tick_s = tick_s
        self._clean_start = clean_start
        self._will_factory = will_factory
        self._broker_limit: int | None = None
        self._handlers: list[tuple[str, Handler]] = []
        self._ack_later: set[str] = set()
        self._tickers: list[Callable[[], None]] = []
        self._on_connected: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, Done | None]] = {}
        self._early: dict[int, ReasonCode] = {}
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._stopping = False
        self._reconnecting = False
        self._subscribe_mid: int | None = None
        self._generation = 0  # connections so far; a PUBACK belongs to the one it came on
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)
        self._paho = self._make_paho(will)

    # ----------------------------------------------------------------- set-up
    def _make_paho(self, will: Will | None) -> paho.Client:
        # manual_ack: a QoS 1 message is acknowledged only after its handler ran, so the
        # broker's in-flight limit bounds what waits in our queue (memory stays flat however
        # fast chunks arrive) and a message lost to a crash before handling is re-sent.
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger("appliance.transport.paho"))
        client.reconnect_delay_set(1, self.settings.reconnect_max_delay_s)
        if self.settings.tls is not None:
            client.tls_set_context(ssl_context(self.settings.tls))
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, broker_password(self.settings))
        if will is not None:
            client.will_set(will.topic, will.payload, qos=QOS, retain=will.retain)
        if self._will_factory is not None:
            client.on_pre_connect = self._cb_pre_connect
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_connect_fail = self._cb_connect_fail
        client.on_message = self._cb_message
        client.on_publish = self._cb_publish
        client.on_subscribe = self._cb_subscribe
        return client

    def subscribe(self, topic_filter: str, handler: Handler, *, ack_later: bool = False) -> None:
        """Run `handler` (in the worker thread) for every message matching `topic_filter`.

        Call before `start()`; subscriptions are (re)made on every connect, QoS 1. A message
        is acknowledged to the broker once its handler returned, or, with `ack_later`, when
        the handler (or whoever it hands the message to) calls `Inbound.ack`.
        """
        self._handlers.append((topic_filter, handler))
        if ack_later:
            self._ack_later.add(topic_filter)

    def every_tick(self, ticker: Callable[[], None]) -> None:
        """Run `ticker` in the worker thread about every `tick_s` seconds."""
        self._tickers.append(ticker)

    def on_connected(self, listener: Callable[[], None]) -> None:
        """Run `listener` in the worker thread after every successful (re)connect."""
        self._on_connected.append(listener)

    def start(self) -> None:
        """Connect in the background; paho reconnects with capped exponential back-off."""
        self._connect_async()
        self._worker.start()
        self._paho.loop_start()

    def _connect_async(self) -> None:
        props = packet_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if self._clean_start else self.settings.session_expiry_s
        self._paho.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self._clean_start,
            properties=props,
        )

    def reconnect(self, timeout_s: float = 10.0) -> None:
        """End this connection cleanly and open a new one: a new CONNECT, so a new Will from
        `will_factory`. A Sparkplug edge node must do this when its primary host goes
        offline. What was published before the call goes out before the DISCONNECT."""
        self._reconnecting = True
        try:
            if self._connected.is_set():
                self._paho.disconnect()
                self._disconnected.wait(timeout_s)
            self._paho.loop_stop()
            self._connect_async()
            self._paho.loop_start()
        finally:
            self._reconnecting = False

    def stop(self) -> None:
        """Disconnect cleanly and stop both threads. Unsent work stays in the outbox.

        Work already handed to the worker thread (acknowledgements above all) runs before
        the DISCONNECT, so a message the service acknowledged is not re-sent after a restart.
        """
        self._stopping = True
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            drained = threading.Event()
            self._work.put(drained.set)
            drained.wait(timeout=10)
        self._paho.disable_logger()  # paho logs its own orderly shutdown as errors
        if self._connected.is_set():
            self._paho.disconnect()
        self._paho.loop_stop()
        self._work.put(None)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30)

    # ----------------------------------------------------------------- use
    @property
    def connected(self) -> bool:
        """Connected and subscribed (the SUBACK arrived)."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> None:
        if not self._connected.wait(timeout_s):
            raise NotConnectedError(
                f"no connection to {self.settings.host}:{self.settings.port} after {timeout_s} s"
            )

    @property
    def max_packet_bytes(self) -> int:
        """Largest packet this client may send now (config cap, lowered by the broker's)."""
        limit = self.settings.max_packet_bytes
        return min(limit, self._broker_limit) if self._broker_limit else limit

    def max_payload_bytes(self, topic: str, properties: Properties | None = None) -> int:
        """Largest payload on `topic` that fits in `max_packet_bytes`."""
        limit = self.max_packet_bytes
        payload = limit - publish_packet_bytes(topic, 0, properties)
        while publish_packet_bytes(topic, payload, properties) > limit:
            payload -= 1  # the remaining-length field grew by a byte
        return payload

    def call_soon(self, work: Callable[[], None]) -> None:
        """Run `work` in the worker thread (how application threads hand over work)."""
        self._work.put(work)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        on_done: Done | None = None,
        properties: Properties | None = None,
        qos: int = QOS,
    ) -> None:
        """Publish (QoS 1 unless asked); `on_done` runs in the worker thread when answered.

        Refuses (PacketTooLargeError) a packet over `max_packet_bytes` instead of letting the
        broker disconnect us. While disconnected paho keeps the message in RAM and sends it
        after reconnecting; durability across process restarts is the outbox's job. QoS 0
        (Sparkplug NBIRTH/NDATA) is dropped while disconnected: `on_done` then gets `ok` False.
        """
        size = publish_packet_bytes(topic, len(payload), properties)
        if size > self.max_packet_bytes:
            self.counters.inc("refused.too_large")
            raise PacketTooLargeError(
                f"message on {topic} would be a {size}-byte packet; the limit is "
                f"{self.max_packet_bytes} bytes (broker: {self._broker_limit or 'none'}, "
                f"config: {self.settings.max_packet_bytes})"
            )
        info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise ApplianceError(f"paho refused to queue a message on {topic}: {info.rc.name}")
        if qos == 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            self.counters.inc("dropped.not_connected")
            if on_done is not None:
                self._work.put(lambda: on_done(PublishResult(topic, False, "not connected")))
            return
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = (topic, on_done)
        if early is not None:
            self._work.put(lambda: self._finish(topic, on_done, early))

    # ------------------------------------------------------- paho callbacks
    # These run in paho's network thread: record, hand over, return.
    def _cb_pre_connect(self, client: paho.Client, _userdata: object) -> None:
        if self._will_factory is None:
            return
        will = self._will_factory()
        client.will_set(will.topic, will.payload, qos=QOS, retain=will.retain)

    def _cb_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.counters.inc("connect_refused")
            log.error("broker refused the connection: %s (0x%02x)", reason, reason.value)
            return
        self._generation += 1
        limit = getattr(properties, "MaximumPacketSize", None)
        self._broker_limit = int(limit) if limit else None
        self.counters.inc("connects")
        log.info(
            "connected to %s:%s (session %s, broker packet limit %s)",
            self.settings.host,
            self.settings.port,
            "resumed" if flags.session_present else "new",
            self._broker_limit or "none",
        )
        if not self._handlers:
            self._ready()
            return
        # noLocal: the broker does not echo our own messages (a sender would get back every
        # chunk it publishes on a topic it also listens to). We count as connected only once
        # the SUBACK is in, so nothing is published before our answers can reach us.
        options = SubscribeOptions(qos=QOS, noLocal=True)
        _, self._subscribe_mid = self._paho.subscribe(
            [(topic, options) for topic, _ in self._handlers]
        )

    def _ready(self) -> None:
        self._disconnected.clear()
        self._connected.set()
        for listener in self._on_connected:
            self._work.put(listener)

    def _cb_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._connected.is_set() and not self._stopping and not self._reconnecting:
            self.counters.inc("disconnects")
            log.warning("disconnected from the broker: %s", reason)
        elif not self._connected.is_set():
            self._cb_connect_fail(_client, _userdata)
        self._connected.clear()
        self._disconnected.set()

    def _cb_connect_fail(self, _client: paho.Client, _userdata: object) -> None:
        # TCP refused, TLS handshake failed, or the broker closed before CONNACK (for
        # example a missing client certificate under TLS 1.3). paho retries with back-off.
        self.counters.inc("connect_failed")
        log.warning("cannot connect to %s:%s; retrying", self.settings.host, self.settings.port)

    def _cb_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        message = Inbound(msg.topic, bytes(msg.payload), bool(msg.retain))
        mid, qos, generation = msg.mid, msg.qos, self._generation
        self._work.put(lambda: self._handle(message, mid, qos, generation))

    def _cb_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # May run before publish() has returned and recorded the mid: park it in _early.
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early[mid] = reason
                return
        topic, on_done = pending
        self._work.put(lambda: self._finish(topic, on_done, reason))

    def _cb_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        for (topic, _), reason in zip(self._handlers, reasons, strict=False):
            if reason.is_failure:
                self.counters.inc("subscribe_refused")
                log.error(
                    "broker refused subscription %s: %s (0x%02x)", topic, reason, reason.value
                )
        if mid == self._subscribe_mid:
            self._ready()

    # ------------------------------------------------------- worker thread
    def _finish(self, topic: str, on_done: Done | None, reason: ReasonCode) -> None:
        ok = not reason.is_failure
        if not ok:
            self.counters.inc("publish_refused")
            log.error("broker refused publish on %s: %s (0x%02x)", topic, reason, reason.value)
        if on_done is not None:
            on_done(PublishResult(topic, ok, str(reason)))

    def _handle(self, message: Inbound, mid: int, qos: int, generation: int) -> None:
        deferred = False
        try:
            for topic_filter, handler in self._handlers:
                if not paho.topic_matches_sub(topic_filter, message.topic):
                    continue
                if topic_filter in self._ack_later:
                    later = partial(self.call_soon, partial(self._ack, mid, qos, generation))
                    handler(replace(message, ack=later))
                    deferred = True
                else:
                    handler(message)
        except Exception:
            deferred = False  # the handler failed (and logged why): acknowledge it now
            raise
        finally:
            # Acknowledge even when a handler failed: an unacknowledged message would come
            # back after every reconnect.
            if not deferred:
                self._ack(mid, qos, generation)

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        """PUBACK one message. Across a reconnect the broker re-sends it under the new
        connection instead, so an old connection's mid is not acked."""
        if qos > 0 and generation == self._generation:
            self._paho.ack(mid, qos)

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        while True:
            try:
                work = self._work.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                work = _idle
            if work is None:
                return
            self._guarded(work)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._tick_s
                for ticker in self._tickers:
                    self._guarded(ticker)

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            self.counters.inc("handler_errors")
            log.exception("transport handler failed; continuing")


def _idle() -> None:
    """Nothing to do: the worker woke up only to run its tickers."""
