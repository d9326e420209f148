"""The training copy of a base model in another precision, made once and cached.

On stock llama.cpp back-propagating through quantized weights was the slow part of LoRA
training on a CPU (ggml dequantized the same rows once per token), and a Q8_0 or F32 copy
trained 2.8x / 5.5x faster. The project's build (patches 0002, 0004) dequantizes once per op,
so the served file trains as fast as a copy and the default is `same` (docs/benchmarks.md);
a copy remains an option (`training.base_precision`). The copy is made with the `gguf`
package from the served file, cached under the state directory as
`<sha256>-<precision>.gguf` (written atomically, so a crash never leaves a half copy that
looks valid), and only used to train: the adapter is served on the original model.
"""

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType

from appliance.errors import ModelError
from appliance.llm.gguf_file import open_gguf

BasePrecision = Literal["same", "q8_0", "f32"]
_KEEP_FOR = {
    "f32": {QType.F32},
    "q8_0": {QType.F32, QType.Q8_0},
}
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_Q8_BLOCK = 32


def needs_copy(model: Path, precision: BasePrecision) -> bool:
    """True when some weight of `model` is stored in a slower type than `precision`."""
    if precision == "same":
        return False
    keep = _KEEP_FOR[precision]
    return any(t.tensor_type not in keep for t in open_gguf(model, ModelError).tensors)


def training_copy(model: Path, sha256: str, precision: BasePrecision, cache_dir: Path) -> Path:
    """The model to train on: `model` itself, or its cached copy in `precision`."""
    if not needs_copy(model, precision):
        return model
    target = cache_dir / f"{sha256}-{precision}.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # processes sharing a cache (several daemons on one host) make the copy once: the others
    # wait for the lock and find the file
    with (cache_dir / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            _convert_atomically(model, target, precision)
    return target


def _convert_atomically(model: Path, target: Path, precision: BasePrecision) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        _convert(model, Path(tmp_name), precision)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _convert(source: Path, target: Path, precision: BasePrecision) -> None:
    reader = open_gguf(source, ModelError)
    architecture = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(target), architecture)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_uint32(name, int(_FILE_TYPE[precision]))
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    keep = _KEEP_FOR[precision]
    for tensor in reader.tensors:
        if tensor.tensor_type in keep:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if precision == "q8_0" and values.ndim == 2 and values.shape[1] % _Q8_BLOCK == 0:
            writer.add_tensor(
                tensor.name, gguf.quants.quantize(values, QType.Q8_0), raw_dtype=QType.Q8_0
            )
        else:
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
