"""The trainer's updates against finite-difference gradients from llama.cpp forward passes.

One SGD step must move each factor entry by -eta times its gradient. Several steps must match
a numpy optimizer fed with per-step finite-difference gradients: stock ggml-opt accumulates
gradients across steps (research note, section 8), which a one-step check cannot see; patch
0003-ggml-opt-zero-gradients-after-step fixes it, and these tests fail without it.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.data.windows import Windows, token_windows
from appliance.errors import ModelError
from appliance.llm.adapters import LoraFactors, read_adapter, write_adapter
from appliance.llm.gguf_file import open_gguf, tensor_shapes
from appliance.llm.texts import tokenize
from appliance.llm.training.engine import (
    ADAMW_BETA1,
    ADAMW_BETA2,
    ADAMW_EPS,
    AdapterContext,
    LoraTrainer,
    Optimizer,
    TrainingModel,
)
from appliance.llm.training.lora_init import derived_a, target_shapes
from tests.training.reference import NumpyAdamW, all_entries, fd_gradient, set_factors, window_loss

TEXT = "the quick brown fox jumps over the lazy dog and the cat sat on the mat. " * 20
WINDOW = 256
THREADS = 2
FD_STEP = 1e-2


@pytest.fixture(scope="module")
def model(tiny_f32: Path) -> Iterator[TrainingModel]:
    loaded = TrainingModel(tiny_f32)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def windows(model: TrainingModel) -> Windows:
    return token_windows(tokenize(model.handle, TEXT), WINDOW, 64)


def start_adapter(path: Path, model: Path, targets: list[str], rank: int) -> Path:
    """Derived A and a random nonzero B, so that both factors have gradients."""
    shapes = target_shapes(tensor_shapes(open_gguf(model, ModelError)), targets)
    rng = np.random.default_rng(7)
    factors = {
        name: (
            derived_a(0, name, rank, n_in),
            rng.normal(0.0, 0.05, size=(n_out, rank)).astype(np.float32),
        )
        for name, (n_out, n_in) in shapes.items()
    }
    return write_adapter(path, factors, alpha=2.0 * rank, architecture="llama")


def train(
    model: TrainingModel,
    start: Path,
    *,
    windows: Windows,
    optimizer: Optimizer,
    rate: float,
    steps: int,
) -> LoraFactors:
    trainer = LoraTrainer(
        model,
        model.load_adapter(start),
        n_ctx=WINDOW,
        threads=THREADS,
        optimizer=optimizer,
        freeze_a=False,
        expected_pairs=len(read_adapter(start).factors),
        probe_tokens=windows.data[0].tolist(),
    )
    try:
        for index in range(steps):
            trainer.step(windows.data[index], windows.labels[index], rate)
        return trainer.factors()
    finally:
        trainer.close()


def reference_context(model: TrainingModel, start: Path, windows: Windows) -> AdapterContext:
    context = AdapterContext(model, model.load_adapter(start), WINDOW, THREADS)
    context.probe(windows.data[0].tolist())
    return context


def flat(factors: LoraFactors, entries: list[tuple[str, int, tuple[int, int]]]) -> np.ndarray:
    return np.array([factors[base][part][index] for base, part, index in entries], dtype=np.float64)


def unflat(
    template: LoraFactors, entries: list[tuple[str, int, tuple[int, int]]], values: np.ndarray
) -> LoraFactors:
    out = {base: (a.copy(), b.copy()) for base, (a, b) in template.items()}
    for (base, part, index), value in zip(entries, values, strict=True):
        out[base][part][index] = value
    return out


@pytest.mark.parametrize("part", [0, 1], ids=["A", "B"])
def test_one_sgd_step_moves_entries_by_minus_eta_times_the_fd_gradient(
    model: TrainingModel, windows: Windows, tiny_f32: Path, tmp_path: Path, part: int
) -> None:
    eta = 0.1
    start = start_adapter(tmp_path / "start.gguf", tiny_f32, ["attn_q", "attn_v"], rank=4)
    before = read_adapter(start).factors
    after = train(model, start, windows=windows, optimizer="sgd", rate=eta, steps=1)
    entries = all_entries(before, (part,))
    moved = np.abs(flat(after, entries) - flat(before, entries))
    chosen = [entries[i] for i in np.argsort(moved)[-8:]]
    context = reference_context(model, start, windows)
    try:
        grad = fd_gradient(
            lambda: window_loss(context, windows.data[0], windows.labels[0]),
            context,
            before,
            chosen,
            FD_STEP,
        )
    finally:
        context.close()
    delta = flat(after, chosen) - flat(before, chosen)
    np.testing.assert_allclose(delta, -eta * grad, rtol=0.03)


@pytest.mark.parametrize(("optimizer", "rate"), [("sgd", 0.2), ("adamw", 5e-3)])
def test_three_steps_match_a_numpy_optimizer_on_fd_gradients(
    *,
    model: TrainingModel,
    windows: Windows,
    tiny_f32: Path,
    tmp_path: Path,
    optimizer: Optimizer,
    rate: float,
) -> None:
    steps = 3
    start = start_adapter(tmp_path / "start.gguf", tiny_f32, ["attn_v"], rank=2)
    initial = read_adapter(start).factors
    trained = train(model, start, windows=windows, optimizer=optimizer, rate=rate, steps=steps)
    entries = all_entries(initial, (0, 1))
    values = flat(initial, entries)
    adamw = NumpyAdamW(len(values), rate, ADAMW_BETA1, ADAMW_BETA2, ADAMW_EPS)
    context = reference_context(model, start, windows)
    try:
        for index in range(steps):
            current = unflat(initial, entries, values)
            set_factors(context, current)
            grad = fd_gradient(
                lambda i=index: window_loss(context, windows.data[i], windows.labels[i]),
                context,
                current,
                entries,
                FD_STEP,
            )
            values = values + (adamw.update(grad) if optimizer == "adamw" else -rate * grad)
    finally:
        context.close()
    reference_update = values - flat(initial, entries)
    llama_update = flat(trained, entries) - flat(initial, entries)
    error = np.linalg.norm(llama_update - reference_update) / np.linalg.norm(reference_update)
    assert error < 0.03, f"{optimizer}: trained update differs from the reference by {error:.1%}"
