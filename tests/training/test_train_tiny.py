"""Training runs on the tiny model through the worker process: NLL falls, adapters carry their
metadata, reload exactly, serve on the original model; quantized bases and frozen A."""

from pathlib import Path

import numpy as np
import pytest

from appliance.data.windows import token_windows
from appliance.errors import AdapterError, ModelError, TrainingError
from appliance.llm.adapters import BASE_SHA256_KEY, read_adapter, write_adapter
from appliance.llm.gguf_file import file_sha256, open_gguf, tensor_shapes
from appliance.llm.native import lib
from appliance.llm.runtime import Runtime
from appliance.llm.texts import tokenize
from appliance.llm.tiny import TinyQuant
from appliance.llm.training.engine import (
    AdapterContext,
    LoraTrainer,
    TrainingModel,
    training_model_params,
)
from appliance.llm.training.job import TrainingResult
from appliance.llm.training.lora_init import derived_a, initial_factors, target_shapes
from appliance.llm.training.supervisor import TrainingRequest, train
from tests.training.conftest import SENTENCES, tiny_settings
from tests.training.reference import window_loss

HELDOUT = ". ".join(SENTENCES * 2)


def run(model: Path, corpus: Path, out: Path, cache: Path, **changes: object) -> TrainingResult:
    request = TrainingRequest(model, corpus, out, tiny_settings(**changes), cache)
    return train(request)


