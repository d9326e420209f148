"""An observer independent of the project's MQTT code: `mosquitto_sub` printing every message.

It reports the QoS and retain flag each message was delivered with (subscribed at QoS 1, so
the delivered QoS is the publisher's), which the Sparkplug rules constrain, and decodes
payloads with the project's schema only when a test asks.
"""

import subprocess
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from appliance.telemetry.sparkplug import Known, Payload, decode
from tests.transport.waiting import wait_for

READY_TOPIC = "observer/ready"


@dataclass(frozen=True)
class Seen:
    topic: str
    qos: int
    retain: bool
    payload: bytes

    def decode(self, known: Known | None = None) -> Payload:
        return decode(self.payload, known=known)

    @property
    def message_type(self) -> str:
        return self.topic.split("/")[2]


class Observer:
    def __init__(self, port: int, topics: tuple[str, ...] = ("spBv1.0/#", "appliance/#")) -> None:
        self.port = port
        self.messages: list[Seen] = []
        self._lock = threading.Lock()
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1"]
        args.append("--retain-as-published")  # else live messages arrive with retain 0
        for topic in (*topics, READY_TOPIC):
            args += ["-t", topic]
        self._process = subprocess.Popen(
            [*args, "-F", "%t %q %r %x"], stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            parts = line.rstrip("\n").split(" ")
            topic, qos, retain, payload = parts[0], parts[1], parts[2], parts[3:]
            seen = Seen(topic, int(qos), retain == "1", bytes.fromhex("".join(payload)))
            with self._lock:
                self.messages.append(seen)

    def __enter__(self) -> "Observer":
        def ready() -> bool:
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-t",
                    READY_TOPIC,
                    "-m",
                    "x",
                ],
                check=True,
            )
            time.sleep(0.1)
            return bool(self.where(topic=READY_TOPIC))

        wait_for(ready, "mosquitto_sub to subscribe")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._process.kill()
        self._process.wait()

    def where(self, *, topic: str | None = None, message_type: str | None = None) -> list[Seen]:
        with self._lock:
            found = list(self.messages)
        if topic is not None:
            found = [seen for seen in found if seen.topic == topic]
        if message_type is not None:
            found = [
                seen
                for seen in found
                if seen.topic.startswith("spBv1.0/") and seen.message_type == message_type
            ]
        return found

    def wait(self, count: int, what: str, **filters: str) -> list[Seen]:
        """Wait until at least `count` messages match; return all that match."""
        wait_for(lambda: len(self.where(**filters)) >= count, what)
        return self.where(**filters)
