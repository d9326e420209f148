"""`appliance train` and `appliance eval` on the tiny model, as an operator runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.llm.adapters import read_adapter


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_train_json_reports_the_contract_fields_and_eval_agrees(
    tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "a.gguf"
    done = cli(
        "train",
        "--model",
        str(tiny_f32),
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--rank",
        "4",
        "--targets",
        "attn_q,attn_v,ffn_up",
        "--epochs",
        "2",
        "--lr",
        "0.02",
        "--seed",
        "5",
        "--freeze-a",
        "--base-precision",
        "same",
        "--cache-dir",
        str(tmp_path / "c"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("nll_before", "nll_after", "tokens", "tokens_per_s", "peak_rss_mb", "seconds"):
        assert isinstance(result[key], float | int) and result[key] > 0
    assert result["adapter"] == str(out) and result["adapter_bytes"] == out.stat().st_size
    assert result["nll_after"] < result["nll_before"]
    assert " step 1/" in done.stderr and "validation loss" in done.stderr
    adapter = read_adapter(out)
    assert adapter.rank == 4 and adapter.metadata["appliance.lora.frozen_a"] is True
    assert adapter.metadata["appliance.lora.targets"] == "attn_q,attn_v,ffn_up"
    assert adapter.metadata["appliance.lora.seed"] == 5
    base = json.loads(cli("eval", "--model", str(tiny_f32), "--data", str(corpus), "--json").stdout)
    tuned = cli(
        "eval", "--model", str(tiny_f32), "--adapter", str(out), "--data", str(corpus), "--json"
    )
    assert tuned.returncode == 0, tuned.stderr
    evaluated = json.loads(tuned.stdout)
    assert evaluated["nll"] < base["nll"] and evaluated["records"] == 24
    assert evaluated["perplexity"] == pytest.approx(2.718281828 ** evaluated["nll"])
    assert len(evaluated["bad_lines"]) == 2
    text = cli("eval", "--model", str(tiny_f32), "--data", str(corpus))
    assert text.returncode == 0 and "mean NLL" in text.stdout and "skipped line 4" in text.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--window", "300"],
            "appliance: error: --window: must be a positive multiple of 256 up to 8192 (got 300)",
        ),
        (
            ["--rank", "3"],
            "appliance: error: --rank: must be a power of two between 1 and 256 (got 3)",
        ),
        (["--lr", "0"], "appliance: error: --lr: Input should be greater than 0"),
        (["--targets", "attn_zz"], "appliance: error: the model has no block weight named attn_zz"),
    ],
)
def test_bad_options_are_one_clear_line(
    options: list[str], message: str, tiny_f32: Path, corpus: Path, tmp_path: Path
) -> None:
    done = cli(
        "train",
        "--model",
        str(tiny_f32),
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "a.gguf"),
        *options,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "a.gguf").exists()


def test_missing_data_file_is_a_clear_error(tiny_f32: Path, tmp_path: Path) -> None:
    done = cli("eval", "--model", str(tiny_f32), "--data", str(tmp_path / "none.jsonl"))
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"appliance: error: {tmp_path / 'none.jsonl'}: file does not exist"
    )
