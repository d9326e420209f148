"""A box rebuilds a global adapter from a delta, or finds out it needs the whole file.

The rebuilt adapter is written with the metadata the aggregator wrote and must come out as the
very file the aggregator announced (its sha256 is in the delta's header): the box then installs
it exactly like a delivered file. A delta to a version this box does not hold, or one that does
not rebuild that file, is answered by asking the aggregator for the whole file.
"""

from dataclasses import dataclass
from pathlib import Path

from appliance.config.layouts import EdgeLayout
from appliance.errors import AdapterError
from appliance.federation.downlink import DeltaError, DeltaHeader, apply_body
from appliance.federation.global_adapter import (
    initial_global_adapter,
    load_global_adapter,
    save_global_adapter,
)
from appliance.federation.updates import GlobalAdapter
from appliance.llm.gguf_file import file_sha256


class BaseMissingError(DeltaError):
    """The delta is to a version this box does not hold."""


@dataclass(frozen=True)
class BoxModel:
    """What a box knows of its base model, to rebuild and write global adapters."""

    sha256: str
    architecture: str
    shapes: dict[str, tuple[int, ...]]


def remove_stale_rebuilds(layout: EdgeLayout) -> int:
    """Delete rebuilt files a killed daemon left before installing them (a restart rebuilds
    or asks again); the number removed."""
    stale = layout.rebuilt_globals()
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def rebuild(header: DeltaHeader, body: bytes, layout: EdgeLayout, model: BoxModel) -> Path:
    """Write the global adapter the delta makes from this box's copy of its base; the path
    of a temporary file holding exactly the announced file, or `DeltaError`."""
    if header.model_sha256 != model.sha256:
        raise DeltaError(f"the delta is for base model {header.model_sha256[:12]}, not this one")
    rebuilt = apply_body(header, body, _base(header, layout, model))
    out = layout.rebuilt_global(header.to_version)
    save_global_adapter(out, rebuilt, model.architecture, model.sha256, header.round_id)
    if file_sha256(out) != header.to_sha256:
        out.unlink(missing_ok=True)
        raise DeltaError(f"the rebuilt v{header.to_version} differs from the announced file")
    return out


def _base(header: DeltaHeader, layout: EdgeLayout, model: BoxModel) -> GlobalAdapter:
    """Version 0 from the seed (the header carries its LoRA shape), else the file here."""
    if header.from_version == 0:
        if header.from_lora is None:
            raise DeltaError("a delta to version 0 must carry the LoRA shape")
        return initial_global_adapter(model.shapes, header.from_lora)
    path = layout.global_adapter(header.from_version)
    if not path.exists():
        raise BaseMissingError(f"this box does not hold v{header.from_version}")
    try:
        return load_global_adapter(path)
    except (AdapterError, ValueError) as exc:
        raise BaseMissingError(f"this box's v{header.from_version} cannot be read: {exc}") from None
