"""Broken models and adapters give a clear appliance error naming the file; never a crash."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from appliance.errors import AdapterError, ModelError
from appliance.llm.adapters import BASE_SHA256_KEY, write_adapter
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Runtime
from appliance.llm.tiny import make_tiny_model
from tests.lora_helpers import attention_shapes, random_factors, write_random_adapter

SHAPES = attention_shapes(64, 32, 2)


@pytest.fixture(scope="module")
def runtime(tiny_f32: Path) -> Runtime:
    with Runtime(tiny_f32, context_tokens=256, threads=2) as rt:
        yield rt  # type: ignore[misc]


def truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


# -- models -------------------------------------------------------------------------------------


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.gguf: file does not exist"):
        Runtime(tmp_path / "nope.gguf")


def test_text_file_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelError, match=r"model\.gguf: not a GGUF file \(it starts with b'this'"):
        Runtime(path)


def test_empty_file_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="empty.gguf: not a GGUF file"):
        Runtime(path)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a directory"):
        Runtime(tmp_path)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.5, 0.99])
def test_truncated_model(tiny_f32: Path, tmp_path: Path, fraction: float) -> None:
    path = truncated_copy(tiny_f32, tmp_path / "cut.gguf", fraction)
    with pytest.raises(ModelError, match=r"cut\.gguf: (corrupt or )?truncated GGUF file"):
        Runtime(path)


def test_adapter_file_is_not_a_model(tmp_path: Path) -> None:
    path = write_random_adapter(tmp_path / "adapter.gguf", SHAPES)
    with pytest.raises(ModelError, match="is a GGUF 'adapter', not a model"):
        Runtime(path)


def test_unknown_architecture_reports_llama_cpps_reason(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_license("mit")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError) as caught:
        Runtime(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: llama.cpp could not load the model: ")
    assert "unknown model architecture: 'no-such-arch'" in message


# -- licence policy -------------------------------------------------------------------------------


def test_model_without_a_licence_is_refused(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "nolicence.gguf", license_name=None)
    with pytest.raises(ModelError, match="declares no licence .* model.allow_unlisted_license"):
        Runtime(path)


def test_model_with_an_unlisted_licence_is_refused(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "closed.gguf", license_name="Proprietary-EULA")
    with pytest.raises(ModelError, match="declares licence 'proprietary-eula'"):
        Runtime(path)


def test_unlisted_licence_loads_when_allowed_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_tiny_model(tmp_path / "closed.gguf", license_name="proprietary")
    with Runtime(path, context_tokens=256, policy=LicensePolicy(allow_unlisted=True)) as rt:
        assert rt.info.license == "proprietary"
    assert "loading anyway because allow_unlisted_license is set" in caplog.text


def test_allowed_list_is_configurable(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "mit.gguf", license_name="MIT")
    with pytest.raises(ModelError, match=r"allowed licences are apache-2\.0\. Add it"):
        Runtime(path, policy=LicensePolicy(allowed=("apache-2.0",)))


# -- adapters ---------------------------------------------------------------------------------


def test_adapter_that_is_not_gguf(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(AdapterError, match=r"a\.gguf: not a GGUF file"):
        runtime.load_adapter(path)


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.95])
def test_truncated_adapter(runtime: Runtime, tmp_path: Path, fraction: float) -> None:
    full = write_random_adapter(tmp_path / "full.gguf", SHAPES)
    path = truncated_copy(full, tmp_path / "cut.gguf", fraction)
    with pytest.raises(AdapterError, match=r"cut\.gguf: (corrupt or )?truncated GGUF file"):
        runtime.load_adapter(path)


def test_model_file_is_not_an_adapter(runtime: Runtime, tiny_f32: Path) -> None:
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        runtime.load_adapter(tiny_f32)


def test_adapter_for_another_architecture(runtime: Runtime, tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "q.gguf", random_factors(SHAPES), 8.0, "qwen2")
    with pytest.raises(
        AdapterError, match="adapter is for architecture 'qwen2', the model is 'llama'"
    ):
        runtime.load_adapter(path)


def test_adapter_with_transposed_factors(runtime: Runtime, tmp_path: Path) -> None:
    factors = {name: (b.T.copy(), a.T.copy()) for name, (a, b) in random_factors(SHAPES).items()}
    path = write_adapter(tmp_path / "t.gguf", factors, 8.0, "llama")
    with pytest.raises(
        AdapterError, match=r"blk\.0\.attn_q\.weight: A \(64, 4\) and B \(4, 64\)|do not fit"
    ):
        runtime.load_adapter(path)


def test_adapter_with_wrong_shapes(runtime: Runtime, tmp_path: Path) -> None:
    path = write_random_adapter(tmp_path / "w.gguf", {"blk.0.attn_v.weight": (64, 64)})
    with pytest.raises(AdapterError, match=r"do not fit the base weight \(n_out=32, n_in=64\)"):
        runtime.load_adapter(path)


def test_adapter_for_a_tensor_the_model_lacks(runtime: Runtime, tmp_path: Path) -> None:
    path = write_random_adapter(tmp_path / "m.gguf", {"blk.9.attn_q.weight": (64, 64)})
    with pytest.raises(AdapterError, match="tensor 'blk.9.attn_q.weight' does not exist"):
        runtime.load_adapter(path)


def test_adapter_with_nan_values(runtime: Runtime, tmp_path: Path) -> None:
    factors = random_factors(SHAPES)
    factors["blk.1.attn_q.weight"][1][3, 2] = np.nan
    path = write_adapter(tmp_path / "nan.gguf", factors, 8.0, "llama")
    with pytest.raises(AdapterError, match="'blk.1.attn_q.weight.lora_b' holds NaN"):
        runtime.load_adapter(path)


def test_adapter_made_for_another_base_model(runtime: Runtime, tmp_path: Path) -> None:
    path = write_adapter(
        tmp_path / "o.gguf", random_factors(SHAPES), 8.0, "llama", {BASE_SHA256_KEY: "ab" * 32}
    )
    with pytest.raises(AdapterError, match=f"made for base model sha256 {'ab' * 32}"):
        runtime.load_adapter(path)


def test_adapter_made_for_this_base_model_loads(runtime: Runtime, tmp_path: Path) -> None:
    path = write_adapter(
        tmp_path / "ok.gguf",
        random_factors(SHAPES),
        8.0,
        "llama",
        {BASE_SHA256_KEY: runtime.info.sha256},
    )
    adapter = runtime.load_adapter(path)
    assert adapter.file.metadata[BASE_SHA256_KEY] == runtime.info.sha256
    runtime.free_adapter(adapter)


def test_adapter_with_only_one_factor(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "half.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(AdapterError, match="blk.0.attn_q.weight has only lora_a"):
        runtime.load_adapter(path)


def test_runtime_still_works_after_refusals(runtime: Runtime, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("nope")
    for _ in range(3):
        with pytest.raises(AdapterError):
            runtime.load_adapter(bad)
    assert np.isfinite(runtime.nll(["still works"]).mean_nll)


def test_node_config_licence_policy_applies_to_the_runtime(tmp_path: Path) -> None:
    from appliance.config import load_config

    model = make_tiny_model(tmp_path / "mit.gguf", license_name="mit")
    head = 'role = "edge"\n[identity]\nplant_id = "p"\nnode_id = "n"\n[model]\npath = "mit.gguf"\n'
    (tmp_path / "strict.toml").write_text(head + 'allowed_licenses = ["apache-2.0"]\n')
    (tmp_path / "open.toml").write_text(head)
    strict = load_config(tmp_path / "strict.toml")
    with pytest.raises(ModelError, match=f"{model}: model declares licence 'mit'"):
        Runtime.from_settings(strict.model)
    with Runtime.from_settings(load_config(tmp_path / "open.toml").model) as rt:
        assert rt.info.license == "mit"


def test_llama_cpp_messages_reach_the_log(tiny_f32: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.DEBUG, logger="appliance.llama"):
        Runtime(tiny_f32, context_tokens=256).close()
    llama_lines = [r.getMessage() for r in caplog.records if r.name == "appliance.llama"]
    assert any("llama_model_loader" in line or "print_info" in line for line in llama_lines)
