"""Aggregation strategies: exactness, re-factorisation, robustness to bad boxes."""

import numpy as np
import pytest

from appliance.federation.strategies import (
    CoordinateMedian,
    ExactProduct,
    FedAvgFrozenA,
    FedIT,
    NormBound,
    RejectedUpdateError,
    TrimmedMean,
)
from appliance.federation.strategies.lowrank import DenseSum, LowRankSum
from appliance.federation.updates import ClientUpdate, Delta, GlobalAdapter

SHAPES = {"blk.0.attn_q.weight": (24, 32), "blk.1.attn_v.weight": (16, 32)}


def base(frozen: bool, rank: int = 4, seed: int = 0) -> GlobalAdapter:
    rng = np.random.default_rng(seed)
    factors = {
        n: (
            rng.normal(size=(rank, k)).astype(np.float32),
            rng.normal(size=(d, rank)).astype(np.float32) * 0.1,
        )
        for n, (d, k) in SHAPES.items()
    }
    return GlobalAdapter(1, factors, 8.0, frozen)


def update(
    node: str, g: GlobalAdapter, samples: int, seed: int, scale: float = 0.05
) -> ClientUpdate:
    rng = np.random.default_rng(seed)
    deltas = {
        n: Delta(
            None if g.frozen_a else (rng.normal(size=a.shape) * scale).astype(np.float32),
            (rng.normal(size=b.shape) * scale).astype(np.float32),
        )
        for n, (a, b) in g.factors.items()
    }
    return ClientUpdate(node, samples, deltas)


def products(g: GlobalAdapter, u: ClientUpdate) -> dict[str, np.ndarray]:
    return {n: b.astype(np.float64) @ a for n, (a, b) in u.factors_on(g).items()}


def run(strategy, g: GlobalAdapter, updates: list[ClientUpdate]):
    strategy.begin(g)
    for u in updates:
        strategy.accept(u)
    return strategy.finish()


def test_fedavg_of_b_with_frozen_a_equals_the_weighted_mean_of_products() -> None:
    g = base(frozen=True)
    ups = [update(f"box{i}", g, samples, seed=i) for i, samples in enumerate([10, 30, 60])]
    result = run(FedAvgFrozenA(), g, ups)
    weights = np.array([10, 30, 60]) / 100
    for name, (a, b) in result.factors.items():
        want = sum(w * products(g, u)[name] for w, u in zip(weights, ups, strict=True))
        np.testing.assert_allclose(b.astype(np.float64) @ a, want, atol=1e-6)
        np.testing.assert_array_equal(a, g.factors[name][0])
    assert result.report == {"strategy": "fedavg-frozen-a", "updates": 3, "samples": 100}


ACCUMULATORS = pytest.mark.parametrize("accumulator", ["factored", "dense"])


@ACCUMULATORS
def test_exact_product_matches_a_dense_truncated_svd(accumulator) -> None:
    g = base(frozen=False)
    ups = [update(f"box{i}", g, s, seed=i, scale=0.3) for i, s in enumerate([5, 7, 11, 13])]
    result = run(ExactProduct(accumulator=accumulator), g, ups)
    assert result.report["accumulator"] == accumulator
    total = 36
    for name, (a, b) in result.factors.items():
        dense = sum(u.sample_count * products(g, u)[name] for u in ups) / total
        uu, ss, vt = np.linalg.svd(dense)
        best = (uu[:, :4] * ss[:4]) @ vt[:4]
        np.testing.assert_allclose(b.astype(np.float64) @ a, best, atol=1e-5)
        assert a.shape == (4, 32) and b.shape == (SHAPES[name][0], 4)
    error = result.report["truncation_error"]
    dense = sum(u.sample_count * products(g, u)["blk.0.attn_q.weight"] for u in ups) / total
    s = np.linalg.svd(dense, compute_uv=False)
    assert error >= np.sqrt((s[4:] ** 2).sum()) / np.sqrt((s**2).sum()) - 1e-9
    assert 0 < error < 1


