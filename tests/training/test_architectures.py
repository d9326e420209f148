"""The architecture matrix: every supported architecture x quantisation trains on a tiny model.

For each cell: training through the worker lowers held-out NLL; the saved adapter reloads in
a Runtime to the NLL the trainer reported; hot-swapping it into a running Runtime changes the
logits and generation, and switching it off restores the base bit for bit; stock
llama-cpp-python (`Llama(lora_path=...)`) loads it and its logits move the same way.
Per architecture (F32): one SGD step moves each adapter entry by -eta times its finite-
difference gradient, so a wrong backward op (a patch, a view, a norm) shows as a number.
And what is not supported is refused before a worker starts.
"""

from pathlib import Path

import numpy as np
import pytest

from appliance.data.records import read_records
from appliance.data.windows import split_heldout, token_windows
from appliance.errors import TrainingError
from appliance.llm.adapters import read_adapter, write_adapter
from appliance.llm.architectures import SUPPORTED, check_trainable, resolve_targets
from appliance.llm.gguf_file import file_sha256, open_gguf, read_model_info, tensor_shapes
from appliance.llm.native import llama_cpp
from appliance.llm.runtime import NLL_BATCH_TOKENS, Runtime
from appliance.llm.texts import tokenize
from appliance.llm.tiny import ALL_TINY_QUANTS, TINY_ARCHS, make_tiny_model
from appliance.llm.tiny.architecture import TinyArchitecture
from appliance.llm.tiny.llama import add_block as llama_block
from appliance.llm.training.engine import AdapterContext, LoraTrainer, TrainingModel
from appliance.llm.training.job import TrainingResult
from appliance.llm.training.lora_init import block_weights, derived_a, target_shapes
from appliance.llm.training.supervisor import TrainingRequest, train
from tests.training.conftest import SENTENCES, tiny_settings, write_corpus
from tests.training.reference import all_entries, fd_gradient, window_loss

