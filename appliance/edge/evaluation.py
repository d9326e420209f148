"""Held-out NLL of an adapter on the box, measured on the serving model itself.

Training may use a higher-precision copy of the base; what matters on the line is the model
as served, so every number here comes from the serving runtime. The adapters in effect are
restored afterwards whatever happens.
"""

from collections.abc import Sequence
from pathlib import Path

from appliance.llm.runtime import Adapter, Runtime


def nll_with(runtime: Runtime, texts: Sequence[str], adapter: Adapter | None) -> tuple[float, int]:
    """(mean NLL, tokens) of `texts` with `adapter` alone (None: the base model)."""
    before = runtime.active_adapters
    try:
        runtime.set_adapters([] if adapter is None else [(adapter, 1.0)])
        result = runtime.nll(texts, special=True)
    finally:
        runtime.set_adapters(before)
    return result.mean_nll, result.tokens


def nll_of_file(runtime: Runtime, texts: Sequence[str], path: Path) -> float:
    """Mean held-out NLL of an adapter file (loaded, measured, freed)."""
    adapter = runtime.load_adapter(path)
    try:
        return nll_with(runtime, texts, adapter)[0]
    finally:
        runtime.free_adapter(adapter)
