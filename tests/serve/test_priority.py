"""Inference before training: the health gate's and the API's pause votes compose, on a real
process frozen with SIGSTOP and continued with SIGCONT."""

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.llm.runtime import Runtime
from appliance.serve.errors import ApiError
from appliance.serve.metrics import ServeMetrics
from appliance.serve.priority import INFERENCE, Activity, TrainingPauses
from appliance.serve.protocol import CompletionRequest
from appliance.serve.workers import Job, Pool
from tests.serve.conftest import StartServer, client

WAIT_S = 60.0


class Worker:
    """A real child process paused and continued the way `TrainingRun` does it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.paused = False
        self.reasons: list[str] = []

    def pause(self, why: str) -> None:
        if not self.paused:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True
            self.reasons.append(why)

    def resume(self) -> None:
        if self.paused:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False

    def state(self) -> str:
        """The kernel's view: 'T' while stopped."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.process.send_signal(signal.SIGCONT)
    w.process.kill()
    w.process.wait()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_training_runs_only_when_neither_gate_nor_api_objects(worker: Worker) -> None:
    pauses = TrainingPauses(lambda: worker)
    pauses.vote("health", "temperature 91 °C")
    wait_for(lambda: worker.state() == "T", "the gate's pause")
    pauses.vote(INFERENCE, "serving inference requests")
    pauses.vote("health", None)  # the box cooled down, but requests are still being served
    assert worker.paused and worker.state() == "T"
    pauses.vote("health", "memory pressure")
    pauses.vote(INFERENCE, None)  # requests are over, but the gate still says no
    assert worker.paused and worker.state() == "T"
    pauses.vote("health", None)
    wait_for(lambda: worker.state() != "T", "training to continue")
    assert not worker.paused
    assert pauses.reasons() == {}


def test_no_training_run_is_fine() -> None:
    pauses = TrainingPauses(lambda: None)
    pauses.vote(INFERENCE, "serving")
    assert pauses.reasons() == {INFERENCE: "serving"}


def test_requests_pause_training_until_the_api_is_idle(
    start_server: StartServer, worker: Worker
) -> None:
    pauses = TrainingPauses(lambda: worker)
    server = start_server(pauses=pauses, training_resume_after_s=0.5)
    api = client(server)
    stream = api.completions.create(
        model="tiny-f32", prompt="Line 4 stopped", max_tokens=40, seed=1, stream=True
    )
    assert worker.paused  # voted before the request reached a model context
    wait_for(lambda: worker.state() == "T", "the worker to stop")
    list(stream)
    api.completions.create(model="tiny-f32", prompt="and again", max_tokens=4)
    wait_for(lambda: not server.activity.busy, "the API to be idle")
    wait_for(lambda: worker.state() != "T", "training to continue")
    assert worker.reasons == ["serving inference requests"]  # one pause for both requests


def test_pause_can_be_switched_off(start_server: StartServer, worker: Worker) -> None:
    pauses = TrainingPauses(lambda: worker)
    server = start_server(pauses=pauses, pause_training=False)
    client(server).completions.create(model="tiny-f32", prompt="x", max_tokens=3)
    assert worker.reasons == []


def test_a_full_queue_refuses_with_503(tiny_f32: Path) -> None:
    """Workers not started: everything submitted stays queued, so the limit is exact."""
    runtime = Runtime(tiny_f32, context_tokens=256, threads=1)
    changes: list[bool] = []
    activity = Activity(changes.append, 0.0)
    pool = Pool(
        [runtime],
        max_queue=2,
        default_max_tokens=8,
        chat_template_fallback=None,
        metrics=ServeMetrics(),
        activity=activity,
    )
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    loop = asyncio.new_event_loop()
    try:
        pool.submit(Job(request, None, loop))
        pool.submit(Job(request, None, loop))
        with pytest.raises(ApiError) as caught:
            pool.submit(Job(request, None, loop))
        assert caught.value.status == 503
        assert caught.value.code == "overloaded"
        assert "limit 2" in caught.value.message
        assert pool.depth() == (2, 0)
    finally:
        pool.stop()  # refuses the queued two and frees the model
        loop.close()
    assert changes == [True]  # busy from the first request on
