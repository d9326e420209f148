"""DP building blocks: clipping bounds the norm, noise has the configured scale, the
accountant's epsilon is dp-accounting's, the ledger fails closed."""

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.federation.updates import Delta
from appliance.privacy.accountant import PrivacyLedger, PrivacyLedgerError, Release, epsilon
from appliance.privacy.clipping import ClippingError, clip, update_norm
from appliance.privacy.dp import add_noise, noise_share_std, privatize

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def updates(draw: st.DrawFn) -> dict[str, Delta]:
    frozen = draw(st.booleans())
    out = {}
    for i in range(draw(st.integers(1, 3))):
        rows, rank, cols = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
        b = draw(arrays(np.float32, (rows, rank), elements=finite))
        a = None if frozen else draw(arrays(np.float32, (rank, cols), elements=finite))
        out[f"blk.{i}.attn_q.weight"] = Delta(a, b)
    return out


@given(updates(), st.floats(1e-3, 1e3))
@settings(max_examples=300, deadline=None)
def test_clipping_bounds_every_updates_norm(deltas: dict[str, Delta], bound: float) -> None:
    clipped = clip(deltas, bound)
    assert update_norm(clipped.deltas) <= bound
    norm = update_norm(deltas)
    if norm <= bound:  # small updates pass unchanged
        for name, delta in deltas.items():
            np.testing.assert_array_equal(clipped.deltas[name].b, delta.b)
    else:  # large ones keep their direction and land on the bound (float32 rounding aside)
        assert update_norm(clipped.deltas) == pytest.approx(bound, rel=1e-5)
        for name, delta in deltas.items():
            np.testing.assert_allclose(
                clipped.deltas[name].b, delta.b * clipped.factor, rtol=1e-6, atol=1e-30
            )


def test_clipping_refuses_nan_and_bad_bounds() -> None:
    deltas = {"t": Delta(None, np.array([[np.nan, 1.0]], np.float32))}
    with pytest.raises(ClippingError, match="NaN"):
        clip(deltas, 1.0)
    good = {"t": Delta(None, np.ones((2, 2), np.float32))}
    for bound in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ClippingError):
            clip(good, bound)


def test_clipping_the_norm_covers_a_and_b_together() -> None:
    deltas = {"t": Delta(np.full((1, 4), 3.0, np.float32), np.full((4, 1), 4.0, np.float32))}
    assert update_norm(deltas) == pytest.approx(10.0)  # sqrt(4*9 + 4*16)
    assert update_norm(clip(deltas, 5.0).deltas) <= 5.0


def test_noise_scale_matches_the_configuration() -> None:
    """Noise on a zero update: sample std within 6 standard errors of z*S."""
    clip_norm, z = 0.5, 1.3
    shape = (400, 500)  # 200k coordinates
    zero = {"t": Delta(None, np.zeros(shape, np.float32))}
    out = privatize(zero, clip_norm, z, np.random.default_rng(1234))
    sample = out.deltas["t"].b.astype(np.float64).ravel()
    n, sigma = sample.size, z * clip_norm
    assert out.noise_std == sigma
    # std error of the sample variance of a normal sample: sigma^2 * sqrt(2 / (n - 1))
    assert abs(sample.var(ddof=1) - sigma**2) < 6 * sigma**2 * math.sqrt(2 / (n - 1))
    assert abs(sample.mean()) < 6 * sigma / math.sqrt(n)
    # and it is Gaussian: about 68.27 % within one sigma (binomial std error)
    inside = np.mean(np.abs(sample) < sigma)
    assert abs(inside - 0.682689) < 6 * math.sqrt(0.682689 * 0.317311 / n)