@ACCUMULATORS
def test_exact_product_is_exact_when_boxes_agree(accumulator) -> None:
    g = base(frozen=False)
    same = update("x", g, 1, seed=3)
    ups = [ClientUpdate(f"box{i}", 1 + i, same.deltas) for i in range(3)]
    result = run(ExactProduct(accumulator=accumulator), g, ups)
    assert result.report["truncation_error"] < 1e-6
    for name, (a, b) in result.factors.items():
        np.testing.assert_allclose(b.astype(np.float64) @ a, products(g, same)[name], atol=1e-5)


def test_fedit_is_inexact_where_exact_product_is_not() -> None:
    g = base(frozen=False)
    ups = [update(f"box{i}", g, 1, seed=i, scale=0.5) for i in range(2)]
    naive = run(FedIT(), g, ups).factors
    exact = run(ExactProduct(), g, ups).factors
    name = "blk.0.attn_q.weight"
    want = (products(g, ups[0])[name] + products(g, ups[1])[name]) / 2
    naive_error = np.linalg.norm(naive[name][1] @ naive[name][0] - want)
    exact_error = np.linalg.norm(exact[name][1] @ exact[name][0] - want)
    assert naive_error > 1.2 * exact_error  # exact is the optimal rank-r approximation


def test_low_rank_sum_memory_is_bounded_and_its_error_bound_holds() -> None:
    rng = np.random.default_rng(0)
    summed = LowRankSum(40, 30, max_rank=16)
    dense = np.zeros((40, 30))
    for _ in range(20):
        p, q = rng.normal(size=(40, 2)), rng.normal(size=(2, 30))
        summed.add(p, q)
        dense += p @ q
    assert summed._left.shape == (40, 16)
    result = summed.truncate(4)
    approx = result.left @ result.right
    error = np.linalg.norm(dense - approx) / np.linalg.norm(dense)
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt((s[4:] ** 2).sum()) / np.sqrt((s**2).sum())
    assert error <= optimal + result.streaming_error_bound + 1e-9
    assert result.streaming_error_bound > 0


def test_dense_sum_over_many_batches_is_exact() -> None:
    rng = np.random.default_rng(1)
    summed = DenseSum(40, 30, batch_rank=6)
    dense = np.zeros((40, 30))
    for rank in [2, 3, 2, 1, 4, 9, 2, 2, 3]:  # folds at uneven points; 9 > batch goes straight in
        p, q = rng.normal(size=(40, rank)), rng.normal(size=(rank, 30))
        summed.add(p, q)
        dense += p @ q
    result = summed.truncate(30, scale=0.5)
    np.testing.assert_allclose(result.left @ result.right, 0.5 * dense, atol=1e-9)
    assert result.streaming_error_bound == 0 and result.relative_error < 1e-12
    result = summed.truncate(4)
    s = np.linalg.svd(dense, compute_uv=False)
    assert result.relative_error == pytest.approx(np.sqrt((s[4:] ** 2).sum() / (s**2).sum()))


@pytest.mark.parametrize("make", [FedAvgFrozenA, CoordinateMedian, lambda: TrimmedMean(0.2)])
def test_a_nan_update_is_rejected_and_the_others_still_aggregate(make) -> None:
    g = base(frozen=True)
    good = [update(f"box{i}", g, 10, seed=i) for i in range(4)]
    bad = update("evil", g, 10, seed=9)
    bad.deltas["blk.0.attn_q.weight"].b[0, 0] = np.nan
    strategy = make()
    strategy.begin(g)
    for u in good[:2]:
        strategy.accept(u)
    with pytest.raises(RejectedUpdateError, match="evil: blk.0.attn_q.weight: NaN or infinite"):
        strategy.accept(bad)
    for u in good[2:]:
        strategy.accept(u)
    result = strategy.finish()
    assert result.report["updates"] == 4
    assert all(np.isfinite(b).all() for _, b in result.factors.values())


