#!/usr/bin/env bash
# Build the project's llama-cpp-python wheel: the pinned sdist with patches/llama.cpp/ applied
# (scripts/apply-llama-patches.sh), compiled with the flags below, cached by the hash of
# everything that goes into it. Prints the wheel's path on stdout.
#
#   scripts/build-llama.sh [--profile dev|package|vulkan]
#
#   dev      setup.sh and CI: -march=native (this machine's vector units), BLAS
#   package  the .deb: GGML_NATIVE=OFF (AVX2/FMA/F16C, runs on any x86-64 box with AVX2), BLAS
#   vulkan   dev plus GGML_VULKAN (layers offloaded with gpu_layers; ops Vulkan lacks stay
#            on the CPU). Needs glslc, libvulkan-dev, spirv-headers; not in setup.sh or CI
#            yet. Against Debian 12's Vulkan headers (1.3.239) ggml-vulkan.cpp does not
#            compile without a guard for VK_EXT_layer_settings (docs/vulkan.md)
#
# Flags, chosen by measurement (docs/benchmarks.md, "Training engine"): ggml's BLAS backend
# with Debian's OpenBLAS (libopenblas-dev) takes the training backward (OUT_PROD) as one
# sgemm per op; GGML_OPENMP stays on (ggml's own pool), the trainer worker sets
# OMP_WAIT_POLICY=PASSIVE for itself so the two pools do not spin against each other.
#
# Cache: $APPLIANCE_LLAMA_CACHE (default ~/.cache/appliance/llama), one folder per key.
# A stock sdist is fetched once with `pip download` into the same cache.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=dev
while (($#)); do
    case "$1" in
        --profile) PROFILE=$2; shift 2 ;;
        *) echo "build-llama: unknown option $1" >&2; exit 2 ;;
    esac
done
LLAMA_VERSION=0.3.36             # pinned by ABI (pyproject.toml, appliance/llm/abi.py)
PYTHON=${PYTHON:-python3}
CACHE=${APPLIANCE_LLAMA_CACHE:-$HOME/.cache/appliance/llama}
COMMON="-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF"
case "$PROFILE" in
    dev) FLAGS="$COMMON -DGGML_NATIVE=ON" ;;
    package) FLAGS="$COMMON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;;
    vulkan) FLAGS="$COMMON -DGGML_NATIVE=ON -DGGML_VULKAN=ON" ;;
    *) echo "build-llama: --profile is dev, package or vulkan (got $PROFILE)" >&2; exit 2 ;;
esac
say() { echo "build-llama: $*" >&2; }

pkg-config --exists openblas 2>/dev/null || [ -f /usr/include/x86_64-linux-gnu/cblas.h ] \
    || [ -f /usr/include/cblas.h ] || [ -n "$(find /usr/include -name cblas.h -print -quit)" ] \
    || { say "OpenBLAS headers are missing: apt-get install libopenblas-dev"; exit 1; }
if [ "$PROFILE" = vulkan ]; then
    command -v glslc >/dev/null && pkg-config --exists vulkan 2>/dev/null \
        && [ -d /usr/include/spirv ] \
        || { say "Vulkan build tools are missing: apt-get install glslc libvulkan-dev spirv-headers"; exit 1; }
fi

# The key: the patches, the apply script, the version, the flags and the host's CPU features
# when building for it (a cached -march=native wheel must not move to another CPU).
native_id=""
[ "$PROFILE" != package ] && native_id=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
KEY=$( { cat patches/llama.cpp/*.patch scripts/apply-llama-patches.sh
         echo "$LLAMA_VERSION $FLAGS $native_id"; } | sha256sum | cut -c1-16)
OUT=$CACHE/wheels/$PROFILE-$KEY
wheel=$(find "$OUT" -maxdepth 1 -name 'llama_cpp_python-*.whl' 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
    say "cached: $wheel"
    echo "$wheel"
    exit 0
fi

SDIST=$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
    say "fetching the llama-cpp-python $LLAMA_VERSION sdist"
    mkdir -p "$CACHE/sdist"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/sdist.tmp"
    mv "$CACHE/sdist.tmp"/llama_cpp_python-$LLAMA_VERSION.tar.gz "$SDIST"
    rm -rf "$CACHE/sdist.tmp"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-llama.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar xzf "$SDIST" -C "$WORK"
SRC=$WORK/llama_cpp_python-$LLAMA_VERSION
scripts/apply-llama-patches.sh "$SRC/vendor/llama.cpp"

say "compiling llama-cpp-python $LLAMA_VERSION ($PROFILE: $FLAGS); ~6-8 min on 2 cores, once"
start=$(date +%s)
CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir "$SRC" -w "$WORK/wheel" >&2
mkdir -p "$CACHE/wheels"
rm -rf "$OUT.tmp"
mv "$WORK/wheel" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
wheel=$(find "$OUT" -maxdepth 1 -name 'llama_cpp_python-*.whl' | head -1)
say "built in $(( $(date +%s) - start )) s: $wheel"
echo "$wheel"
