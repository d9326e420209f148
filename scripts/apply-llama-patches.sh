#!/usr/bin/env bash
# Apply the project's llama.cpp patch series (patches/llama.cpp/*.patch, in name order) to a
# llama.cpp source tree, and write ggml/src/ggml-appliance-patches.h, which the first patch
# reads, so the built library can say which patches it carries (ggml_appliance_patches()).
#
#   scripts/apply-llama-patches.sh DIR     DIR: llama.cpp's root (the sdist's vendor/llama.cpp)
#
# Every patch must apply exactly (no fuzz, no offset guessing beyond patch's default): a
# patch that no longer fits stops the build with its name, instead of a half-patched library.
# scripts/build-llama.sh (setup, CI) and packaging/build-deb.sh use this through that script.
set -euo pipefail
SERIES_DIR="$(cd "$(dirname "$0")/../patches/llama.cpp" && pwd)"
TREE=${1:?usage: apply-llama-patches.sh LLAMA_CPP_DIR}
[ -f "$TREE/ggml/src/ggml.c" ] || { echo "apply-llama-patches: $TREE is not a llama.cpp tree" >&2; exit 2; }
[ ! -e "$TREE/ggml/src/ggml-appliance-patches.h" ] \
    || { echo "apply-llama-patches: $TREE is already patched" >&2; exit 2; }

names=()
for p in "$SERIES_DIR"/*.patch; do
    name=$(basename "$p" .patch)
    if ! patch -d "$TREE" -p1 --forward --fuzz=0 --no-backup-if-mismatch --quiet < "$p"; then
        echo "apply-llama-patches: $name does not apply to $TREE" >&2
        exit 1
    fi
    names+=("$name")
done
{
    echo "// written by scripts/apply-llama-patches.sh: the patches applied to this tree"
    printf '#define GGML_APPLIANCE_PATCHES "%s"\n' "$(IFS=$'\n'; printf '%s\\n' "${names[@]}" | tr -d '\n')"
} > "$TREE/ggml/src/ggml-appliance-patches.h"
echo "apply-llama-patches: applied ${#names[@]} patches to $TREE" >&2