CELLS = [(arch, quant) for arch in TINY_ARCHS for quant in ALL_TINY_QUANTS]
STEPS = 6
HELDOUT = ". ".join(SENTENCES * 2)
DEFAULT_TARGETS = {
    "llama": ["attn_q", "attn_v"],
    "qwen2": ["attn_q", "attn_v"],
    "qwen3": ["attn_q", "attn_v"],
    "gemma3": ["attn_q", "attn_v"],
    "phi3": ["attn_qkv"],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archs")


@pytest.fixture(scope="module")
def arch_corpus(folder: Path) -> Path:
    return write_corpus(folder / "plant.jsonl", records=24)


def model_path(folder: Path, arch: str, quant: str) -> Path:
    path = folder / f"{arch}-{quant}.gguf"
    return path if path.is_file() else make_tiny_model(path, quant, arch=arch)  # type: ignore[arg-type]


# -- the tiny models ----------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "quant"), CELLS)
def test_tiny_model_is_small_deterministic_and_loads(
    folder: Path, tmp_path: Path, arch: str, quant: str
) -> None:
    path = model_path(folder, arch, quant)
    again = make_tiny_model(tmp_path / "again.gguf", quant, arch=arch)  # type: ignore[arg-type]
    assert file_sha256(again) == file_sha256(path)
    assert path.stat().st_size < 700_000
    info = read_model_info(path, TrainingError)
    assert info.architecture == arch and info.layers == 2 and info.vocab_size == 312
    expected_type = {"f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K_M"}[quant]
    assert info.file_type == expected_type
    if quant == "q4_k":
        assert {"Q4_K", "Q6_K"} <= set(info.tensor_types)
    with Runtime(path, context_tokens=256, threads=2) as runtime:
        nll = runtime.nll([HELDOUT]).mean_nll
    assert 3.0 < nll < 9.0  # a random model: about log(312) = 5.7 nats per token


@pytest.mark.parametrize(
    ("arch", "has", "lacks"),
    [
        ("llama", {"attn_q", "attn_k", "attn_v", "ffn_gate"}, {"attn_qkv"}),
        ("qwen2", {"attn_q.bias", "attn_k.bias", "attn_v.bias"}, {"attn_q_norm"}),
        ("qwen3", {"attn_q_norm", "attn_k_norm"}, {"attn_q.bias"}),
        ("gemma3", {"post_attention_norm", "post_ffw_norm", "attn_q_norm"}, {"attn_qkv"}),
        ("phi3", {"attn_qkv"}, {"attn_q", "attn_v", "ffn_gate"}),
    ],
)
def test_tiny_models_have_their_architectures_tensors(
    folder: Path, arch: str, has: set[str], lacks: set[str]
) -> None:
    names = {
        t.name.split(".", 2)[2].removesuffix(".weight")
        for t in open_gguf(model_path(folder, arch, "f32"), TrainingError).tensors
        if t.name.startswith("blk.0.")
    }
    assert has <= names
    assert not lacks & names


def test_phi3_fuses_gate_and_up_into_one_matrix_twice_n_ff_high(folder: Path) -> None:
    shapes = tensor_shapes(open_gguf(model_path(folder, "phi3", "f32"), TrainingError))
    assert shapes["blk.0.ffn_up.weight"] == (2 * 128, 64)
    assert shapes["blk.0.attn_qkv.weight"] == (64 + 2 * 32, 64)


def test_gemma3_has_a_local_and_a_global_block(folder: Path) -> None:
    reader = open_gguf(model_path(folder, "gemma3", "f32"), TrainingError)
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 128
    assert reader.fields["gemma3.attention.sliding_window_pattern"].contents() == [True, False]


def test_make_tiny_refuses_an_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch must be one of llama, qwen2"):
        make_tiny_model(tmp_path / "x.gguf", arch="bert")
    assert not (tmp_path / "x.gguf").exists()


# -- targets and the supported-architecture check ------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_default_targets_are_the_query_and_value_projections_or_their_fused_matrix(
    folder: Path, arch: str
) -> None:
    shapes = tensor_shapes(open_gguf(model_path(folder, arch, "f32"), TrainingError))
    targets = target_shapes(shapes, ["attn_q", "attn_v"])
    assert sorted({name.split(".")[2] for name in targets}) == DEFAULT_TARGETS[arch]
    assert resolve_targets(["attn_q", "attn_v"], block_weights(shapes)) == DEFAULT_TARGETS[arch]


def test_explicit_targets_a_fused_model_lacks_are_refused_with_the_names_it_has(
    folder: Path,
) -> None:
    shapes = tensor_shapes(open_gguf(model_path(folder, "phi3", "f32"), TrainingError))
    with pytest.raises(TrainingError) as refused:
        target_shapes(shapes, ["attn_q", "ffn_gate"])
    assert str(refused.value) == (
        "the model has no block weight named attn_q, ffn_gate; its linear weights are "
        "attn_output, attn_qkv, ffn_down, ffn_up (this model fuses attn_q into attn_qkv, "
        "ffn_gate into ffn_up)"
    )


def test_an_untested_architecture_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(TrainingError, match=r"training a 'mamba' model is not supported"):
        check_trainable("mamba")


def test_a_missing_backward_patch_is_named() -> None:
    stock = ("0001-appliance-patch-marker", "0002-blas-out-prod-quantized-src0")
    with pytest.raises(TrainingError, match=r"needs llama.cpp patch 0007 \(GELU/GEGLU backward\)"):
        check_trainable("gemma3", stock)
    assert check_trainable("gemma3", (*stock, "0007-gelu-geglu-backward")).name == "gemma3"
    with_0006 = (*stock, "0006-ggml-fused-swiglu-backward")
    with pytest.raises(TrainingError, match=r"patch 0008 \(backward of a view of a fused matrix\)"):
        check_trainable("phi3", with_0006)
    assert (
        check_trainable("phi3", (*with_0006, "0008-view-backward-contiguous-grad")).name == "phi3"
    )
    assert check_trainable("llama", ()).name == "llama"


