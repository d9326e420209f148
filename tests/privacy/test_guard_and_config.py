"""The box's privacy hook: budget refusals, durable ledger across restarts, no un-noised data
left in the error-feedback residual; the [privacy] config section and the header claim refuse
bad values with a clear error."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.config.privacy import PrivacySettings
from appliance.federation.codec import (
    CodecSpec,
    DecodeError,
    ErrorFeedback,
    RoundContext,
    decode_update,
    encode_update,
)
from appliance.federation.privacy_claim import DpReport
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.privacy.accountant import Release, epsilon
from appliance.privacy.clipping import update_norm
from appliance.privacy.guard import BudgetExceededError, PrivacyGuard


def deltas(seed: int = 0, scale: float = 1.0) -> dict[str, Delta]:
    rng = np.random.default_rng(seed)
    return {f"blk.{i}.attn_q.weight": Delta(None, rng.normal(0, scale, (16, 4)).astype(np.float32))
            for i in range(2)}


def settings(**changes: object) -> PrivacySettings:
    values = {"enabled": True, "clip_norm": 0.5, "noise_multiplier": 1.0,
              "target_delta": 1e-5, "epsilon_budget": 6.0}
    values.update(changes)
    return PrivacySettings.model_validate(values)


def test_dp_off_changes_nothing(tmp_path: Path) -> None:
    guard = PrivacyGuard(PrivacySettings(), tmp_path)
    original = deltas()
    out, report = guard.privatize("r1", original)
    assert out is original and report is None
    assert guard.refusal("r1") is None and guard.epsilon_spent is None
    assert not (tmp_path / "privacy-ledger.json").exists()


def test_budget_allows_one_update_then_refuses_and_survives_a_restart(tmp_path: Path) -> None:
    guard = PrivacyGuard(settings(), tmp_path, np.random.default_rng(1))
    assert guard.epsilon_spent == 0.0
    assert guard.refusal("r1") is None
    out, report = guard.privatize("r1", deltas(scale=5.0))
    one = epsilon([Release("r1", 1.0)], 1e-5)
    assert report is not None and report.epsilon == pytest.approx(one)
    assert guard.epsilon_spent == pytest.approx(one)
    assert guard.refusal("r1") == "an update for this round was already released under DP"
    reason = guard.refusal("r2")
    assert reason is not None and reason.startswith("privacy budget: one more update would")
    with pytest.raises(BudgetExceededError, match="update not sent"):
        guard.privatize("r2", deltas())
    again = PrivacyGuard(settings(), tmp_path)  # a restarted box remembers what it spent
    assert again.epsilon_spent == pytest.approx(one)
    assert again.refusal("r2") is not None
    assert PrivacyGuard(settings(epsilon_budget=8.0), tmp_path).refusal("r2") is None
    assert set(out) == set(deltas())


def test_a_damaged_ledger_refuses_every_dp_round(tmp_path: Path) -> None:
    (tmp_path / "privacy-ledger.json").write_text('{"v": 1, "releases": [')
    guard = PrivacyGuard(settings(), tmp_path)
    reason = guard.refusal("r1")
    assert reason is not None and "damaged privacy ledger" in reason
    with pytest.raises(BudgetExceededError):
        guard.privatize("r1", deltas())


def test_error_feedback_residual_holds_only_released_data(tmp_path: Path) -> None:
    """The residual is (noised update - what the codec sent): a function of the release."""
    guard = PrivacyGuard(settings(epsilon_budget=50.0), tmp_path, np.random.default_rng(2))
    raw = deltas(seed=3, scale=3.0)
    noised, report = guard.privatize("r1", raw)
    feedback = ErrorFeedback()
    corrected = feedback.corrected(noised)
    context = RoundContext("box-1", "r1", "a" * 64, 0)
    spec = CodecSpec(top_k_fraction=0.25)
    encoded = encode_update(corrected, 5, spec, context, report)
    feedback.remember(corrected, encoded.sent)
    for name, delta in feedback.residual.items():
        np.testing.assert_allclose(delta.b, noised[name].b - encoded.sent[name].b, atol=1e-6)
    # and the raw update cannot be read back: it differs from noised by the noise, not zero
    assert update_norm(raw) > 0.5
    assert all(not np.allclose(noised[n].b, raw[n].b) for n in raw)


def base() -> GlobalAdapter:
    return GlobalAdapter(
        1, {n: (np.zeros((4, 8), np.float32), np.zeros((16, 4), np.float32)) for n in deltas()},
        8.0, frozen_a=True,
    )


def test_the_header_claim_reaches_the_aggregator_and_bad_claims_are_refused() -> None:
    report = DpReport(clip_norm=0.5, noise_multiplier=1.0, delta=1e-5, epsilon=4.7, releases=1)
    context = RoundContext("box-1", "r1", "a" * 64, 1)
    blob = encode_update(deltas(), 5, CodecSpec(), context, report).blob
    header, update = decode_update(blob, base(), 1 << 20)
    assert header.privacy == report and update.meta["dp_epsilon"] == 4.7
    plain = encode_update(deltas(), 5, CodecSpec(), context).blob
    assert b"privacy" not in plain  # DP off: the header is the one from before the field
    prefix_len = 10
    header_len = int.from_bytes(blob[6:10], "little")
    raw = json.loads(blob[prefix_len : prefix_len + header_len])
    for bad in ({"epsilon": float("nan")}, {"epsilon": -1}, {"clip_norm": 0},
                {"releases": 0}, {"mechanism": "laplace"}, {"epsilon": "4.7"}, {"extra": 1}):
        forged = dict(raw, privacy={**raw["privacy"], **bad})
        text = json.dumps(forged).encode()
        tampered = blob[:6] + len(text).to_bytes(4, "little") + text + blob[prefix_len + header_len:]
        with pytest.raises(DecodeError, match="invalid header: privacy|not JSON"):
            decode_update(tampered, base(), 1 << 20)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("clip_norm = 0.0", "privacy.clip_norm"),
        ("clip_norm = nan", "privacy.clip_norm"),
        ("noise_multiplier = -1.0", "privacy.noise_multiplier"),
        ("noise_multiplier = inf", "privacy.noise_multiplier"),
        ("target_delta = 0.5", "privacy.target_delta"),
        ("epsilon_budget = 0.0", "privacy.epsilon_budget"),
        ("epsilon_budget = 500.0", "privacy: an epsilon_budget above 100 promises nothing"),
        ('enabled = "yes"', "privacy.enabled"),
        ("clip_norm = [1.0]", "privacy.clip_norm"),
        ("noise = 1.0", "privacy.noise"),
    ],
)
def test_bad_privacy_config_is_a_clear_error(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        'role = "edge"\n[identity]\nplant_id = "p"\nnode_id = "box-1"\n'
        f'private_key_file = "{tmp_path / "k"}"\ntrust_dir = "{tmp_path}"\n'
        + ("[privacy]\n" if line.startswith("enabled") else "[privacy]\nenabled = true\n")
        + f"{line}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "config", "check", str(config)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr


def test_privacy_is_off_by_default() -> None:
    default = PrivacySettings()
    assert not default.enabled and math.isfinite(default.epsilon_budget)
