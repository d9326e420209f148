"""Latency, throughput and queue metrics of the API, as Prometheus text on `/metrics`.

Kept in the process that serves (the edge daemon has no other HTTP endpoint), rendered in
the same exposition format as the aggregator's fleet `/metrics`, so one Prometheus scrapes
both. Per request: total latency, time to first token, generation speed; counters of
requests by endpoint and status, of prompt and completion tokens; gauges of the queue.
"""

import bisect
import threading
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SPEED_BUCKETS = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0)


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{self.name}_bucket{{le="{label}"}} {total}')
        lines += [f"{self.name}_sum {self.sum:.6f}", f"{self.name}_count {total}"]
        return lines


class ServeMetrics:
    """Everything `/metrics` shows; updated from the event loop and the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = Histogram(
            "appliance_inference_request_seconds",
            "Time from a request's arrival to its last byte of output.",
            LATENCY_BUCKETS,
        )
        self.first_token = Histogram(
            "appliance_inference_time_to_first_token_seconds",
            "Time from a request's arrival (queueing included) to its first sampled token.",
            LATENCY_BUCKETS,
        )
        self.queue_wait = Histogram(
            "appliance_inference_queue_wait_seconds",
            "Time a request waited for a free model context.",
            LATENCY_BUCKETS,
        )
        self.speed = Histogram(
            "appliance_inference_tokens_per_second",
            "Completion tokens per second of each request, from its first to its last token.",
            SPEED_BUCKETS,
        )
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.adapter_swaps = 0

    def request_done(self, endpoint: str, status: int) -> None:
        """Count a finished request by endpoint and HTTP status."""
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def generation(
        self,
        *,
        wait_s: float,
        first_token_s: float | None,
        total_s: float,
        tokens: tuple[int, int],
        decode_s: float,
    ) -> None:
        """Record one served generation; `tokens` is (prompt, completion)."""
        with self._lock:
            self.queue_wait.observe(wait_s)
            if first_token_s is not None:
                self.first_token.observe(first_token_s)
            self.latency.observe(total_s)
            self.prompt_tokens += tokens[0]
            self.completion_tokens += tokens[1]
            if tokens[1] > 1 and decode_s > 0:
                self.speed.observe((tokens[1] - 1) / decode_s)

    def swapped(self) -> None:
        """An adapter was switched on a context."""
        with self._lock:
            self.adapter_swaps += 1

    def render(self, gauges: Callable[[], dict[str, tuple[str, float]]]) -> str:
        """Exposition text; `gauges` gives name -> (help, value) read at scrape time."""
        with self._lock:
            lines: list[str] = []
            for histogram in (self.latency, self.first_token, self.queue_wait, self.speed):
                lines += histogram.render()
            lines += [
                "# HELP appliance_inference_requests_total Requests by endpoint and status.",
                "# TYPE appliance_inference_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(
                    f'appliance_inference_requests_total{{endpoint="{endpoint}",'
                    f'status="{status}"}} {count}'
                )
            for name, help_text, value in (
                ("prompt_tokens_total", "Prompt tokens evaluated.", self.prompt_tokens),
                ("completion_tokens_total", "Tokens generated.", self.completion_tokens),
                ("adapter_swaps_total", "Adapter switches on a context.", self.adapter_swaps),
            ):
                lines += [
                    f"# HELP appliance_inference_{name} {help_text}",
                    f"# TYPE appliance_inference_{name} counter",
                    f"appliance_inference_{name} {value}",
                ]
        for name, (gauge_help, level) in gauges().items():
            lines += [
                f"# HELP appliance_inference_{name} {gauge_help}",
                f"# TYPE appliance_inference_{name} gauge",
                f"appliance_inference_{name} {level:g}",
            ]
        return "\n".join(lines) + "\n"