def test_training_an_unsupported_architecture_fails_before_any_worker_starts(
    tmp_path: Path, arch_corpus: Path
) -> None:
    """A llama-shaped model that says it is 'granite': refused in preparation."""
    granite = TinyArchitecture(name="granite", special="", add_block=llama_block)
    model = make_tiny_model(tmp_path / "granite.gguf", arch=granite)
    events: list[dict[str, object]] = []
    out = tmp_path / "adapter.gguf"
    request = TrainingRequest(model, arch_corpus, out, tiny_settings(), tmp_path / "cache")
    with pytest.raises(TrainingError, match="training a 'granite' model is not supported"):
        train(request, on_progress=events.append)
    assert events == [] and not out.exists()


# -- the matrix -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> dict[tuple[str, str], TrainingResult]:
    """Each cell's training run, made on demand once (the tests of one cell share it)."""
    return {}


def train_cell(
    results: dict[tuple[str, str], TrainingResult],
    folder: Path,
    corpus: Path,
    arch: str,
    quant: str,
) -> TrainingResult:
    if (arch, quant) not in results:
        model = model_path(folder, arch, quant)
        out = folder / f"{arch}-{quant}-adapter.gguf"
        settings = tiny_settings(epochs=1, max_steps=STEPS)
        request = TrainingRequest(model, corpus, out, settings, folder / "cache")
        results[arch, quant] = train(request)
    return results[arch, quant]


def heldout_texts(corpus: Path) -> list[str]:
    """The records the supervisor holds out, by the same split (plain text records)."""
    settings = tiny_settings()
    records = read_records(corpus).records
    _, heldout = split_heldout(records, settings.validation_fraction, settings.seed)
    return [r.text for r in heldout if r.text is not None]


@pytest.mark.parametrize(("arch", "quant"), CELLS)
def test_training_lowers_heldout_nll_and_the_adapter_reloads_to_it(
    trained: dict[tuple[str, str], TrainingResult],
    folder: Path,
    arch_corpus: Path,
    arch: str,
    quant: str,
) -> None:
    result = train_cell(trained, folder, arch_corpus, arch, quant)
    assert result.steps == STEPS and result.adapter is not None
    assert result.nll_before is not None and result.nll_after is not None
    assert result.nll_after < result.nll_before - 0.3, (result.nll_before, result.nll_after)
    adapter = read_adapter(Path(result.adapter))
    assert {name.split(".")[2] for name in adapter.factors} == set(DEFAULT_TARGETS[arch])
    assert adapter.metadata["appliance.lora.targets"] == ",".join(DEFAULT_TARGETS[arch])
    model = model_path(folder, arch, quant)
    with Runtime(model, context_tokens=512, threads=2) as runtime:
        runtime.set_adapters([(runtime.load_adapter(Path(result.adapter)), 1.0)])
        reloaded = runtime.nll(heldout_texts(arch_corpus), special=True).mean_nll
    assert reloaded == pytest.approx(result.nll_after, rel=1e-6)


@pytest.mark.parametrize(("arch", "quant"), CELLS)
def test_hot_swap_and_generation_use_the_adapter(
    trained: dict[tuple[str, str], TrainingResult],
    folder: Path,
    arch_corpus: Path,
    arch: str,
    quant: str,
) -> None:
    result = train_cell(trained, folder, arch_corpus, arch, quant)
    assert result.adapter is not None
    with Runtime(model_path(folder, arch, quant), context_tokens=512, threads=2) as runtime:
        tokens = runtime.tokenize(HELDOUT)
        base_logits = runtime.logits(tokens)
        base_text = runtime.generate("the quick", max_tokens=16, seed=1).text
        runtime.set_adapters([(runtime.load_adapter(Path(result.adapter)), 1.0)])
        adapted_logits = runtime.logits(tokens)
        adapted_text = runtime.generate("the quick", max_tokens=16, seed=1).text
        runtime.clear_adapters()
        assert np.array_equal(runtime.logits(tokens), base_logits)
    assert np.abs(adapted_logits - base_logits).max() > 0.1
    assert adapted_text != base_text


