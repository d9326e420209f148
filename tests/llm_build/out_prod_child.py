"""Child-process side of the OUT_PROD tests: build ggml_out_prod graphs, run them, save
inputs and results for the parent to check against numpy.

Run through `tests.llm_build.ggml.run_isolated` only: a kernel that hits a GGML_ASSERT
aborts this process, and the parent reports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.llm_build.ggml import Context, Ggml, header, read_f32


def _src0(ctx: Context, type_name: str, values: np.ndarray) -> tuple[int, bytes]:
    if type_name == "f32":
        tensor = ctx.f32(values)
        return tensor, values.astype(np.float32).tobytes()
    return ctx.quantized(type_name, values)


def _build(ctx: Context, case: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """src0 (ne00, ne01, ne02, ne03) of the case's type, src1 (ne1, ne01, ne2, ne3) as a
    transposed view (the backward of MUL_MAT) or contiguous; returns the out_prod node."""
    ne00, ne01, ne1 = case["ne00"], case["ne01"], case["ne1"]
    ne02, ne03, ne2, ne3 = case["ne02"], case["ne03"], case["ne2"], case["ne3"]
    src0, raw = _src0(ctx, case["type"], rng.standard_normal((ne03, ne02, ne01, ne00)))
    if case["transposed"]:
        grad = ctx.f32(rng.standard_normal((ne3, ne2, ne1, ne01)))
        src1 = int(ctx.ggml.ggml_transpose(ctx.ctx, grad))
    else:
        src1 = ctx.f32(rng.standard_normal((ne3, ne2, ne01, ne1)))
    dst = int(ctx.ggml.ggml_out_prod(ctx.ctx, src0, src1))
    return {"src0": src0, "raw": raw, "src1": src1, "dst": dst}


def cpu_out_prod(out: str, cases: list[dict[str, Any]], n_threads: int) -> None:
    """Each case on the CPU backend; saves src0's bytes, src1, dst and how many src0 values
    the kernel converted to F32 (patch 0004's counter) per case."""
    ggml = Ggml()
    rng = np.random.default_rng(14)
    saved: dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        with Context(ggml) as ctx:
            built = _build(ctx, case, rng)
            ggml.ggml_appliance_out_prod_dequantized_reset()
            ctx.compute([built["dst"]], n_threads)
            saved[f"{i}.dequantized"] = np.array(ggml.ggml_appliance_out_prod_dequantized())
            saved[f"{i}.src0"] = np.frombuffer(built["raw"], dtype=np.uint8)
            saved[f"{i}.src1"] = read_f32(built["src1"])
            saved[f"{i}.dst"] = read_f32(built["dst"])
    np.savez(out, **saved)


def blas_out_prod(out: str, cases: list[dict[str, Any]]) -> None:
    """Each case: whether the BLAS backend takes it, and (when it does) its result there."""
    ggml = Ggml()
    blas = ggml.ggml_backend_blas_init()
    if not blas:
        raise SystemExit("ggml_backend_blas_init returned NULL: this build has no BLAS backend")
    rng = np.random.default_rng(2)
    saved: dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        with Context(ggml) as ctx:
            built = _build(ctx, case, rng)
            supported = bool(ggml.ggml_backend_supports_op(blas, built["dst"]))
            saved[f"{i}.supported"] = np.array(supported)
            if supported:
                graph = ggml.ggml_new_graph_custom(ctx.ctx, 64, False)
                ggml.ggml_build_forward_expand(graph, built["dst"])
                # the tensors live in host memory (a CPU context), which the BLAS backend reads
                status = ggml.ggml_backend_graph_compute(blas, graph)
                if status != 0:
                    raise SystemExit(f"ggml_backend_graph_compute returned {status}")
                saved[f"{i}.dst"] = read_f32(built["dst"])
            saved[f"{i}.src0"] = np.frombuffer(built["raw"], dtype=np.uint8)
            saved[f"{i}.src1"] = read_f32(built["src1"])
            assert header(built["dst"]).ne[0] == case["ne00"]
    ggml.ggml_backend_free(blas)
    np.savez(out, **saved)