def test_a_huge_update_is_bounded_by_norm_bound() -> None:
    g = base(frozen=True)
    good = [update(f"box{i}", g, 10, seed=i) for i in range(3)]
    huge = update("evil", g, 10, seed=7, scale=1e4)
    bounded = run(NormBound(FedAvgFrozenA(), max_norm=10.0), g, [*good, huge])
    assert bounded.report["bounded"] == 1
    assert bounded.report["strategy"] == "norm-bound(fedavg-frozen-a)"
    # a weighted mean of changes each within the bound stays within the bound
    moved = sum(
        np.linalg.norm((b - g.factors[name][1]).astype(np.float64) @ a) ** 2
        for name, (a, b) in bounded.factors.items()
    )
    assert np.sqrt(moved) <= 10.0 + 1e-6
    naive = run(FedAvgFrozenA(), g, [*good, huge])
    name = "blk.0.attn_q.weight"
    assert np.linalg.norm(naive.factors[name][1]) > 100 * np.linalg.norm(bounded.factors[name][1])


@pytest.mark.parametrize("frozen", [True, False])
def test_norm_bound_brings_each_update_to_the_bound(frozen: bool) -> None:
    g = base(frozen=frozen)
    huge = update("evil", g, 10, seed=7, scale=50.0)
    captured = []

    class Capture(FedAvgFrozenA if frozen else ExactProduct):  # type: ignore[misc]
        def accept(self, u: ClientUpdate) -> None:
            captured.append(u)
            super().accept(u)

    run(NormBound(Capture(), max_norm=2.0), g, [huge])
    scaled = captured[0]
    total = 0.0
    for name, (a, b) in g.factors.items():
        d = scaled.deltas[name]
        new_a = a if d.a is None else a + d.a
        total += (
            np.linalg.norm((b + d.b).astype(np.float64) @ new_a - b.astype(np.float64) @ a) ** 2
        )
    assert np.sqrt(total) == pytest.approx(2.0, rel=1e-6)


def test_median_ignores_a_single_outlier_box() -> None:
    g = base(frozen=True)
    good = [update(f"box{i}", g, 10, seed=i, scale=0.01) for i in range(4)]
    evil = update("evil", g, 10_000, seed=9, scale=1e3)
    result = run(CoordinateMedian(), g, [*good, evil])
    name = "blk.0.attn_q.weight"
    spread = np.abs(np.stack([u.deltas[name].b for u in good])).max()
    assert np.abs(result.factors[name][1] - g.factors[name][1]).max() <= spread


def test_trimmed_mean_on_products_when_a_is_trained() -> None:
    g = base(frozen=False)
    ups = [update(f"box{i}", g, 1, seed=i) for i in range(5)]
    result = run(TrimmedMean(0.2), g, ups)
    name = "blk.1.attn_v.weight"
    stacked = np.sort(np.stack([products(g, u)[name] for u in ups]), axis=0)
    want = stacked[1:4].mean(axis=0)
    uu, ss, vt = np.linalg.svd(want)
    np.testing.assert_allclose(
        result.factors[name][1] @ result.factors[name][0], (uu[:, :4] * ss[:4]) @ vt[:4], atol=1e-5
    )
    assert result.report["strategy"] == "trimmed-mean(0.2)"
    assert 0 <= result.report["truncation_error"] < 1


def test_each_box_counts_once_per_round() -> None:
    g = base(frozen=True)
    strategy = FedAvgFrozenA()
    strategy.begin(g)
    strategy.accept(update("box1", g, 10, seed=1))
    with pytest.raises(RejectedUpdateError, match="box1: already contributed"):
        strategy.accept(update("box1", g, 10, seed=2))


def test_shape_and_mode_mismatches_are_rejected() -> None:
    g = base(frozen=True)
    strategy = FedAvgFrozenA()
    strategy.begin(g)
    wrong = update("b", g, 1, seed=1)
    wrong.deltas["blk.0.attn_q.weight"] = Delta(None, np.zeros((5, 4), np.float32))
    with pytest.raises(RejectedUpdateError, match=r"B shape \(5, 4\) != \(24, 4\)"):
        strategy.accept(wrong)
    trained = update("c", base(frozen=False), 1, seed=1)
    with pytest.raises(RejectedUpdateError, match="A sent for a frozen-A round"):
        strategy.accept(trained)
    with pytest.raises(RejectedUpdateError, match="FedAvg of B is exact only with a frozen A"):
        FedAvgFrozenA().begin(base(frozen=False))
    with pytest.raises(RejectedUpdateError, match="no update was accepted"):
        strategy.finish()
