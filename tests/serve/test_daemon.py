"""The inference API of a real `appliance edge run` daemon, in a real round: the official
client gets completions, chat and streams, and the training worker is frozen while it is
served and continues afterwards."""

import os
import re
import time
from pathlib import Path

import openai
import pytest

from appliance.demo.broker import start_broker
from appliance.demo.fleet import AGGREGATOR, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING, spawn_node, stop_process
from appliance.llm.tiny import make_tiny_model

WAIT_S = 240.0
TOKEN = "plant-app-token-1"


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def process_state(pid: int) -> str:
    """'T' while stopped by a signal."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def training_worker(parent: int) -> int | None:
    """The trainer worker process the daemon started, if it runs now."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"appliance.llm.training.worker" in command:
            return int(entry.name)
    return None


@pytest.mark.timeout(600)
def test_edge_daemon_serves_the_openai_api_before_training(tmp_path: Path) -> None:
    broker, port = start_broker(tmp_path / "broker")
    model = str(make_tiny_model(tmp_path / "tiny.gguf"))
    # many epochs: the round's training is still running while the test talks to the box
    options = FleetOptions(1, 1, model, port, 60, {**TINY_TRAINING, "epochs": 1000})
    layout = lay_out(tmp_path, options)
    box = layout.boxes[0]
    token = tmp_path / "api.token"
    token.write_text(TOKEN)
    os.chmod(token, 0o600)
    with layout.config(box).open("a") as config:
        config.write(
            "[serve]\nenabled = true\nport = 0\n"
            f'token_file = "{token}"\nchat_template_fallback = "chatml"\n'
            "training_resume_after_s = 0.5\n"
        )
    processes = [spawn_node(layout, AGGREGATOR), spawn_node(layout, box)]
    daemon = processes[1]
    log = layout.root / box / "daemon.log"
    try:
        url = wait_for(
            lambda: re.search(r"inference API on (http://\S+/v1)", log.read_text()),
            "the inference API to start",
        ).group(1)
        worker = wait_for(lambda: training_worker(daemon.pid), "the round's training worker")
        assert process_state(worker) != "T"
        api = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0, timeout=120)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="guess", max_retries=0).models.list()
        assert [m.id for m in api.models.list().data] == ["tiny"]


        def busy_api_froze_training() -> bool:
            # a client that keeps the API busy; the worker can be frozen once it has
            # reported its pid to the daemon (its first message, after loading)
            api.completions.create(model="tiny", prompt="Pump 1:", max_tokens=16)
            return process_state(worker) == "T"

        wait_for(busy_api_froze_training, "the training worker to be frozen")
        raw = api.completions.with_raw_response.create(
            model="tiny", prompt="Conveyor 2 status:", max_tokens=200, seed=4, stream=True
        )
        assert raw.headers["X-Appliance-Adapter-Version"] == "base"
        wait_for(lambda: process_state(worker) == "T", "the worker frozen for this request")
        streamed = "".join(c.choices[0].text for c in raw.parse() if c.choices)
        whole = api.completions.create(
            model="tiny", prompt="Conveyor 2 status:", max_tokens=200, seed=4
        )
        assert streamed == whole.choices[0].text
        chat = api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Status?"}], max_tokens=8
        )
        assert chat.choices[0].message.role == "assistant"
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            api.completions.create(model="tiny", prompt="x", max_tokens=100_000)

        # idle again: training continues where it was
        wait_for(lambda: process_state(worker) != "T", "training to resume")
        assert daemon.poll() is None
        text = log.read_text()
        assert "training paused: serving inference requests" in text
        assert "training resumed" in text
    finally:
        for process in [*processes, broker]:
            stop_process(process)
