"""Fleet health ingestion: Sparkplug NDATA from 1,000 simulated boxes into the primary host.

    .venv/bin/python -m bench.health_ingest [--boxes 1000] [--period-s 5] [--seconds 60]

Three processes on one machine, through a local Mosquitto:
- the aggregator's `PrimaryHost` (SQLite fleet store, alert evaluation each tick), alone in
  its process so that its CPU time is its own; it reports its message count and CPU time;
- a load generator: every box publishes an NBIRTH (20 metrics with names and aliases), then
  one NDATA every `--period-s` seconds with about 20 changing metrics by alias (QoS 0, as
  Sparkplug requires), spread evenly over the period;
- the broker.

Phase 1 (nominal): the fleet at its real rate for `--seconds`; reports messages/s the host
stored and the host's CPU share of one core; boxes per core = boxes / CPU share. Phase 2
(saturation): the generator sends `--burst` messages as fast as it can; reports the rate the
host kept up with (a lower bound when the generator, which shares the machine, is slower).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from appliance.config.mqtt import MqttSettings
from appliance.telemetry.host import PrimaryHost
from appliance.telemetry.probes import inventory
from appliance.telemetry.sparkplug import BDSEQ, REBIRTH, DataType, Metric, Payload, encode
from appliance.telemetry.store import FleetStore
from appliance.transport.client import MqttClient
from tests.support.mosquitto import Mosquitto

GROUP = "plant1"
METRICS = 20


def metric_names() -> list[str]:
    names = [f"Thermal/hwmon0 coretemp/Core {i}/Temperature C" for i in range(8)]
    names += ["CPU/Load 1m", "CPU/Load 5m", "CPU/Frequency Mean MHz", "Memory/Used Percent"]
    names += ["Memory/Available Bytes", "Pressure/memory/some_avg10 Percent"]
    names += ["Disk/State/Free Percent", "Disk/State/Free Bytes", "SMART/nvme0/Temperature C"]
    names += ["Power/intel-rapl:0 package-0/Energy J", "Appliance/Inference Latency ms"]
    names += ["Appliance/Training Progress Percent"]
    return names[:METRICS]


def run_host(port: int, work: Path) -> int:
    """Child: the primary host; prints `{"received", "rejected", "cpu_s"}` twice a second."""
    settings = MqttSettings(host="127.0.0.1", port=port, keepalive_s=30)
    store = FleetStore(work / "fleet-health.sqlite")
    host = PrimaryHost(settings, "bench-host", GROUP, store, offline_after_s=3600)
    host.start()
    host.announced.wait(60)
    while True:
        line = {
            "received": host.received,
            "rejected": sum(host.rejected.values()),
            "cpu_s": time.process_time(),
        }
        print(json.dumps(line), flush=True)
        time.sleep(0.5)


def run_load(port: int, boxes: int, period_s: float, seconds: float, burst: int) -> int:
    """Child: births, the nominal phase, then a burst; prints phase markers as JSON."""
    client = MqttClient(
        MqttSettings(host="127.0.0.1", port=port, keepalive_s=30), "bench-load", clean_start=True
    )
    client.start()
    client.wait_connected(60)
    names = metric_names()
    seqs = [0] * boxes
    now = int(time.time() * 1000)
    for box in range(boxes):
        metrics = [Metric(BDSEQ, DataType.INT64, 0), Metric(REBIRTH, DataType.BOOLEAN, False)]
        metrics += [Metric(n, DataType.DOUBLE, 50.0, i + 1, now) for i, n in enumerate(names)]
        client.publish(topic(box, "NBIRTH"), encode(Payload(now, 0, tuple(metrics))), qos=0)
    print(json.dumps({"phase": "births", "sent": boxes}), flush=True)
    time.sleep(2)

    def ndata(box: int, step: int) -> None:
        seqs[box] = (seqs[box] + 1) % 256
        stamp = int(time.time() * 1000)
        metrics = tuple(
            Metric(None, DataType.DOUBLE, 20.0 + (step + i) % 50 + box / boxes, i + 1, stamp)
            for i in range(len(names))
        )
        data = encode(Payload(stamp, seqs[box], metrics), datatypes=False)
        client.publish(topic(box, "NDATA"), data, qos=0)

    print(json.dumps({"phase": "nominal", "at": time.time()}), flush=True)
    interval = period_s / boxes
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        ndata(sent % boxes, sent // boxes)
        sent += 1
        delay = start + sent * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"phase": "nominal-done", "sent": sent}), flush=True)
    time.sleep(3)
    print(json.dumps({"phase": "burst", "at": time.time()}), flush=True)
    for step in range(burst):
        ndata((sent + step) % boxes, (sent + step) // boxes)
    print(json.dumps({"phase": "burst-done", "sent": burst}), flush=True)
    time.sleep(2)
    client.stop()
    return 0


def topic(box: int, message_type: str) -> str:
    return f"spBv1.0/{GROUP}/{message_type}/box{box:05d}"


class Counters:
    """The host child's latest report, read on a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.latest = {"received": 0, "rejected": 0, "cpu_s": 0.0}
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.latest = json.loads(line)

    def wait_received(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.latest["received"] < count and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--period-s", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="nominal phase length")
    parser.add_argument("--burst", type=int, default=30_000, help="messages in the burst phase")
    parser.add_argument("--host-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host_child:
        return run_host(args.host_child, args.work)
    if args.load_child:
        return run_load(args.load_child, args.boxes, args.period_s, args.seconds, args.burst)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        me = [sys.executable, "-m", "bench.health_ingest"]
        host = subprocess.Popen(
            [*me, "--host-child", str(broker.port), "--work", tmp],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        counters = Counters(host)
        time.sleep(3)
        load = subprocess.Popen(
            [
                *me,
                "--load-child",
                str(broker.port),
                "--boxes",
                str(args.boxes),
                "--period-s",
                str(args.period_s),
                "--seconds",
                str(args.seconds),
                "--burst",
                str(args.burst),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdout is not None
        marks: dict[str, tuple[float, dict[str, float], dict[str, int]]] = {}
        total = args.boxes  # births
        for line in load.stdout:
            event = json.loads(line)
            if event["phase"].endswith("-done"):
                total += int(event["sent"])
                counters.wait_received(total, timeout_s=120)  # the host caught up (or gave up)
            marks[event["phase"]] = (time.monotonic(), dict(counters.latest), event)
        load.wait()
        host.kill()
        host.wait()
    report(args, marks)
    return 0


def report(
    args: argparse.Namespace, marks: dict[str, tuple[float, dict[str, float], dict[str, int]]]
) -> None:
    def delta(start: str, end: str) -> tuple[float, float, float, float]:
        (t0, c0, _), (t1, c1, _) = marks[start], marks[end]
        return t1 - t0, c1["received"] - c0["received"], c1["cpu_s"] - c0["cpu_s"], c1["rejected"]

    wall, received, cpu, rejected = delta("nominal", "nominal-done")
    share = cpu / wall
    burst_wall, burst_received, burst_cpu, burst_rejected = delta("burst", "burst-done")
    sent = marks["nominal-done"][2]["sent"]
    model = inventory.read(Path("/"))["cpu_model"] or platform.machine()
    print(f"machine: {model}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        "| phase | boxes | metrics/msg | sent | stored by host | wall s | msgs/s | host CPU s "
        "| host CPU share of one core | boxes per core |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| nominal (1 msg / box / {args.period_s:g} s) | {args.boxes} | {METRICS} | {sent} | "
        f"{received:.0f} | {wall:.1f} | {received / wall:.0f} | {cpu:.2f} | {100 * share:.1f}% "
        f"| {args.boxes / share:,.0f} |"
    )
    rate = burst_received / burst_wall
    burst_share = burst_cpu / burst_wall
    print(
        f"| saturation burst | {args.boxes} | {METRICS} | {args.burst} | {burst_received:.0f} | "
        f"{burst_wall:.1f} | {rate:.0f} | {burst_cpu:.2f} | {100 * burst_share:.0f}% | "
        f"{rate * args.period_s / burst_share:,.0f} |"
    )
    print(
        f"rejected by the host (seq gaps, bad payloads): {burst_rejected:.0f} "
        f"(nominal phase: {rejected:.0f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
