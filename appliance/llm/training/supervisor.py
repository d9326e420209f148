"""Run a training job in a worker process and turn every way it can end into a clear result.

The supervisor (the CLI or the edge daemon) does the checks that cannot crash - data lines,
targets, licence, the memory estimate, the training copy of the base model - then starts the
worker and follows it: progress lines from its stdout, its last log lines from stderr. A
worker that dies (SIGKILL, an abort inside llama.cpp) or stops reporting becomes a
`TrainingError` quoting those lines, and the supervisor carries on. SIGTERM/SIGINT to the
supervisor are passed on: the worker stops at the next step boundary and writes the adapter
of the last completed step.
"""

import collections
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from appliance.config.training import TrainingSettings
from appliance.data.records import read_records
from appliance.data.windows import split_heldout
from appliance.errors import ModelError, TrainingError
from appliance.llm.adapters import BASE_SHA256_KEY, MetadataValue, read_adapter, write_adapter
from appliance.llm.architectures import check_trainable, resolve_targets
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import open_gguf, read_model_info, tensor_shapes
from appliance.llm.licenses import LicensePolicy
from appliance.llm.training.job import TrainingJob, TrainingResult
from appliance.llm.training.lora_init import (
    block_weights,
    factors_from_adapter,
    initial_factors,
    target_shapes,
)
from appliance.llm.training.memory import estimate_training_memory
from appliance.llm.training.precision import training_copy

log = logging.getLogger(__name__)

WORKER_MODULE = "appliance.llm.training.worker"
LOG_TAIL_LINES = 20
POLL_S = 0.5
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingRequest:
    """A training run as an operator or the daemon asks for it."""

    model: str | Path
    data: Path
    out: Path
    settings: TrainingSettings
    cache_dir: Path
    start_adapter: Path | None = None
    stall_timeout_s: float = 900.0
    policy: LicensePolicy | None = None
    evaluate: bool = True
    """Score the adapter on the served model (and the training copy) after training; the edge
    daemon measures on its own held-out set instead and turns this off."""


def train(
    request: TrainingRequest,
    on_progress: Progress | None = None,
    stop: threading.Event | None = None,
    paused: threading.Event | None = None,
) -> TrainingResult:
    """Prepare, run the worker, and return what it produced; `TrainingError` otherwise.

    Setting `stop` (from any thread) asks the worker to stop at its next step boundary, as
    SIGTERM does when this runs in the main thread. While `paused` is set the caller has frozen
    the worker on purpose (health gate, inference first): that time is not a stall.
    """
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="appliance-train-") as work:
        job, facts = prepare(request, Path(work))
        supervision = _Supervision(
            job, request.stall_timeout_s, on_progress or _ignore, stop, paused
        )
        result = supervision.run()
    return TrainingResult(**facts, **result, seconds=time.monotonic() - began)


def _ignore(_event: dict[str, Any]) -> None:
    return None


def prepare(request: TrainingRequest, work_dir: Path) -> tuple[TrainingJob, dict[str, Any]]:
    """Every check that can be done without llama.cpp, and the files the worker needs."""
    settings = request.settings
    model = resolve_model_path(request.model)
    info = read_model_info(model, ModelError)
    (request.policy or LicensePolicy()).check(info)
    check_trainable(info.architecture)  # before any worker: llama.cpp would abort instead
    base_shapes = tensor_shapes(open_gguf(model, ModelError))
    targets = resolve_targets(list(settings.targets), block_weights(base_shapes))
    shapes = target_shapes(base_shapes, targets, settings.top_layers)
    if request.start_adapter is not None:
        adapter = read_adapter(request.start_adapter)
        made_for = adapter.metadata.get(BASE_SHA256_KEY)
        if made_for not in (None, info.sha256):
            raise TrainingError(
                f"{request.start_adapter}: adapter was made for base model sha256 {made_for}, "
                f"not {info.sha256}"
            )
        factors = factors_from_adapter(adapter, shapes, settings.rank, settings.alpha)
    else:
        factors = initial_factors(shapes, settings.rank, settings.seed)
    records = read_records(request.data)
    for bad in records.bad_lines:
        log.warning("%s: skipped %s", request.data, bad)
    train_records, heldout = split_heldout(
        records.records, settings.validation_fraction, settings.seed
    )
    parameters = sum(a.size + b.size for a, b in factors.values())
    train_model = training_copy(model, info.sha256, settings.base_precision, request.cache_dir)
    adapted_layers = len({name.split(".")[1] for name in shapes})
    estimate = estimate_training_memory(
        info,
        adapted_layers=adapted_layers,
        train_file_bytes=train_model.stat().st_size,
        window_tokens=settings.window_tokens,
        adapter_parameters=parameters,
        adamw=settings.optimizer == "adamw",
    )
    if estimate.total_mb > settings.memory_limit_mb:
        raise TrainingError(
            f"training would need about {estimate.describe()}, more than the limit of "
            f"{settings.memory_limit_mb} MiB (training.memory_limit_mb); use a smaller "
            'window_tokens, fewer targets, base_precision = "same", or raise the limit'
        )
    start = write_adapter(work_dir / "start.gguf", factors, settings.alpha, info.architecture)
    metadata: dict[str, MetadataValue] = {
        BASE_SHA256_KEY: info.sha256,
        "appliance.lora.rank": settings.rank,
        "appliance.lora.alpha": settings.alpha,
        "appliance.lora.targets": ",".join(targets),
        "appliance.lora.top_layers": settings.top_layers,
        "appliance.lora.seed": settings.seed,
        "appliance.lora.frozen_a": settings.freeze_a,
        "appliance.training.optimizer": settings.optimizer,
        "appliance.training.learning_rate": settings.learning_rate,
        "appliance.training.base_precision": settings.base_precision,
        "appliance.data.records": len(records.records),
        "appliance.data.bad_lines": len(records.bad_lines),
    }
    job = TrainingJob(
        model=str(model),
        train_model=str(train_model),
        start_adapter=str(start),
        out=str(request.out),
        alpha=settings.alpha,
        architecture=info.architecture,
        settings=settings.model_dump(mode="json"),
        train_records=[asdict(r) for r in train_records],
        heldout_records=[asdict(r) for r in heldout],
        metadata=metadata,
        evaluate=request.evaluate,
    )
    facts = {
        "records": len(train_records),
        "heldout_records": len(heldout),
        "bad_lines": [str(b) for b in records.bad_lines],
        "train_model": str(train_model),
        "memory_estimate_mb": estimate.total_mb,
    }
    return job, facts


