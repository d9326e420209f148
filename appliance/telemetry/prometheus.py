"""Prometheus text exposition of fleet health (`/metrics`), for Grafana.

Bound to 127.0.0.1 by default: the endpoint has no authentication, so exposing it is an
explicit choice (`metrics_listen`). Each scrape opens the store read-only and renders the
committed state; one label set per box and metric keeps Sparkplug names intact.
"""

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from appliance.telemetry.fleet import fleet_status
from appliance.telemetry.store import FleetStore

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(store: FleetStore) -> str:
    lines = [
        "# HELP appliance_box_online 1 while the box's Sparkplug session is alive.",
        "# TYPE appliance_box_online gauge",
    ]
    rows = fleet_status(store)
    lines += [f"appliance_box_online{{box={_quote(r.box)}}} {int(r.online)}" for r in rows]
    lines += [
        "# HELP appliance_box_last_seen_seconds Unix time of the last message from the box.",
        "# TYPE appliance_box_last_seen_seconds gauge",
    ]
    lines += [
        f"appliance_box_last_seen_seconds{{box={_quote(r.box)}}} {r.last_seen_ms / 1000:.3f}"
        for r in rows
    ]
    lines += [
        "# HELP appliance_box_info Training state, gate and adapter version of the box.",
        "# TYPE appliance_box_info gauge",
    ]
    for r in rows:
        labels = ",".join(
            f"{key}={_quote(value or '')}"
            for key, value in (
                ("box", r.box),
                ("training_state", r.training_state),
                ("training_gate", r.training_gate),
                ("adapter_version", r.adapter_version),
            )
        )
        lines.append(f"appliance_box_info{{{labels}}} 1")
    lines += [
        "# HELP appliance_health Latest numeric value of each Sparkplug metric of each box.",
        "# TYPE appliance_health gauge",
    ]
    lines += [
        f"appliance_health{{box={_quote(box)},metric={_quote(metric)}}} {value!r}"
        for box, metric, value in store.latest_numbers()
    ]
    lines += [
        "# HELP appliance_alert_active 1 for every firing alert.",
        "# TYPE appliance_alert_active gauge",
    ]
    for alert in store.active_alerts():
        labels = (
            f"box={_quote(alert.node)},rule={_quote(alert.rule)},"
            f"subject={_quote(alert.subject)},severity={_quote(alert.severity)}"
        )
        lines.append(f"appliance_alert_active{{{labels}}} 1")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class MetricsServer:
    """`/metrics` over HTTP on its own thread; every request reads `store_path` afresh."""

    def __init__(self, store_path: Path, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.store_path = store_path
        handler = _handler(store_path)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler(store_path: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                store = FleetStore(store_path, read_only=True)
                try:
                    body = render(store).encode()
                finally:
                    store.close()
            except Exception as exc:
                log.exception("cannot render /metrics")
                self.send_error(503, f"fleet store unavailable: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics request: " + format, *args)

    return Handler
