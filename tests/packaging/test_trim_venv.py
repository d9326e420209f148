"""packaging/trim-venv.sh on a fake staged venv: what build-deb.sh takes out of the .deb's venv
(docs/benchmarks.md, "Install size") and what it must keep. No .deb is built."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRIM = ROOT / "packaging" / "trim-venv.sh"
BUILD = ROOT / "packaging" / "build-deb.sh"
LIBS = {"libggml-base": "0.25.3", "libggml": "0.25.3", "libllama": "0.5.0"}


def _write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _fake_venv(root: Path) -> tuple[Path, Path]:
    venv = root / "usr/lib/appliance/venv"
    site = venv / "lib/python3.11/site-packages"
    _write(site / "llama_cpp/__init__.py", "")
    for name, version in LIBS.items():
        body = f"\x7fELF {name}".encode() * 1000
        for suffix in ("", ".0", f".{version}"):
            _write(site / f"llama_cpp/lib/{name}.so{suffix}", body)
            _write(site / f"lib/{name}.so{suffix}", body)  # the wheel's second copy
    # not the same content: stays a file (nothing says which one is right)
    _write(site / "llama_cpp/lib/libodd.so", b"\x7fELF a")
    _write(site / "llama_cpp/lib/libodd.so.0", b"\x7fELF b")
    _write(site / "llama_cpp/lib/libodd.so.0.1.0", b"\x7fELF b")
    _write(site / "lib/libllama-common.so.0.5.0")
    _write(site / "lib/cmake/llama/llama-config.cmake")
    _write(site / "lib/pkgconfig/llama.pc")
    _write(site / "include/llama.h")
    _write(
        site / "llama_cpp_python-0.3.36.dist-info/RECORD",
        "include/llama.h,sha256=a,1\nlib/libllama.so,sha256=b,2\n"
        "llama_cpp/__init__.py,sha256=c,3\nllama_cpp/lib/libllama.so,sha256=d,4\n",
    )
    _write(site / "scipy/stats/_stats_py.py")
    _write(site / "scipy/stats/tests/test_stats.py")
    _write(site / "scipy/stats/tests/data/table.npz")
    _write(site / "numpy/_core/tests/test_umath.py")
    _write(site / "numpy/testing/__init__.py")  # public API: kept
    _write(site / "jinja2/tests.py")  # jinja2.defaults imports it: kept
    _write(site / "tests/__init__.py")  # a top-level package of that name: not ours to judge
    _write(site / "plotly/package_data/plotly.min.js")  # `appliance report` writes it inline
    _write(site / "plotly/package_data/templates/plotly_white.json")
    _write(site / "plotly/package_data/widgetbundle.js")
    _write(site / "plotly/labextension/static/remoteEntry.js")
    _write(venv / "share/jupyter/labextensions/jupyterlab-plotly/package.json")
    _write(venv / "bin/appliance", "#!/usr/lib/appliance/venv/bin/python3\n")
    return venv, site


def _trim(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(TRIM), str(venv)], capture_output=True, text=True, check=False
    )


def test_trims_what_no_feature_loads_and_keeps_the_rest(tmp_path: Path) -> None:
    venv, site = _fake_venv(tmp_path)
    done = _trim(venv)
    assert done.returncode == 0, done.stderr

    # 1. llama-cpp-python's second install tree, and its RECORD lines
    assert not (site / "lib").exists() and not (site / "include").exists()
    record = (site / "llama_cpp_python-0.3.36.dist-info/RECORD").read_text()
    assert record == "llama_cpp/__init__.py,sha256=c,3\nllama_cpp/lib/libllama.so,sha256=d,4\n"

    # 2. one file per library, the other names links to it (as ldconfig makes them)
    lib = site / "llama_cpp/lib"
    for name, version in LIBS.items():
        full = lib / f"{name}.so.{version}"
        assert full.is_file() and not full.is_symlink()
        assert os.readlink(lib / f"{name}.so.0") == f"{name}.so.{version}"
        assert os.readlink(lib / f"{name}.so") == f"{name}.so.0"
        # what ctypes opens (appliance.llm.opt_abi: libggml-base.so) still reads the library
        assert (lib / f"{name}.so").read_bytes() == f"\x7fELF {name}".encode() * 1000
    assert not (lib / "libodd.so").is_symlink()
    assert (lib / "libodd.so").read_bytes() == b"\x7fELF a"
    assert os.readlink(lib / "libodd.so.0") == "libodd.so.0.1.0"

    # 3. tests/ folders inside packages; modules named tests and packages named testing stay
    assert not (site / "scipy/stats/tests").exists()
    assert not (site / "numpy/_core/tests").exists()
    assert (site / "scipy/stats/_stats_py.py").is_file()
    assert (site / "numpy/testing/__init__.py").is_file()
    assert (site / "jinja2/tests.py").is_file()
    assert (site / "tests/__init__.py").is_file()

    # 4. plotly's Jupyter pieces go, what the offline report needs stays
    assert not (site / "plotly/labextension").exists()
    assert not (site / "plotly/package_data/widgetbundle.js").exists()
    assert not (venv / "share").exists()
    assert (site / "plotly/package_data/plotly.min.js").is_file()
    assert (site / "plotly/package_data/templates/plotly_white.json").is_file()
    assert (venv / "bin/appliance").is_file()

    for step in ("second lib/ and include/", "made links", "tests/ folders", "Jupyter"):
        assert step in done.stderr

    # a second run (or a venv without these pieces) changes nothing and succeeds
    again = _trim(venv)
    assert again.returncode == 0, again.stderr
    assert os.readlink(lib / "libllama.so") == "libllama.so.0"


def test_refuses_a_top_level_lib_that_holds_python(tmp_path: Path) -> None:
    venv, site = _fake_venv(tmp_path)
    _write(site / "lib/__init__.py", "")
    done = _trim(venv)
    assert done.returncode != 0
    assert "Python modules" in done.stderr
    assert (site / "lib/libllama.so").is_file()


def test_needs_one_site_packages(tmp_path: Path) -> None:
    done = _trim(tmp_path)
    assert done.returncode != 0 and "site-packages" in done.stderr


@pytest.mark.parametrize("step", ["the stage venv is trimmed", "before the strip"])
def test_build_deb_trims_the_staged_venv_before_stripping_it(step: str) -> None:
    text = BUILD.read_text()
    call = text.index('packaging/trim-venv.sh "$STAGE_VENV"')
    if step == "the stage venv is trimmed":
        assert text.index('"$STAGE_VENV/bin/pip" uninstall') < call
    else:
        # trimmed first, so no lintian override names a file that is gone, and md5sums,
        # Installed-Size and dpkg-shlibdeps see the trimmed tree
        assert call < text.index("strip --strip-unneeded")
        assert call < text.index("INSTALLED_SIZE=")
        assert call < text.index("dpkg-shlibdeps -O")
