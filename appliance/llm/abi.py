"""Check at start-up that the installed llama-cpp-python is the one this code was written for.

appliance calls llama.cpp's C functions and reads its structs through ctypes; their layout
changes between llama-cpp-python releases without any error at the Python level. A mismatch
must stop the program with one clear message instead of a segfault later.
"""

from importlib.metadata import PackageNotFoundError, version

from appliance.errors import DependencyError

REQUIRED_LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp (commit 0c1e57098) this code targets."""


def check_llama_cpp_python() -> None:
    """Raise `DependencyError` unless the pinned llama-cpp-python is installed."""
    try:
        installed = version("llama-cpp-python")
    except PackageNotFoundError:
        raise DependencyError(
            "llama-cpp-python is not installed; appliance needs exactly "
            f"llama-cpp-python=={REQUIRED_LLAMA_CPP_PYTHON} "
            f"(pip install 'llama-cpp-python=={REQUIRED_LLAMA_CPP_PYTHON}')"
        ) from None
    if installed != REQUIRED_LLAMA_CPP_PYTHON:
        raise DependencyError(
            f"llama-cpp-python {installed} is installed but appliance needs exactly "
            f"{REQUIRED_LLAMA_CPP_PYTHON}: it uses llama.cpp's C structs, whose layout differs "
            f"between releases. Run: pip install 'llama-cpp-python=={REQUIRED_LLAMA_CPP_PYTHON}'"
        )