@pytest.mark.parametrize(("arch", "quant"), CELLS)
def test_stock_llama_cpp_python_loads_the_adapter(
    trained: dict[tuple[str, str], TrainingResult],
    folder: Path,
    arch_corpus: Path,
    arch: str,
    quant: str,
) -> None:
    result = train_cell(trained, folder, arch_corpus, arch, quant)
    assert result.adapter is not None
    model = model_path(folder, arch, quant)
    with Runtime(model, context_tokens=512, threads=2) as runtime:
        tokens = runtime.tokenize(HELDOUT)
        runtime.set_adapters([(runtime.load_adapter(Path(result.adapter)), 1.0)])
        ours = runtime.logits(tokens)
    logits = {}
    for lora in (None, result.adapter):
        # the Runtime's batch size: on Q4_K, ggml quantizes activations to Q8_K, and a
        # 290-token batch rounds differently from 256 + 34 (up to 0.2 in a logit; the
        # dequantized F32 model is 0.4 away from both)
        llm = llama_cpp.Llama(
            model_path=str(model),
            lora_path=lora,
            n_ctx=512,
            n_batch=NLL_BATCH_TOKENS,
            logits_all=True,
            verbose=False,
        )
        try:
            llm.eval(tokens)
            logits[lora] = np.array(llm.scores[: len(tokens)])
        finally:
            llm.close()
    assert np.abs(logits[result.adapter] - logits[None]).max() > 0.1
    np.testing.assert_allclose(logits[result.adapter], ours, atol=1e-4)


# -- gradients per architecture -------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_sgd_step_follows_the_finite_difference_gradient(
    folder: Path, tmp_path: Path, arch: str
) -> None:
    """Through every op of the architecture's backward pass (block 0's adapter sees them all)."""
    check_trainable(arch)
    path = model_path(folder, arch, "f32")
    shapes = target_shapes(tensor_shapes(open_gguf(path, TrainingError)), ["attn_q", "attn_v"])
    rng = np.random.default_rng(7)
    rank, eta = 4, 0.1
    factors = {
        name: (derived_a(0, name, rank, n_in), rng.normal(0, 0.05, (n_out, rank)).astype("f4"))
        for name, (n_out, n_in) in shapes.items()
    }
    start = write_adapter(tmp_path / "start.gguf", factors, alpha=2.0 * rank, architecture=arch)
    model = TrainingModel(path)
    try:
        text = "the quick brown fox jumps over the lazy dog and the cat sat on the mat. " * 20
        windows = token_windows(tokenize(model.handle, text), 256, 64)
        trainer = LoraTrainer(
            model,
            model.load_adapter(start),
            n_ctx=256,
            threads=2,
            optimizer="sgd",
            freeze_a=False,
            expected_pairs=len(factors),
            probe_tokens=windows.data[0].tolist(),
        )
        try:
            trainer.step(windows.data[0], windows.labels[0], eta)
            after = trainer.factors()
        finally:
            trainer.close()
        block0 = {n: f for n, f in factors.items() if n.startswith("blk.0.")}
        entries = all_entries(block0, (0, 1))
        moved = np.array([abs(after[b][p][i] - factors[b][p][i]) for b, p, i in entries])
        chosen = [entries[i] for i in np.argsort(moved)[-8:]]
        context = AdapterContext(model, model.load_adapter(start), 256, 2)
        try:
            context.probe(windows.data[0].tolist())
            grad = fd_gradient(
                lambda: window_loss(context, windows.data[0], windows.labels[0]),
                context,
                factors,
                chosen,
                1e-2,
            )
        finally:
            context.close()
    finally:
        model.close()
    delta = np.array([after[b][p][i] - factors[b][p][i] for b, p, i in chosen])
    np.testing.assert_allclose(delta, -eta * grad, rtol=0.03)


def test_every_supported_architecture_has_a_tiny_model() -> None:
    assert set(SUPPORTED) == set(TINY_ARCHS)
