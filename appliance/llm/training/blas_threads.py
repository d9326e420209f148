"""One thread pool for the trainer: Debian's OpenMP build of OpenBLAS, loaded before llama.cpp.

ggml's CPU backend runs its ops on an OpenMP pool; the BLAS backend hands the big matrix
products of the backward pass to OpenBLAS. Debian's default OpenBLAS (`openblas-pthread`)
keeps a second pool whose idle threads spin in `sched_yield`: a quarter of a training run's
time went to the two pools taking the cores from each other (perf, docs/benchmarks.md). The
OpenMP build (`libopenblas0-openmp`) runs its threads on ggml's libgomp pool instead.

`libggml-blas.so` asks for `libopenblas.so.0`; the dynamic loader reuses an object already
loaded under that soname, so loading the OpenMP build first (here, in the trainer worker
only, before llama_cpp is imported) chooses it for this process and for nothing else: the
daemons and other programs keep the system's choice.
"""

import ctypes
import logging
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

OPENBLAS_SONAME = "libopenblas.so.0"


def openmp_openblas_path() -> Path:
    """Where Debian installs the OpenMP build of OpenBLAS for this architecture."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return Path("/usr/lib") / multiarch / "openblas-openmp" / OPENBLAS_SONAME


def load_openmp_openblas(path: Path | None = None) -> bool:
    """Load the OpenMP OpenBLAS globally if it is installed; False (and a note) if not."""
    library = path or openmp_openblas_path()
    if not library.is_file():
        log.info(
            "%s is not installed (apt-get install libopenblas0-openmp): training uses the "
            "system's OpenBLAS, whose threads compete with ggml's",
            library,
        )
        return False
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    return True