def test_noise_is_added_to_the_clipped_update_not_the_raw_one() -> None:
    rng = np.random.default_rng(7)
    raw = {"t": Delta(None, rng.normal(0, 10, (300, 300)).astype(np.float32))}
    clipped = clip(raw, 2.0)
    out = privatize(raw, 2.0, 0.8, np.random.default_rng(99))
    noise = (out.deltas["t"].b - clipped.deltas["t"].b).astype(np.float64).ravel()
    sigma = 0.8 * 2.0
    assert out.clipped
    assert abs(noise.var(ddof=1) - sigma**2) < 6 * sigma**2 * math.sqrt(2 / (noise.size - 1))


def test_distributed_noise_shares_sum_to_the_central_noise() -> None:
    clip_norm, z, boxes = 1.0, 2.0, 8
    std = noise_share_std(clip_norm, z, boxes)
    rng = np.random.default_rng(5)
    zero = {"t": Delta(None, np.zeros((200, 250), np.float32))}
    total = sum(add_noise(zero, std, rng)["t"].b.astype(np.float64) for _ in range(boxes))
    sample = np.asarray(total).ravel()
    sigma = z * clip_norm
    assert abs(sample.var(ddof=1) - sigma**2) < 6 * sigma**2 * math.sqrt(2 / (sample.size - 1))
    with pytest.raises(ValueError):
        noise_share_std(1.0, 1.0, 0)


def independent_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    accountant = rdp.RdpAccountant()
    composed = []
    for z, q, count in events:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        composed.append(dp_accounting.SelfComposedDpEvent(event, count))
    accountant.compose(dp_accounting.ComposedDpEvent(composed))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(
    ("events", "delta"),
    [
        ([(1.0, 1.0, 1)], 1e-5),
        ([(1.0, 1.0, 10)], 1e-5),
        ([(0.7, 1.0, 3), (2.5, 1.0, 20)], 1e-6),
        ([(1.1, 0.1, 50)], 1e-5),
    ],
)
def test_accountant_epsilon_equals_dp_accounting(
    events: list[tuple[float, float, int]], delta: float, tmp_path: Path
) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    n = 0
    for z, q, count in events:
        for _ in range(count):
            ledger.record(Release(f"r{n}", z, q))
            n += 1
    expected = independent_epsilon(events, delta)
    assert ledger.spent(delta) == pytest.approx(expected, rel=1e-9)
    assert PrivacyLedger.load(ledger.path).spent(delta) == pytest.approx(expected, rel=1e-9)
    # the known value for one Gaussian release, z = 1, delta = 1e-5 (RDP, default orders)
    if events == [(1.0, 1.0, 1)]:
        assert 4.0 < expected < 6.0
    assert epsilon([], delta) == 0.0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b'{"v": 2, "releases": []}',
        b'{"v": 1}',
        b'{"v": 1, "releases": [{"round_id": "r1", "noise_multiplier": NaN, "sampling_rate": 1}]}',
        b'{"v": 1, "releases": [{"round_id": "r1", "noise_multiplier": 0, "sampling_rate": 1}]}',
        b'{"v": 1, "releases": [{"round_id": "r1", "noise_multiplier": "1", "sampling_rate": 1}]}',
        b'{"v": 1, "releases": [{"round_id": "", "noise_multiplier": 1, "sampling_rate": 1}]}',
        b'{"v": 1, "releases": [{"round_id": "r", "noise_multiplier": 1, "sampling_rate": 2}]}',
        b'{"v": 1, "releases": [{"round_id": "r", "noise_multiplier": true, "sampling_rate": 1}]}',
        b'{"v": 1, "releases": [1]}',
        b"[]",
        b"\xff\xfe",
    ],
)
def test_a_damaged_ledger_is_an_error_never_an_empty_budget(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(PrivacyLedgerError, match="damaged privacy ledger"):
        PrivacyLedger.load(path)


def test_ledger_file_round_trips(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    ledger.record(Release("r1", 1.5))
    raw = json.loads(ledger.path.read_text())
    assert raw == {
        "v": 1,
        "releases": [{"round_id": "r1", "noise_multiplier": 1.5, "sampling_rate": 1.0}],
    }
    assert PrivacyLedger.load(ledger.path).releases == [Release("r1", 1.5, 1.0)]
