"""Global adapter files and the deltas boxes send."""

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import ModelError
from appliance.federation.global_adapter import (
    UpdateShapeError,
    deltas_from,
    initial_global_adapter,
    load_global_adapter,
    save_global_adapter,
)
from appliance.federation.updates import GlobalAdapter
from appliance.llm.adapters import AdapterFile, read_adapter
from appliance.llm.gguf_file import open_gguf, tensor_shapes
from tests.federation.plans import lora


@pytest.fixture(scope="module")
def shapes(tiny_f32: Path) -> dict[str, tuple[int, ...]]:
    return tensor_shapes(open_gguf(tiny_f32, ModelError))


def test_version_0_is_rebuilt_identically_everywhere(shapes) -> None:
    one = initial_global_adapter(
        shapes, lora(targets=["attn_q", "attn_v"], rank=4, alpha=8.0, seed=7, freeze_a=True)
    )
    two = initial_global_adapter(
        shapes, lora(targets=["attn_q", "attn_v"], rank=4, alpha=8.0, seed=7, freeze_a=True)
    )
    assert set(one.factors) == {f"blk.{i}.attn_{m}.weight" for i in (0, 1) for m in "qv"}
    for name, (a, b) in one.factors.items():
        np.testing.assert_array_equal(a, two.factors[name][0])
        assert not b.any()


def test_save_and_load_round_trip_with_metadata(shapes, tmp_path: Path) -> None:
    adapter = initial_global_adapter(
        shapes, lora(targets=["attn_q"], rank=4, alpha=8.0, seed=1, freeze_a=False)
    )
    adapter = GlobalAdapter(3, adapter.factors, adapter.alpha, adapter.frozen_a)
    path = save_global_adapter(tmp_path / "g.gguf", adapter, "llama", "c" * 64, "round-3")
    loaded = load_global_adapter(path)
    assert (loaded.version, loaded.frozen_a, loaded.alpha, loaded.rank) == (3, False, 8.0, 4)
    assert read_adapter(path).metadata["appliance.base_sha256"] == "c" * 64


def test_deltas_under_frozen_a_are_b_only(shapes) -> None:
    base = initial_global_adapter(
        shapes, lora(targets=["attn_q"], rank=4, alpha=8.0, seed=1, freeze_a=True)
    )
    trained = AdapterFile("llama", 8.0, {n: (a, b + 0.5) for n, (a, b) in base.factors.items()})
    deltas = deltas_from(trained, base)
    assert all(d.a is None and np.allclose(d.b, 0.5) for d in deltas.values())
    moved = AdapterFile("llama", 8.0, {n: (a + 1, b) for n, (a, b) in base.factors.items()})
    with pytest.raises(UpdateShapeError, match="A changed although the round freezes it"):
        deltas_from(moved, base)


def test_deltas_refuse_other_weights(shapes) -> None:
    base = initial_global_adapter(
        shapes, lora(targets=["attn_q"], rank=4, alpha=8.0, seed=1, freeze_a=False)
    )
    other = initial_global_adapter(
        shapes, lora(targets=["attn_v"], rank=4, alpha=8.0, seed=1, freeze_a=False)
    )
    with pytest.raises(UpdateShapeError, match="adapts other weights"):
        deltas_from(AdapterFile("llama", 8.0, other.factors), base)
