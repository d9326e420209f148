"""The runtime runs on the project's own llama.cpp build, and says so clearly when it does not.

The marker (patch 0001) is checked on the library llama-cpp-python loaded, and the check's
refusals on two small shared libraries compiled here: one without the marker (a stock build)
and one that reports another series.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.errors import DependencyError
from appliance.llm.abi import REQUIRED_LLAMA_PATCHES, applied_patches, check_patched_build

SERIES = Path(__file__).resolve().parents[2] / "patches" / "llama.cpp"


def _library(tmp_path: Path, name: str, source: str) -> ctypes.CDLL:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (apt-get install build-essential)")
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(source)
    so_file = tmp_path / f"lib{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so_file, c_file], check=True)
    return ctypes.CDLL(str(so_file))


def test_the_required_series_is_the_series_in_the_repository() -> None:
    assert tuple(p.stem for p in sorted(SERIES.glob("*.patch"))) == REQUIRED_LLAMA_PATCHES


def test_every_patch_has_the_four_header_fields() -> None:
    for patch in sorted(SERIES.glob("*.patch")):
        header = patch.read_text().split("\ndiff --git ", 1)[0]
        for field in ("What:", "Why:", "Tested:", "Upstream:"):
            assert f"\n{field}" in f"\n{header}", f"{patch.name} has no {field} line"


def test_the_loaded_llama_cpp_carries_the_series() -> None:
    from appliance.llm.native import lib

    assert applied_patches(lib._lib) == REQUIRED_LLAMA_PATCHES
    check_patched_build(lib._lib)


def test_a_stock_build_is_refused_with_what_to_do(tmp_path: Path) -> None:
    stock = _library(tmp_path, "stock", "int ggml_version(void) { return 0; }\n")
    assert applied_patches(stock) is None
    with pytest.raises(DependencyError, match=r"stock build .* scripts/setup\.sh"):
        check_patched_build(stock)


def test_a_build_with_another_series_names_the_difference(tmp_path: Path) -> None:
    names = "\\n".join([*REQUIRED_LLAMA_PATCHES[:-1], "9999-local-experiment"])
    other = _library(
        tmp_path,
        "other",
        f'const char * ggml_appliance_patches(void) {{ return "{names}\\n"; }}\n',
    )
    with pytest.raises(DependencyError) as refused:
        check_patched_build(other)
    message = str(refused.value)
    assert f"missing: {REQUIRED_LLAMA_PATCHES[-1]}" in message
    assert "unexpected: 9999-local-experiment" in message
