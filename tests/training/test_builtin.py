"""One short real run on the built-in SmolLM2-135M (Q4_1) through the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.plant_corpus import FACTS, write_plant_corpus


def appliance(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_train_on_builtin_lowers_heldout_nll_and_generate_uses_the_adapter(tmp_path: Path) -> None:
    data = write_plant_corpus(tmp_path / "plant.jsonl")
    out = tmp_path / "plant-adapter.gguf"
    result = appliance(
        "train",
        "--model",
        "builtin",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--lr",
        "5e-3",
        "--seed",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    for key in (
        "nll_before",
        "nll_after",
        "tokens",
        "tokens_per_s",
        "peak_rss_mb",
        "seconds",
        "adapter",
        "adapter_bytes",
    ):
        assert key in result
    assert result["nll_after"] < result["nll_before"]
    assert result["bad_lines"] == [
        'line 6: expected the keys {"text"} or {"prompt", "completion"}, got {"prompt"}'
    ]
    assert result["nll_gap"] is None  # trained on the served file itself: no copy, no gap
    # base_precision "same": the served file itself is trained on, nothing copied to the cache
    assert not Path(str(result["train_model"])).is_relative_to(tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.gguf")) == []
    assert result["adapter_bytes"] == out.stat().st_size
    prompt = FACTS[0][0]
    base = appliance(
        "generate", "--model", "builtin", "--max-tokens", "12", "--temperature", "0", prompt
    )
    tuned = appliance(
        "generate",
        "--model",
        "builtin",
        "--adapter",
        str(out),
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        prompt,
    )
    assert tuned["adapter"] == str(out)
    assert tuned["text"] != base["text"]
    evaluated = appliance("eval", "--model", "builtin", "--adapter", str(out), "--data", str(data))
    assert evaluated["nll"] < appliance("eval", "--model", "builtin", "--data", str(data))["nll"]
