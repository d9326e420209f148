"""LoRA adapter files: the GGUF layout llama.cpp loads, written and checked in numpy.

Orientation is PEFT's: for a base weight W of numpy shape (n_out, n_in), A is (r, n_in) and
B is (n_out, r); llama.cpp computes `W x + scale * (alpha / r) * B (A x)`. Our own metadata
(`appliance.*` keys) records which base model the adapter was made for and how.
"""

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from appliance.errors import AdapterError
from appliance.llm.gguf_file import field_value, open_gguf

LORA_A_SUFFIX = ".lora_a"
LORA_B_SUFFIX = ".lora_b"
BASE_SHA256_KEY = "appliance.base_sha256"

LoraFactors = dict[str, tuple[np.ndarray, np.ndarray]]
"""Base tensor name (e.g. `blk.0.attn_q.weight`) -> (A, B) in numpy orientation."""

MetadataValue = str | int | float | bool


@dataclass(frozen=True)
class AdapterFile:
    """The contents of a LoRA adapter GGUF."""

    architecture: str
    alpha: float
    factors: LoraFactors
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The rank r shared by every factor pair."""
        return int(next(iter(self.factors.values()))[0].shape[0])


def write_adapter(
    path: Path,
    factors: LoraFactors,
    alpha: float,
    architecture: str,
    metadata: dict[str, MetadataValue] | None = None,
) -> Path:
    """Write an adapter atomically: readers see the old file or the whole new one."""
    if not factors:
        raise AdapterError(f"{path}: an adapter needs at least one tensor pair")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_gguf(Path(tmp_name), factors, alpha, architecture, metadata or {})
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _write_gguf(
    path: Path,
    factors: LoraFactors,
    alpha: float,
    architecture: str,
    metadata: dict[str, MetadataValue],
) -> None:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for key, value in metadata.items():
        _add_metadata(writer, key, value)
    for base, (a, b) in factors.items():
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{path}: {base}: A {a.shape} and B {b.shape} are not (r, n_in) and (n_out, r)"
            )
        writer.add_tensor(base + LORA_A_SUFFIX, np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(base + LORA_B_SUFFIX, np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_metadata(writer: gguf.GGUFWriter, key: str, value: MetadataValue) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    else:
        writer.add_string(key, value)


def read_adapter(path: Path) -> AdapterFile:
    """Read and check an adapter file on its own (shapes pair up, values finite)."""
    reader = open_gguf(path, AdapterError)
    if field_value(reader, "general.type") != "adapter" or (
        field_value(reader, "adapter.type") != "lora"
    ):
        raise AdapterError(f"{path}: not a LoRA adapter (general.type/adapter.type missing)")
    architecture = field_value(reader, "general.architecture")
    alpha = field_value(reader, "adapter.lora.alpha")
    if not isinstance(architecture, str):
        raise AdapterError(f"{path}: adapter has no general.architecture")
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(f"{path}: adapter.lora.alpha must be a positive number (got {alpha})")
    metadata = {
        key: value
        for key in reader.fields
        if key.startswith("appliance.")
        and isinstance(value := field_value(reader, key), str | int | float | bool)
    }
    return AdapterFile(architecture, float(alpha), _factors(path, reader), metadata)


def _factors(path: Path, reader: gguf.GGUFReader) -> LoraFactors:
    halves: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        base, dot, part = tensor.name.rpartition(".")
        if not dot or part not in ("lora_a", "lora_b"):
            raise AdapterError(f"{path}: unexpected tensor {tensor.name!r} in a LoRA adapter")
        array = np.array(tensor.data, dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(tensor.shape))
        )
        if not np.isfinite(array).all():
            raise AdapterError(f"{path}: tensor {tensor.name!r} holds NaN or infinite values")
        halves.setdefault(base, {})[part] = array
    if not halves:
        raise AdapterError(f"{path}: adapter holds no tensors")
    factors: LoraFactors = {}
    for base, pair in halves.items():
        if set(pair) != {"lora_a", "lora_b"}:
            raise AdapterError(f"{path}: {base} has only {', '.join(sorted(pair))}")
        a, b = pair["lora_a"], pair["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{path}: {base}: A {a.shape} and B {b.shape} ranks differ")
        factors[base] = (a, b)
    ranks = {a.shape[0] for a, _ in factors.values()}
    if len(ranks) != 1:
        raise AdapterError(f"{path}: factors have different ranks {sorted(ranks)}")
    return factors


def check_adapter_fits(
    path: Path,
    adapter: AdapterFile,
    architecture: str,
    base_shapes: dict[str, tuple[int, ...]],
    base_sha256: str,
) -> None:
    """Refuse an adapter made for another model, with the precise reason."""
    if adapter.architecture != architecture:
        raise AdapterError(
            f"{path}: adapter is for architecture {adapter.architecture!r}, "
            f"the model is {architecture!r}"
        )
    made_for = adapter.metadata.get(BASE_SHA256_KEY)
    if made_for is not None and made_for != base_sha256:
        raise AdapterError(
            f"{path}: adapter was made for base model sha256 {made_for}, "
            f"the loaded model is {base_sha256}"
        )
    for base, (a, b) in adapter.factors.items():
        shape = base_shapes.get(base)
        if shape is None:
            raise AdapterError(f"{path}: tensor {base!r} does not exist in the base model")
        if len(shape) != 2:
            raise AdapterError(f"{path}: base tensor {base!r} is not a matrix {shape}")
        n_out, n_in = shape
        if a.shape[1] != n_in or b.shape[0] != n_out:
            raise AdapterError(
                f"{path}: {base}: A {a.shape} and B {b.shape} do not fit the base weight "
                f"(n_out={n_out}, n_in={n_in}); expected A (r, {n_in}) and B ({n_out}, r)"
            )
