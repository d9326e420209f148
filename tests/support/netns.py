"""A private network of Linux network namespaces for partition tests (root only).

    with star_network(["broker", "aggregator", "box-1"]) as net:
        net.address("broker")          # "10.199.0.1"
        net.prefix("box-1")            # ("ip", "netns", "exec", "ap1a2b3c-box-1")
        net.cut("box-1")               # the box's link goes down: it is cut off
        net.heal("box-1")              # link up again

Every node gets a namespace of its own with one veth interface (`eth0`) whose peer sits on a
Linux bridge in a hub namespace; nothing is routed out of the namespaces, so the traffic never
leaves the machine. Names carry a random suffix, so runs side by side do not collide. On exit,
even after a failure, every process still running in the namespaces is killed and the
namespaces are deleted (which removes the veths and the bridge).
"""

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.mosquitto import MOSQUITTO

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET = "10.199.0"
INTERFACE = "eth0"
BROKER_START_S = 20.0


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not Path(IP).exists():
        return "iproute2 (`ip`) is not installed"
    probe = f"ap-probe-{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise with its stderr when `check` and it failed."""
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class Network:
    """Namespaces on one bridge: one per node, plus the hub holding the bridge."""

    suffix: str
    nodes: tuple[str, ...]
    created: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"ap{self.suffix}-hub"

    def namespace(self, node: str) -> str:
        return f"ap{self.suffix}-{node}"

    def address(self, node: str) -> str:
        """The node's IPv4 address (on a /24 private to this network)."""
        return f"{SUBNET}.{self.nodes.index(node) + 1}"

    def prefix(self, node: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside the node's namespace."""
        return (IP, "netns", "exec", self.namespace(node))

    def build(self) -> None:
        """Create the hub with its bridge, then each node's namespace and veth pair."""
        self._add_namespace(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for index, node in enumerate(self.nodes):
            namespace = self.namespace(node)
            self._add_namespace(namespace)
            port = f"p{index}"
            _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", INTERFACE,
                "netns", namespace)  # fmt: skip
            _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(node)}/24", "dev", INTERFACE)
            _ip("-n", namespace, "link", "set", INTERFACE, "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def cut(self, node: str) -> None:
        """Take the node's link down: from now on it reaches nobody and nobody reaches it."""
        _ip("-n", self.namespace(node), "link", "set", INTERFACE, "down")

    def heal(self, node: str) -> None:
        """Bring the node's link back up (its address and route come back with it)."""
        _ip("-n", self.namespace(node), "link", "set", INTERFACE, "up")

    def link_up(self, node: str) -> bool:
        """Whether the node's interface is administratively up."""
        shown = _ip("-n", self.namespace(node), "-o", "link", "show", INTERFACE)
        return "state DOWN" not in shown.stdout and ",UP" in shown.stdout

    def destroy(self) -> None:
        """Kill what still runs in the namespaces, then delete them (veths and bridge too)."""
        for name in reversed(self.created):
            for pid in _pids(name):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "delete", name, check=False)
        self.created.clear()


def _pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


@contextmanager
def star_network(nodes: Sequence[str]) -> Iterator[Network]:
    """A fresh network for `nodes`; always torn down on exit."""
    network = Network(uuid.uuid4().hex[:6], tuple(nodes))
    try:
        network.build()
        yield network
    finally:
        network.destroy()


@dataclass
class NamespacedBroker:
    """Mosquitto inside a namespace, listening on that namespace's address only."""

    network: Network
    node: str
    directory: Path
    port: int = 1883
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> "NamespacedBroker":
        """Start it and return once its log says the listener is open."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "user root",
                    f"listener {self.port} {self.network.address(self.node)}",
                    "allow_anonymous true",
                    f"log_dest file {self.log_file}",
                    "log_type all",
                    "log_timestamp_format %H:%M:%S",
                    "max_queued_messages 100000",
                    "max_packet_size 2000000",
                    "persistence false",
                    "",
                ]
            )
        )
        with (self.directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                [*self.network.prefix(self.node), MOSQUITTO, "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + BROKER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()[-3000:]}")
            if f"listen socket on port {self.port}" in self.log_text():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not open its listener:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