WORKER_ENVIRONMENT = {
    # an assert's line, not a gdb session
    "GGML_NO_BACKTRACE": "1",
    # ggml's OpenMP workers sleep between parallel regions instead of spinning while
    # OpenBLAS's own threads run the backward's sgemm (measured: docs/benchmarks.md,
    # "Training engine"). Only the worker gets it: it slows other OpenMP users, PyTorch by ~20%.
    "OMP_WAIT_POLICY": "PASSIVE",
}
"""Set for the trainer worker only, over the parent's environment (an operator's own
OMP_WAIT_POLICY wins)."""


def worker_environment() -> dict[str, str]:
    """The trainer worker's environment: ours, then the parent's on top where it sets one."""
    return {**WORKER_ENVIRONMENT, **os.environ, "GGML_NO_BACKTRACE": "1"}


class _Supervision:
    """One worker process, followed until it ends."""

    def __init__(
        self,
        job: TrainingJob,
        stall_timeout_s: float,
        on_progress: Progress,
        stop: threading.Event | None = None,
        paused: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.stop = stop
        self.paused = paused
        self._stop_sent = False
        self.stall_timeout_s = stall_timeout_s
        self.on_progress = on_progress
        self.log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def run(self) -> dict[str, Any]:
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches only us; we decide what the worker gets
            env=worker_environment(),
        )
        assert process.stdin and process.stdout and process.stderr
        readers = [
            threading.Thread(target=self._read_messages, args=(process.stdout,), daemon=True),
            threading.Thread(target=self._read_log, args=(process.stderr,), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            with _forward_stop_signals(process):
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.write(self.job.to_json().encode())
                    process.stdin.close()
                outcome = self._follow(process)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            for reader in readers:
                reader.join(timeout=5)
        return outcome

    def _follow(self, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        last_news = time.monotonic()
        outcome: dict[str, Any] | None = None
        error: str | None = None
        while True:
            self._pass_on_stop(process)
            try:
                message = self.messages.get(timeout=POLL_S)
            except queue.Empty:
                if self.paused is not None and self.paused.is_set():
                    last_news = time.monotonic()
                elif time.monotonic() - last_news > self.stall_timeout_s:
                    process.kill()
                    process.wait()
                    self._remove_partial_output()
                    raise TrainingError(
                        f"trainer worker made no progress for {self.stall_timeout_s:g} s and "
                        f"was killed{self._tail()}"
                    ) from None
                continue
            if message is None:  # stdout closed: the worker is ending
                break
            last_news = time.monotonic()
            if message.get("event") == "done":
                outcome = message["result"]
            elif message.get("event") == "error":
                error = str(message.get("message"))
            else:
                self.on_progress({**message, "worker_pid": process.pid})
        code = process.wait()
        if outcome is not None and code == 0:
            return outcome
        self._remove_partial_output()
        if error is not None:
            raise TrainingError(f"training failed: {error}{self._tail()}")
        if code < 0:
            name = signal.Signals(-code).name
            cause = "aborted inside llama.cpp" if name == "SIGABRT" else f"killed by {name}"
            raise TrainingError(f"trainer worker was {cause}{self._tail()}")
        raise TrainingError(f"trainer worker exited with status {code}{self._tail()}")

    def _pass_on_stop(self, process: subprocess.Popen[bytes]) -> None:
        if self.stop is not None and self.stop.is_set() and not self._stop_sent:
            self._stop_sent = True
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def _tail(self) -> str:
        lines = list(self.log_tail)
        return ("; its last log lines:\n  " + "\n  ".join(lines)) if lines else ""

    def _remove_partial_output(self) -> None:
        """A worker killed while writing leaves its temporary file; never anything else."""
        out = Path(self.job.out)
        for stray in out.parent.glob(f".{out.name}.*.tmp"):
            stray.unlink(missing_ok=True)

    def _read_messages(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                self.messages.put(json.loads(raw))
            except ValueError:
                self.log_tail.append(raw.decode("utf-8", errors="replace").rstrip())
        self.messages.put(None)

    def _read_log(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.log_tail.append(line)
                log.debug("worker: %s", line)


@contextlib.contextmanager
def _forward_stop_signals(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGTERM/SIGINT here ask the worker to stop at its next step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: object) -> None:
        log.warning(
            "%s: asking the trainer to stop after its current step", signal.Signals(signum).name
        )
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
