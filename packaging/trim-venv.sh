#!/usr/bin/env bash
# Trim the staged private venv of the .deb (build-deb.sh calls it after `pip install`, before
# the shared objects are stripped): only files no feature of appliance loads. Usage:
#
#   packaging/trim-venv.sh VENV        VENV: the staged venv (…/usr/lib/appliance/venv)
#
# Each step says what it saved, measured on the 0.1.0 venv (Python 3.11, amd64) whose total
# after build-deb.sh's older steps (no pip/setuptools, no byte code, stripped) was 311 MB; see
# "Install size" in docs/benchmarks.md. Prints one line per step on stderr; tests/packaging/
# test_trim_venv.py runs it on a fake venv.
set -euo pipefail
VENV=${1:?usage: trim-venv.sh VENV}
shopt -s nullglob
sites=("$VENV"/lib/python3*/site-packages)
(( ${#sites[@]} == 1 )) || { echo "trim-venv: no single site-packages under $VENV" >&2; exit 1; }
SITE=${sites[0]}
say() { echo "trim-venv: $*" >&2; }
kb() { du -sk "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

# 1. llama-cpp-python's wheel installs its CMake install tree a second time at the top of
#    site-packages: lib/ (every libggml*/libllama*/libmtmd .so again, plus libllama-common, which
#    nothing loads, and cmake/pkg-config files) and include/ (C headers). llama_cpp loads its
#    libraries from llama_cpp/lib only (llama_cpp._ctypes_extensions, appliance.llm.opt_abi).
#    Measured: 36.8 MB. The RECORD lines go too, so the metadata lists what is installed.
if [ -d "$SITE/llama_cpp/lib" ]; then
    dup=()
    for d in "$SITE/lib" "$SITE/include"; do
        if [ -d "$d" ]; then dup+=("$d"); fi
    done
    if (( ${#dup[@]} )); then
        if [ -n "$(find "${dup[@]}" -name '*.py' -print -quit)" ]; then
            say "$SITE/lib or include holds Python modules: not llama-cpp-python's copy"; exit 1
        fi
        saved=$(kb "${dup[@]}")
        rm -rf "${dup[@]}"
        for record in "$SITE"/llama_cpp_python-*.dist-info/RECORD; do
            sed -i -e '/^lib\//d' -e '/^include\//d' "$record"
        done
        say "llama-cpp-python's second lib/ and include/: $(mb "$saved")"
    fi
fi

# 2. A wheel cannot hold symbolic links, so llama_cpp/lib has libX.so, libX.so.0 and
#    libX.so.0.Y.Z as three identical files: the two short names become links (libX.so ->
#    libX.so.0 -> libX.so.0.Y.Z), as ldconfig would make them. Measured: 15.1 MB of 22.7.
if [ -d "$SITE/llama_cpp/lib" ]; then
    before=$(kb "$SITE/llama_cpp/lib")
    for full in "$SITE"/llama_cpp/lib/lib*.so.*.*; do
        if [ ! -f "$full" ] || [ -L "$full" ]; then continue; fi
        stem=${full%.so.*}.so                 # …/libggml.so
        version=${full#"$stem".}              # 0.25.3
        major=$stem.${version%%.*}            # …/libggml.so.0
        for pair in "$major:${full##*/}" "$stem:${major##*/}"; do
            link=${pair%%:*} target=${pair#*:}
            if [ -f "$link" ] && [ ! -L "$link" ] && cmp -s "$link" "$full"; then
                ln -sfn "$target" "$link"
            fi
        done
    done
    say "llama_cpp/lib copies made links: $(mb $((before - $(kb "$SITE/llama_cpp/lib"))))"
fi

# 3. Test suites inside packages (directories named tests below a package: scipy 33 of them,
#    numpy 14, mpmath, plotly, certifi). Nothing imports them outside their own test runners
#    (scipy.test(), numpy.test()). Modules named tests.py (jinja2.tests) and packages named
#    testing (numpy.testing) are kept. Measured: 25.7 MB.
mapfile -d '' tests < <(find "$SITE" -mindepth 2 -type d -name tests -prune -print0)
if (( ${#tests[@]} )); then
    saved=$(kb "${tests[@]}")
    rm -rf "${tests[@]}"
    say "${#tests[@]} tests/ folders in packages: $(mb "$saved")"
fi

# 4. plotly's Jupyter pieces: the JupyterLab extension (plotly/labextension and its copy under
#    share/jupyter) and the FigureWidget bundle (anywidget, not installed). `appliance report`
#    writes plotly.min.js inline (plotly.offline.get_plotlyjs), which stays. Measured: 14.0 MB.
jupyter=()
for p in "$SITE/plotly/labextension" "$SITE/plotly/package_data/widgetbundle.js" \
    "$VENV/share/jupyter"; do
    if [ -e "$p" ]; then jupyter+=("$p"); fi
done
if (( ${#jupyter[@]} )); then
    saved=$(kb "${jupyter[@]}")
    rm -rf "${jupyter[@]}"
    rmdir --ignore-fail-on-non-empty "$VENV/share" 2>/dev/null || true
    say "plotly's Jupyter extension and widget bundle: $(mb "$saved")"
fi
