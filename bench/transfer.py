"""MQTT artifact transfer throughput: this transport versus one raw `mosquitto_pub -f`.

    .venv/bin/python -m bench.transfer [--mb 50] [--runs 5]

Starts a local Mosquitto (no packet limit, so the raw baseline can send the file as one
50 MB message) and, alternating, measures:

- raw: `mosquitto_pub -q 1 -f FILE` to a waiting `mosquitto_sub -C 1`; from the start of the
  publisher until the subscriber has the whole message. The practical ceiling on this machine.
- transport: `Sender.send_artifact(FILE)` on one node to the verified hand-over on another
  node: outbox write (SQLite, fsync), sha256, Ed25519-signed manifest, QoS 1 chunks of at
  most `--chunk-bytes`, reassembly on disk, whole-file sha256 check. Both nodes run in this
  one Python process (they share its GIL), which is pessimistic for the transport.

Prints a table of medians (MB/s, 1 MB = 10^6 bytes) and the ratio transport / raw.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.transport.client import MqttClient
from appliance.transport.events import ArtifactArrived
from appliance.transport.outbox import Outbox
from appliance.transport.receiver import Receiver
from appliance.transport.sender import Sender
from appliance.transport.topics import Topics
from tests.support.mosquitto import Mosquitto

MB = 1_000_000
WAIT_S = 600.0


def raw_run(broker: Mosquitto, source: Path) -> float:
    """Seconds for one `mosquitto_pub -f` to reach a subscriber."""
    sub = subprocess.Popen(
        [
            "stdbuf",
            "-o0",  # unbuffered: the SUBACK line must reach us before anything is published
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "bench/raw",
            "-C",
            "1",
            "-N",
            "-d",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert sub.stdout is not None
    for line in sub.stdout:  # debug lines until the SUBACK; the payload comes after
        if b"received SUBACK" in line:
            break
    start = time.perf_counter()
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "bench/raw",
            "-f",
            str(source),
        ],
        check=True,
    )
    received = 0
    while chunk := sub.stdout.read(1 << 20):
        received += len(chunk)
    sub.wait(timeout=WAIT_S)
    elapsed = time.perf_counter() - start
    if received < source.stat().st_size:
        raise RuntimeError(f"mosquitto_sub got {received} bytes")
    return elapsed


class Pair:
    """Two transport nodes (box1 sends, agg receives) on fresh state directories."""

    def __init__(self, broker: Mosquitto, work: Path, chunk_bytes: int) -> None:
        keys, trust_dir = work / "keys", work / "trust"
        trust_dir.mkdir(parents=True)
        self.done = threading.Event()
        self.sha256 = ""
        mqtt = MqttSettings(host="127.0.0.1", port=broker.port, max_packet_bytes=chunk_bytes)
        settings = TransferSettings()
        topics = Topics("bench")
        self.clients: list[MqttClient] = []
        for name in ("box1", "agg"):
            private, public = generate_key_pair(keys, name)
            shutil.copy(public, trust_dir / public.name)
            key = NodeKey.load(name, private)
            client = MqttClient(mqtt, name)
            trust = TrustStore(trust_dir)
            outbox = Outbox(work / name / "outbox.sqlite", OutboxSettings())
            self.clients.append(client)
            if name == "box1":
                self.sender = Sender(
                    client, outbox, key=key, trust=trust, topics=topics, settings=settings
                )
            else:
                Receiver(
                    client,
                    self._received,
                    key=key,
                    trust=trust,
                    topics=topics,
                    settings=settings,
                    state_dir=work / name,
                )
            client.start()
            client.wait_connected(30)

    def _received(self, artifact: ArtifactArrived) -> None:
        self.sha256 = artifact.manifest.sha256
        self.done.set()

    def run(self, source: Path, expected_sha: str) -> float:
        start = time.perf_counter()
        self.sender.send_artifact("update", source, ["agg"])
        if not self.done.wait(WAIT_S):
            raise RuntimeError("transfer did not finish")
        elapsed = time.perf_counter() - start
        if self.sha256 != expected_sha:
            raise RuntimeError("received artifact has the wrong hash")
        return elapsed

    def close(self) -> None:
        for client in self.clients:
            client.stop()


def transport_run(broker: Mosquitto, source: Path, sha: str, chunk_bytes: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as work:
        pair = Pair(broker, Path(work), chunk_bytes)
        try:
            return pair.run(source, sha)
        finally:
            pair.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="artifact size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs of each")
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        action="append",
        help="transport packet cap (repeatable; default 2000000 and 262144)",
    )
    args = parser.parse_args()
    caps = args.chunk_bytes or [2_000_000, 262_144]
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        source = Path(tmp) / "artifact.bin"
        data = os.urandom(args.mb * MB)
        source.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        del data
        results: dict[str, list[float]] = {"raw mosquitto_pub -f": []}
        for cap in caps:
            results[f"transport, packets <= {cap:,} B"] = []
        with Mosquitto(Path(tmp) / "broker") as broker:
            for run in range(args.runs):
                results["raw mosquitto_pub -f"].append(raw_run(broker, source))
                for cap in caps:
                    name = f"transport, packets <= {cap:,} B"
                    results[name].append(transport_run(broker, source, sha, cap))
                print(f"run {run + 1}/{args.runs} done", flush=True)
    raw = args.mb / statistics.median(results["raw mosquitto_pub -f"])
    print(f"\n{args.mb} MB artifact, {args.runs} alternating runs")
    print(f"| {'method':<36} | {'median s':>8} | {'min-max s':>11} | {'MB/s':>6} | {'vs raw':>6} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 13}|{'-' * 8}|{'-' * 8}|")
    for name, times in results.items():
        median = statistics.median(times)
        rate = args.mb / median
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(f"| {name:<36} | {median:>8.2f} | {spread:>11} | {rate:>6.1f} | {rate / raw:>6.2f} |")


if __name__ == "__main__":
    main()