@pytest.fixture(scope="module")
def trained_f32(
    tiny_f32: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainingResult:
    folder = tmp_path_factory.mktemp("f32")
    return run(tiny_f32, corpus, folder / "adapter.gguf", folder / "cache")


def test_heldout_nll_falls_by_at_least_30_percent(trained_f32: TrainingResult) -> None:
    assert trained_f32.nll_before is not None and trained_f32.nll_after is not None
    assert trained_f32.nll_after < 0.7 * trained_f32.nll_before
    assert trained_f32.epochs == 4 and not trained_f32.stopped
    assert trained_f32.heldout_records == 2 and trained_f32.records == 22
    assert trained_f32.bad_lines == [
        'line 4: "text" must be a string, got int',
        "line 5: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]
    assert trained_f32.peak_rss_mb > 0 and trained_f32.tokens == trained_f32.steps * 256


def test_adapter_carries_its_metadata(trained_f32: TrainingResult, tiny_f32: Path) -> None:
    assert trained_f32.adapter is not None
    adapter = read_adapter(Path(trained_f32.adapter))
    meta = adapter.metadata
    assert meta[BASE_SHA256_KEY] == file_sha256(tiny_f32)
    assert (meta["appliance.lora.rank"], meta["appliance.lora.alpha"]) == (8, 16.0)
    assert meta["appliance.lora.targets"] == "attn_q,attn_v"
    assert (meta["appliance.lora.seed"], meta["appliance.lora.frozen_a"]) == (0, False)
    assert meta["appliance.data.records"] == 24 and meta["appliance.data.bad_lines"] == 2
    assert meta["appliance.training.steps"] == trained_f32.steps
    assert meta["appliance.training.windows"] * 4 == trained_f32.steps
    assert meta["appliance.training.tokens"] == trained_f32.tokens
    assert meta["appliance.training.val_loss"] == pytest.approx(trained_f32.val_loss)
    assert sorted(adapter.factors) == [f"blk.{i}.attn_{t}.weight" for i in (0, 1) for t in "qv"]
    assert trained_f32.adapter_bytes == Path(trained_f32.adapter).stat().st_size


def test_serving_the_adapter_lowers_nll_and_removing_it_restores_the_base(
    trained_f32: TrainingResult, tiny_f32: Path
) -> None:
    assert trained_f32.adapter is not None
    with Runtime(tiny_f32, context_tokens=512, threads=2) as runtime:
        base = runtime.nll([HELDOUT]).mean_nll
        base_logits = runtime.logits(runtime.tokenize(HELDOUT))
        runtime.set_adapters([(runtime.load_adapter(Path(trained_f32.adapter)), 1.0)])
        adapted = runtime.nll([HELDOUT]).mean_nll
        runtime.clear_adapters()
        assert np.array_equal(runtime.logits(runtime.tokenize(HELDOUT)), base_logits)
        assert runtime.nll([HELDOUT]).mean_nll == base
    assert adapted < base


def test_adapter_for_another_base_model_is_refused(
    trained_f32: TrainingResult, tiny_models: dict[TinyQuant, Path]
) -> None:
    assert trained_f32.adapter is not None
    with (
        Runtime(tiny_models["q8_0"], context_tokens=256, threads=2) as runtime,
        pytest.raises(AdapterError, match="adapter was made for base model sha256"),
    ):
        runtime.load_adapter(Path(trained_f32.adapter))


def test_reloaded_adapter_gives_exactly_the_live_loss(tiny_f32: Path, tmp_path: Path) -> None:
    shapes = target_shapes(tensor_shapes(open_gguf(tiny_f32, ModelError)), ["attn_q", "attn_v"])
    start = write_adapter(tmp_path / "start.gguf", initial_factors(shapes, 4, 0), 8.0, "llama")
    model = TrainingModel(tiny_f32)
    try:
        windows = token_windows(tokenize(model.handle, HELDOUT * 8), 256, 128)
        live = model.load_adapter(start)
        trainer = LoraTrainer(
            model,
            live,
            n_ctx=256,
            threads=2,
            optimizer="adamw",
            freeze_a=False,
            expected_pairs=len(shapes),
            probe_tokens=windows.data[0].tolist(),
        )
        for index in range(len(windows) - 1):
            trainer.step(windows.data[index], windows.labels[index], 2e-2)
        saved = write_adapter(tmp_path / "trained.gguf", trainer.factors(), 8.0, "llama")
        trainer.close()
        losses = []
        for handle in (live, model.load_adapter(saved)):
            context = AdapterContext(model, handle, 256, 2)
            context.probe(windows.data[-1].tolist())
            losses.append(window_loss(context, windows.data[-1], windows.labels[-1]))
            context.close()
    finally:
        model.close()
    assert losses[0] == losses[1]


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_bases_train(
    quant: TinyQuant, tiny_models: dict[TinyQuant, Path], corpus: Path, tmp_path: Path
) -> None:
    result = run(tiny_models[quant], corpus, tmp_path / "a.gguf", tmp_path / "cache")
    assert result.nll_before is not None and result.nll_after is not None
    assert result.nll_after < 0.7 * result.nll_before
    assert result.train_model == str(tiny_models[quant])


def test_q8_0_training_copy_is_cached_and_the_adapter_serves_on_the_original(
    tiny_models: dict[TinyQuant, Path], corpus: Path, tmp_path: Path
) -> None:
    served = tiny_models["q4_0"]
    cache = tmp_path / "cache"
    first = run(served, corpus, tmp_path / "a.gguf", cache, base_precision="q8_0", epochs=1)
    copy = Path(first.train_model)
    assert copy.parent == cache and copy.name == f"{file_sha256(served)}-q8_0.gguf"
    built = copy.stat().st_mtime_ns
    second = run(served, corpus, tmp_path / "b.gguf", cache, base_precision="q8_0", epochs=1)
    assert second.train_model == first.train_model and copy.stat().st_mtime_ns == built
    assert first.nll_gap is not None and abs(first.nll_gap) < 0.05
    assert read_adapter(tmp_path / "a.gguf").metadata[BASE_SHA256_KEY] == file_sha256(served)


def test_frozen_a_stays_bit_identical_and_is_the_same_on_every_box(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    boxes = [
        run(
            tiny_f32,
            corpus,
            tmp_path / f"box{i}.gguf",
            tmp_path / "cache",
            freeze_a=True,
            seed=11,
            epochs=1,
        )
        for i in (1, 2)
    ]
    adapters = [read_adapter(Path(str(b.adapter))) for b in boxes]
    for name, (a, b) in adapters[0].factors.items():
        n_in = a.shape[1]
        assert np.array_equal(a, derived_a(11, name, 8, n_in))
        assert np.array_equal(adapters[1].factors[name][0], a)
        assert np.abs(b).max() > 0
    assert adapters[0].metadata["appliance.lora.frozen_a"] is True
    assert not np.array_equal(
        derived_a(12, "blk.0.attn_q.weight", 8, 64), derived_a(11, "blk.0.attn_q.weight", 8, 64)
    )


def test_training_continues_from_an_existing_adapter(
    trained_f32: TrainingResult, tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    assert trained_f32.adapter is not None and trained_f32.nll_after is not None
    request = TrainingRequest(
        tiny_f32,
        corpus,
        tmp_path / "next.gguf",
        tiny_settings(epochs=1),
        tmp_path,
        start_adapter=Path(trained_f32.adapter),
    )
    result = train(request)
    assert result.nll_before == trained_f32.nll_before
    assert result.nll_after is not None and result.nll_after < trained_f32.nll_after + 0.1


def test_starting_adapter_that_does_not_fit_is_refused(
    trained_f32: TrainingResult, tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    assert trained_f32.adapter is not None
    request = TrainingRequest(
        tiny_f32,
        corpus,
        tmp_path / "x.gguf",
        tiny_settings(rank=4),
        tmp_path,
        start_adapter=Path(trained_f32.adapter),
    )
    with pytest.raises(TrainingError, match="starting adapter has rank 8 and alpha 16.0"):
        train(request)
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_target_is_refused_with_the_model_s_weights(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        TrainingError,
        match="no block weight named attn_qkv; its linear weights are attn_k, attn_output",
    ):
        run(tiny_f32, corpus, tmp_path / "x.gguf", tmp_path, targets=["attn_qkv"])


def test_linear_decay_and_max_steps(tiny_f32: Path, corpus: Path, tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    request = TrainingRequest(
        tiny_f32,
        corpus,
        tmp_path / "a.gguf",
        tiny_settings(max_steps=5, lr_decay="linear", optimizer="sgd", learning_rate=0.1),
        tmp_path,
    )
    result = train(request, events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5] and result.steps == 5
    assert [e["learning_rate"] for e in steps] == pytest.approx([0.1, 0.08, 0.06, 0.04, 0.02])
    assert all(float(str(e["tokens_per_s"])) > 0 and e["epoch"] == 1 for e in steps)
    assert read_adapter(tmp_path / "a.gguf").metadata["appliance.training.optimizer"] == "sgd"


def test_top_layers_puts_adapters_only_on_the_top_blocks(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    result = run(tiny_f32, corpus, tmp_path / "a.gguf", tmp_path, top_layers=1, epochs=2)
    adapter = read_adapter(tmp_path / "a.gguf")
    assert sorted(adapter.factors) == ["blk.1.attn_q.weight", "blk.1.attn_v.weight"]
    assert adapter.metadata["appliance.lora.top_layers"] == 1
    assert result.nll_after is not None and result.nll_before is not None
    assert result.nll_after < result.nll_before


def test_training_loads_the_base_on_the_cpu_unless_gpu_layers_says_otherwise() -> None:
    """llama.cpp's default n_gpu_layers is -1 (every layer on the device of a GPU build): the
    trainer passes training.gpu_layers instead, 0 unless configured."""
    assert lib.llama_model_default_params().n_gpu_layers == -1
    assert training_model_params(0).n_gpu_layers == 0
    assert training_model_params(12).n_gpu_layers == 12
    assert training_model_params(0).use_extra_bufts is False
    assert tiny_settings().gpu_layers == 0
