"""Read and check GGUF files before llama.cpp sees them.

llama.cpp gives terse reasons (or asserts) on broken files; reading the header with the `gguf`
package first lets us refuse a file that is not GGUF, is truncated or has the wrong kind with
a message that names the file and what is wrong with it.
"""

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.errors import ApplianceError

GGUF_MAGIC = b"GGUF"
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What an operator needs to know about a GGUF model file."""

    path: str
    architecture: str
    name: str | None
    layers: int
    embedding_length: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    context_length: int
    vocab_size: int
    file_type: str
    tensor_types: dict[str, int]
    parameters: int
    license: str | None
    sha256: str
    size_bytes: int


def open_gguf(path: Path, error: type[ApplianceError]) -> gguf.GGUFReader:
    """Open `path` as GGUF or raise `error` naming the file and the reason."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        raise error(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a GGUF file") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read: {exc.strerror}") from None
    if head != GGUF_MAGIC:
        raise error(f"{path}: not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, MemoryError) as exc:
        raise error(f"{path}: corrupt or truncated GGUF file ({exc})") from None
    _check_tensor_extent(path, reader, error)
    return reader


def _check_tensor_extent(path: Path, reader: gguf.GGUFReader, error: type[ApplianceError]) -> None:
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise error(
                f"{path}: truncated GGUF file: tensor {tensor.name!r} ends at byte {end} "
                f"but the file has {size} bytes"
            )


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    """A metadata value (str, number, or list), or None when the key is absent or its text
    is not UTF-8 (a damaged file: callers then refuse it as missing the key)."""
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        value = field.contents()
    except UnicodeDecodeError:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: the identity of a model or adapter."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_info(path: Path, error: type[ApplianceError]) -> ModelInfo:
    """Describe a base model file; raise `error` if it is not a usable model GGUF."""
    reader = open_gguf(path, error)
    kind = field_value(reader, "general.type")
    if kind not in (None, "model"):
        raise error(f"{path}: is a GGUF {kind!r}, not a model")
    arch = field_value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise error(f"{path}: GGUF metadata has no general.architecture")

    def arch_int(key: str) -> int:
        value = field_value(reader, f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) else 0

    tokens = field_value(reader, "tokenizer.ggml.tokens")
    vocab = arch_int("vocab_size") or (len(tokens) if isinstance(tokens, list) else 0)
    license_value = field_value(reader, "general.license")
    return ModelInfo(
        path=str(path),
        architecture=arch,
        name=field_value(reader, "general.name"),
        layers=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        feed_forward_length=arch_int("feed_forward_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv") or arch_int("attention.head_count"),
        context_length=arch_int("context_length"),
        vocab_size=vocab,
        file_type=_file_type_name(field_value(reader, "general.file_type"), reader),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        parameters=sum(int(np.prod(t.shape)) for t in reader.tensors),
        license=license_value.strip().lower() if isinstance(license_value, str) else None,
        sha256=file_sha256(path),
        size_bytes=os.path.getsize(path),
    )


def _file_type_name(value: Any, reader: gguf.GGUFReader) -> str:
    if isinstance(value, int):
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"unknown ({value})"
    counts = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return counts.most_common(1)[0][0] if counts else "unknown"


def tensor_shapes(reader: gguf.GGUFReader) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in numpy order (rows = outputs), as PEFT and our adapters use."""
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
