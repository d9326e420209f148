"""The ctypes layer of the training API: our structs, the import-time check, its message."""

import ctypes
import subprocess
import sys
from pathlib import Path

import llama_cpp

from appliance.llm.abi import HOW_TO_BUILD
from appliance.llm.opt_abi import (
    EXPECTED_SIZES,
    GgmlTensor,
    LlamaOptParams,
    OptimizerParams,
    check_training_abi,
)


def test_the_binding_struct_lacks_optimizer_type_and_ours_has_it() -> None:
    assert ctypes.sizeof(llama_cpp.llama_cpp.llama_opt_params) == 40
    assert ctypes.sizeof(LlamaOptParams) == 48
    assert LlamaOptParams.optimizer_type.offset == 40
    assert OptimizerParams.sgd.offset == 20 and ctypes.sizeof(OptimizerParams) == 28


def test_check_binds_every_function_and_verifies_the_tensor_layout() -> None:
    abi = check_training_abi()
    assert abi.constant_optimizer_params_address != 0
    assert int(abi.ggml_tensor_overhead()) == 32 + ctypes.sizeof(GgmlTensor)
    assert {label: size for label, (_, size) in EXPECTED_SIZES.items()} == {
        "struct ggml_tensor": 336,
        "struct ggml_opt_optimizer_params": 28,
        "struct llama_opt_params": 48,
    }


def test_another_llama_cpp_python_version_fails_at_import_with_one_message(tmp_path: Path) -> None:
    info = tmp_path / "llama_cpp_python-0.3.99.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.99\n"
    )
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from appliance.errors import DependencyError\n"
        "try:\n    import appliance.llm.opt_abi\n"
        "except DependencyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == (
        "llama-cpp-python 0.3.99 is installed but appliance needs exactly 0.3.36: it uses "
        "llama.cpp's C structs, whose layout differs between releases. "
        f"To fix: {HOW_TO_BUILD}"
    )
