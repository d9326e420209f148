"""Check at start-up that llama.cpp is the build this code was written for.

appliance calls llama.cpp's C functions and reads its structs through ctypes; their layout
changes between llama-cpp-python releases without any error at the Python level. And the
trainer needs the project's own patches to llama.cpp (patches/llama.cpp/: fast backward
through quantized weights, gradients reset between steps, backward ops llama.cpp lacks).
A mismatch of either must stop the program with one clear message, not a segfault, an
abort or a silently wrong gradient later.
"""

import ctypes
from importlib.metadata import PackageNotFoundError, version

from appliance.errors import DependencyError

REQUIRED_LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp (commit 0c1e57098) this code targets."""

REQUIRED_LLAMA_PATCHES: tuple[str, ...] = (
    "0001-appliance-patch-marker",
    "0002-blas-out-prod-quantized-src0",
    "0003-ggml-opt-zero-gradients-after-step",
    "0004-cpu-out-prod-quantized-once",
    "0006-ggml-fused-swiglu-backward",
    "0007-gelu-geglu-backward",
    "0008-view-backward-contiguous-grad",
)
"""The patch series (patches/llama.cpp/*.patch, by name, in order) the build must carry."""

HOW_TO_BUILD = (
    "build the project's llama-cpp-python with scripts/setup.sh (or scripts/build-llama.sh, "
    "then pip install --force-reinstall --no-deps the wheel it prints); "
    "the appliance .deb ships it"
)


def check_llama_cpp_python() -> None:
    """Raise `DependencyError` unless the pinned llama-cpp-python is installed."""
    try:
        installed = version("llama-cpp-python")
    except PackageNotFoundError:
        raise DependencyError(
            "llama-cpp-python is not installed; appliance needs exactly "
            f"llama-cpp-python=={REQUIRED_LLAMA_CPP_PYTHON} with its patches: {HOW_TO_BUILD}"
        ) from None
    if installed != REQUIRED_LLAMA_CPP_PYTHON:
        raise DependencyError(
            f"llama-cpp-python {installed} is installed but appliance needs exactly "
            f"{REQUIRED_LLAMA_CPP_PYTHON}: it uses llama.cpp's C structs, whose layout differs "
            f"between releases. To fix: {HOW_TO_BUILD}"
        )


def applied_patches(library: ctypes.CDLL) -> tuple[str, ...] | None:
    """The patch names `library` was built with, or None for a build without the marker."""
    try:
        marker = library.ggml_appliance_patches
    except AttributeError:
        return None
    marker.argtypes = []
    marker.restype = ctypes.c_char_p
    text: bytes = marker() or b""
    return tuple(line for line in text.decode().splitlines() if line)


def check_patched_build(library: ctypes.CDLL) -> None:
    """Raise `DependencyError` unless `library` carries exactly the required patch series."""
    applied = applied_patches(library)
    if applied is None:
        raise DependencyError(
            f"this llama.cpp ({library._name}) is a stock build without appliance's patches "
            f"(training would be slow and its gradients wrong): {HOW_TO_BUILD}"
        )
    if applied != REQUIRED_LLAMA_PATCHES:
        missing = [p for p in REQUIRED_LLAMA_PATCHES if p not in applied]
        extra = [p for p in applied if p not in REQUIRED_LLAMA_PATCHES]
        raise DependencyError(
            f"this llama.cpp ({library._name}) was built with another patch series "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}"
            f"): {HOW_TO_BUILD}"
        )
