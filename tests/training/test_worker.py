"""The trainer worker as a real process: killed, aborting inside llama.cpp, hung, or asked to
stop through its parent - every end is a clear outcome and no partial adapter is left."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from appliance.config.training import TrainingSettings
from appliance.errors import TrainingError
from appliance.llm.adapters import read_adapter
from appliance.llm.training.blas_threads import openmp_openblas_path
from appliance.llm.training.supervisor import TrainingRequest, train
from tests.lora_helpers import attention_shapes, write_random_adapter
from tests.training.conftest import tiny_settings


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """An adapter already at the output path: a failed run must leave it as it was."""
    return write_random_adapter(tmp_path / "adapter.gguf", attention_shapes(64, 32, 2))


def assert_untouched(previous: Path, content: bytes) -> None:
    assert previous.read_bytes() == content
    assert sorted(p.name for p in previous.parent.iterdir()) == [previous.name]


def test_sigkill_mid_epoch_is_a_clear_error_and_leaves_the_previous_adapter(
    tiny_f32: Path, corpus: Path, previous: Path
) -> None:
    content = previous.read_bytes()
    killed: list[int] = []

    def kill_at_step_two(event: dict[str, Any]) -> None:
        if event["event"] == "step" and event["step"] == 2 and not killed:
            killed.append(event["worker_pid"])
            os.kill(event["worker_pid"], signal.SIGKILL)

    request = TrainingRequest(
        tiny_f32, corpus, previous, tiny_settings(epochs=50), previous.parent / "c"
    )
    with pytest.raises(TrainingError, match="trainer worker was killed by SIGKILL") as caught:
        train(request, kill_at_step_two)
    assert killed
    assert "; its last log lines:\n" in str(caught.value)
    assert "appliance.llm.training.loop: step 2/600 (epoch 1): loss" in str(caught.value)
    assert_untouched(previous, content)


def test_abort_inside_llama_cpp_quotes_the_assert_and_leaves_the_previous_adapter(
    tiny_f32: Path, corpus: Path, previous: Path
) -> None:
    content = previous.read_bytes()
    # bypasses validation on purpose: ggml-opt asserts on a learning rate that is not positive
    settings = TrainingSettings.model_construct(
        **{**tiny_settings().model_dump(), "learning_rate": -1.0}
    )
    request = TrainingRequest(tiny_f32, corpus, previous, settings, previous.parent / "c")
    with pytest.raises(TrainingError) as caught:
        train(request)
    message = str(caught.value)
    assert message.startswith("trainer worker was aborted inside llama.cpp; its last log lines:")
    assert "GGML_ASSERT(opt_pars.adamw.alpha > 0.0f) failed" in message
    assert_untouched(previous, content)


def test_a_hung_worker_is_killed_after_the_stall_timeout(
    tiny_f32: Path, corpus: Path, previous: Path
) -> None:
    content = previous.read_bytes()

    def freeze(event: dict[str, Any]) -> None:
        if event["event"] == "step" and event["step"] == 1:
            os.kill(event["worker_pid"], signal.SIGSTOP)

    request = TrainingRequest(
        tiny_f32,
        corpus,
        previous,
        tiny_settings(epochs=50),
        previous.parent / "c",
        stall_timeout_s=2,
    )
    with pytest.raises(
        TrainingError, match="trainer worker made no progress for 2 s and was killed"
    ):
        train(request, freeze)
    assert_untouched(previous, content)


def test_a_worker_paused_on_purpose_longer_than_the_stall_timeout_is_not_killed(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    paused = threading.Event()
    frozen: list[int] = []

    def thaw(pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        paused.clear()

    def freeze(event: dict[str, Any]) -> None:
        if event["event"] == "step" and event["step"] == 1 and not frozen:
            frozen.append(event["worker_pid"])
            paused.set()
            os.kill(event["worker_pid"], signal.SIGSTOP)
            threading.Timer(5.0, thaw, args=(event["worker_pid"],)).start()

    request = TrainingRequest(
        tiny_f32,
        corpus,
        tmp_path / "a.gguf",
        tiny_settings(max_steps=3),
        tmp_path,
        stall_timeout_s=2,
    )
    result = train(request, freeze, paused=paused)
    assert frozen and result.steps == 3 and not result.stopped


def test_sigterm_to_the_parent_stops_at_a_step_boundary_with_a_valid_adapter(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter.gguf"
    command = [
        sys.executable,
        "-m",
        "appliance.cli",
        "train",
        "--model",
        str(tiny_f32),
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--epochs",
        "500",
        "--base-precision",
        "same",
        "--cache-dir",
        str(tmp_path),
        "--json",
    ]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert parent.stderr is not None
    for line in parent.stderr:
        if " step 3/" in line:
            break
    parent.send_signal(signal.SIGTERM)
    stdout, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["stopped"] is True and 3 <= result["steps"] < 500 * 12
    assert result["nll_after"] is None
    adapter = read_adapter(out)
    assert adapter.metadata["appliance.training.stopped"] is True
    assert adapter.metadata["appliance.training.steps"] == result["steps"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_run_estimated_above_the_memory_limit_is_refused_before_it_starts(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    request = TrainingRequest(
        tiny_f32, corpus, tmp_path / "a.gguf", tiny_settings(memory_limit_mb=128), tmp_path
    )
    with pytest.raises(
        TrainingError,
        match=r"training would need about \d+ MiB \(weights .*more than the limit of 128 MiB",
    ):
        train(request)
    assert list(tmp_path.iterdir()) == []


def test_the_worker_runs_at_the_configured_nice_level(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    seen: list[int] = []

    def look(event: dict[str, Any]) -> None:
        if event["event"] == "step" and not seen:
            seen.append(os.getpriority(os.PRIO_PROCESS, int(event["worker_pid"])))

    request = TrainingRequest(
        tiny_f32, corpus, tmp_path / "a.gguf", tiny_settings(nice=7, max_steps=2), tmp_path
    )
    train(request, look)
    assert seen == [max(7, os.nice(0))]


def test_a_stop_event_from_another_thread_stops_at_a_step_boundary(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    stop = threading.Event()

    def stop_after_two(event: dict[str, Any]) -> None:
        if event["event"] == "step" and event["step"] == 2:
            stop.set()

    request = TrainingRequest(
        tiny_f32, corpus, tmp_path / "a.gguf", tiny_settings(epochs=50), tmp_path
    )
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(train(request, stop_after_two, stop)))
    runner.start()
    runner.join(timeout=300)
    [result] = outcome
    assert result.stopped and 2 <= result.steps < 50 * 12
    adapter = read_adapter(tmp_path / "a.gguf")
    assert adapter.metadata["appliance.training.steps"] == result.steps
    assert adapter.metadata["appliance.training.stopped"] is True


def test_only_the_worker_runs_with_one_passive_thread_pool(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    """ggml's and OpenBLAS's thread pools must not spin against each other in the trainer
    (OpenMP OpenBLAS, passive waits), but neither choice may leak into the daemon."""
    environments: list[dict[str, str]] = []
    maps: list[str] = []

    def read_worker(event: dict[str, Any]) -> None:
        if event["event"] == "step" and not maps:
            raw = Path(f"/proc/{event['worker_pid']}/environ").read_bytes()
            environments.append(dict(i.split("=", 1) for i in raw.decode().split("\0") if i))
            maps.append(Path(f"/proc/{event['worker_pid']}/maps").read_text())

    request = TrainingRequest(
        tiny_f32, corpus, tmp_path / "a.gguf", tiny_settings(epochs=1), tmp_path / "c"
    )
    assert "OMP_WAIT_POLICY" not in os.environ
    train(request, read_worker)
    assert environments[0]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ
    if not openmp_openblas_path().is_file():
        pytest.skip("libopenblas0-openmp is not installed (scripts/setup.sh installs it)")
    assert str(openmp_openblas_path().parent) in maps[0]
    assert "openblas-openmp" not in Path("/proc/self/maps").read_text()
