"""Patch 0004: ggml-cpu's OUT_PROD converts each value of a quantized/F16 src0 to F32 once
per op (at most once per thread), not once per dst row, and its results equal numpy's.

OUT_PROD(W, grad^T) is the gradient through a frozen weight W in LoRA training; the stock
kernel dequantized all of W once per token. The count comes from the counter the patch adds
(ggml_appliance_out_prod_dequantized), so these tests fail on a build without the patch
(no such symbol) and on a kernel that goes back to converting per row; no timing is asserted.
The graphs run on the CPU backend itself, so a BLAS backend in the build does not take them.
"""

from pathlib import Path
from typing import Any

import pytest

from tests.llm_build.ggml import run_isolated
from tests.llm_build.reference import assert_fp32_close, out_prod, weights


def case(type_name: str, ne00: int, ne01: int, ne1: int, **more: Any) -> dict[str, Any]:
    spec = {"type": type_name, "ne00": ne00, "ne01": ne01, "ne1": ne1, "transposed": True}
    spec |= {"ne02": 1, "ne03": 1, "ne2": 1, "ne3": 1} | more
    return spec


QUANTIZED = ["q8_0", "q4_0", "q4_k", "f16"]

# ne00 is not a multiple of the kernel's 256-column tile (except for q4_k, whose blocks are
# 256 wide: 512 = two tiles), ne01 not a multiple of its 64-row tile, ne1 not a multiple of
# its 32-row dst block; batched cases have equal and broadcast (GQA-like) dims 2 and 3.
SHAPES = [
    {"ne00": 288, "ne01": 100, "ne1": 37},
    {"ne00": 32, "ne01": 7, "ne1": 3},
    {"ne00": 288, "ne01": 65, "ne1": 33, "ne02": 2, "ne03": 3, "ne2": 2, "ne3": 3},
    {"ne00": 64, "ne01": 64, "ne1": 5, "ne02": 2, "ne2": 6, "ne3": 2},
    {"ne00": 96, "ne01": 40, "ne1": 9, "transposed": False},
]


def _shape(type_name: str, shape: dict[str, Any]) -> dict[str, Any]:
    spec = dict(shape)
    if type_name == "q4_k":  # K-quant rows are whole 256-value super-blocks
        spec["ne00"] = 256 * max(1, round(spec["ne00"] / 128))
    return case(type_name, **spec)


def _run(tmp_path: Path, cases: list[dict[str, Any]], n_threads: int) -> dict[str, Any]:
    return run_isolated(
        "tests.llm_build.out_prod_child:cpu_out_prod",
        tmp_path / f"out_prod_{n_threads}.npz",
        cases=cases,
        n_threads=n_threads,
    )


def _check(saved: dict[str, Any], i: int, spec: dict[str, Any]) -> None:
    w = weights(spec["type"], saved[f"{i}.src0"], spec)
    exact, scale = out_prod(w, saved[f"{i}.src1"])
    assert_fp32_close(saved[f"{i}.dst"], exact, scale, terms=spec["ne01"])


def _values(spec: dict[str, Any]) -> int:
    return spec["ne00"] * spec["ne01"] * spec["ne02"] * spec["ne03"]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("type_name", [*QUANTIZED, "f32"])
def test_out_prod_equals_numpy(tmp_path: Path, type_name: str, n_threads: int) -> None:
    cases = [_shape(type_name, shape) for shape in SHAPES]
    saved = _run(tmp_path, cases, n_threads)
    for i, spec in enumerate(cases):
        _check(saved, i, spec)


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_one_thread_converts_each_weight_once_per_op(tmp_path: Path, type_name: str) -> None:
    cases = [_shape(type_name, shape) for shape in SHAPES]
    saved = _run(tmp_path, cases, 1)
    for i, spec in enumerate(cases):
        # the stock kernel: ne1 * ne2 * ne3 times this (once per dst row)
        assert int(saved[f"{i}.dequantized"]) == _values(spec), spec


@pytest.mark.parametrize("type_name", ["q8_0", "q4_k"])
def test_threads_convert_each_weight_at_most_once_per_thread(
    tmp_path: Path, type_name: str
) -> None:
    # a LoRA-sized op: a 576 x 576 weight (SmolLM2's attention), 64 tokens; few column
    # chunks, so two threads split the rows as well; and a batched op with enough chunks
    # for every thread, where each value is converted exactly once
    lora = case(type_name, 768 if type_name == "q4_k" else 576, 576, 64)
    batched = _shape(type_name, SHAPES[2])
    saved = _run(tmp_path, [lora, batched], 2)
    assert _values(lora) <= int(saved["0.dequantized"]) <= 2 * _values(lora)
    assert int(saved["1.dequantized"]) == _values(batched)
    _check(saved, 0, lora)
    _check(saved, 1, batched)


def test_f32_src0_converts_nothing(tmp_path: Path) -> None:
    cases = [_shape("f32", SHAPES[0])]
    saved = _run(tmp_path, cases, 2)
    assert int(saved["0.dequantized"]) == 0
    _check(saved, 0, cases[0])
