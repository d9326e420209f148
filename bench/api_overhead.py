"""What the inference API costs: tokens/s and time to first token through the HTTP API
(official `openai` client, streaming) against llama-cpp-python called in-process, on the same
model, prompts and settings, in the same run.

The API runs as its own process (`python -m appliance.serve`), as on a box; the direct side
is a `llama_cpp.Llama` with the same threads, context and batch in this process. Both
generate greedily from an empty KV cache (the API always does), so both produce the same
tokens: the script checks the texts are equal before it counts a pair. Repeats are
interleaved (direct/API, then API/direct) so a noisy neighbour hits both sides alike.

    .venv/bin/python -m bench.api_overhead --repeats 5 --max-tokens 64 --threads 2

TTFT: call -> first streamed text. Decode: (tokens - 1) / (last piece - first piece).
End-to-end: tokens / (call -> last piece).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import openai

from appliance.identity import generate_key_pair
from appliance.llm.builtin import resolve_model_path

PROMPTS = {
    "short (~10 tok)": "The maintenance report for pump 4 says",
    "medium (~120 tok)": (
        "Shift log, line 2. 06:10 conveyor belt B started with a slight squeal at the drive "
        "roller. 06:45 vibration on motor M2 rose from 2.1 to 3.4 mm/s; bearing temperature "
        "58 C. 07:30 operator greased the bearing, vibration dropped to 2.6 mm/s. 08:15 "
        "pressure on the hydraulic press fell by 12 bar for two minutes, then recovered. "
        "09:00 quality check found two welds with porosity on part 7731. Summary for the "
        "next shift:"
    ),
    "long (~330 tok)": " ".join(
        f"Step {i}: check the torque of bolt {i} on flange {i % 4}, record the value, and "
        "replace the gasket if it shows cracks."
        for i in range(1, 13)
    )
    + " The step most often skipped in practice is",
}


@dataclass
class Sample:
    ttft_s: float
    decode_tps: float
    e2e_tps: float
    tokens: int
    text: str


def direct(llm: llama_cpp.Llama, prompt: str, max_tokens: int) -> Sample:
    """Stream from llama-cpp-python in-process, from an empty cache."""
    llm.reset()
    start = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    for chunk in llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=0.0, stream=True, seed=0
    ):
        text = chunk["choices"][0]["text"]  # type: ignore[index]
        if text:
            stamps.append(time.perf_counter())
            pieces.append(text)
    return _sample(start, stamps, "".join(pieces), tokens=None)


def through_api(api: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> Sample:
    """Stream through the HTTP API with the official client."""
    start = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    tokens = None
    for chunk in api.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
            pieces.append(chunk.choices[0].text)
    return _sample(start, stamps, "".join(pieces), tokens)


def _sample(start: float, stamps: list[float], text: str, tokens: int | None) -> Sample:
    count = tokens if tokens is not None else len(stamps)
    if not stamps:
        raise SystemExit(f"no text generated (text {text!r}); choose another prompt")
    decode = stamps[-1] - stamps[0]
    return Sample(
        ttft_s=stamps[0] - start,
        decode_tps=(count - 1) / decode if decode > 0 else float("nan"),
        e2e_tps=count / (stamps[-1] - start),
        tokens=count,
        text=text,
    )


def start_server(folder: Path, model: str, threads: int, context: int) -> tuple:
    key, _public = generate_key_pair(folder / "keys", "bench")
    (folder / "trust").mkdir(exist_ok=True)
    config = folder / "edge.toml"
    config.write_text(
        'role = "edge"\n[identity]\nplant_id = "bench"\nnode_id = "bench"\n'
        f'private_key_file = "{key}"\ntrust_dir = "{folder / "trust"}"\n'
        f'[model]\npath = "{model}"\ncontext_tokens = {context}\nthreads = {threads}\n'
        f'[paths]\nstate_dir = "{folder / "state"}"\n'
        "[serve]\nenabled = true\nport = 0\nrate_limit_per_minute = 0\n"
    )
    log = folder / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.serve", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    while not (found := re.search(r"inference API on (\S+/v1) \(model (\S+)\)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the API did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process, found.group(1), found.group(2).rstrip(")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", nargs="*", choices=list(PROMPTS), help="default: all")
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    model_path = str(resolve_model_path(args.model))
    with tempfile.TemporaryDirectory(prefix="api-bench-") as work:
        process, url, model_id = start_server(Path(work), args.model, args.threads, args.context)
        try:
            api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            llm = llama_cpp.Llama(
                model_path=model_path,
                n_ctx=args.context,
                n_batch=min(args.context, 512),
                n_threads=args.threads,
                n_threads_batch=args.threads,
                verbose=False,
            )
            through_api(api, model_id, "warm up", 4)
            direct(llm, "warm up", 4)
            chosen = {p: PROMPTS[p] for p in args.prompts or PROMPTS}
            rows = run(
                llm, api, model_id, chosen, repeats=args.repeats, max_tokens=args.max_tokens
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
    print_table(rows, args)


def run(
    llm: llama_cpp.Llama,
    api: openai.OpenAI,
    model_id: str,
    prompts: dict[str, str],
    *,
    repeats: int,
    max_tokens: int,
) -> dict[str, dict[str, list[Sample]]]:
    rows: dict[str, dict[str, list[Sample]]] = {p: {"direct": [], "api": []} for p in prompts}
    for repeat in range(repeats):
        for name, prompt in prompts.items():
            sides = ["direct", "api"] if repeat % 2 == 0 else ["api", "direct"]
            got = {}
            for side in sides:
                got[side] = (
                    direct(llm, prompt, max_tokens)
                    if side == "direct"
                    else through_api(api, model_id, prompt, max_tokens)
                )
            if got["direct"].text != got["api"].text:
                raise SystemExit(f"{name}: the API and llama-cpp-python generated different text")
            got["direct"].tokens = got["api"].tokens  # same text, same tokens
            for side in sides:
                rows[name][side].append(got[side])
                sample = got[side]
                print(  # progress, so a run cut short still leaves its samples
                    f"repeat {repeat + 1} {name} {side}: TTFT {sample.ttft_s * 1000:.1f} ms, "
                    f"decode {sample.decode_tps:.1f} tok/s, end-to-end {sample.e2e_tps:.1f} "
                    f"tok/s, {sample.tokens} tokens",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def print_table(rows: dict[str, dict[str, list[Sample]]], args: argparse.Namespace) -> None:
    print(
        f"model {args.model}, {args.threads} threads, context {args.context}, "
        f"{args.max_tokens} new tokens greedy, medians of {args.repeats} interleaved repeats\n"
    )
    print("| prompt | side | TTFT ms | decode tok/s | end-to-end tok/s |")
    print("|---|---|---|---|---|")
    for name, sides in rows.items():
        medians = {}
        for side in ("direct", "api"):
            samples = sides[side]
            medians[side] = (
                statistics.median(s.ttft_s for s in samples) * 1000,
                statistics.median(s.decode_tps for s in samples),
                statistics.median(s.e2e_tps for s in samples),
            )
            ttft, decode, e2e = medians[side]
            label = "llama-cpp-python in-process" if side == "direct" else "HTTP API (openai)"
            print(f"| {name} | {label} | {ttft:.1f} | {decode:.1f} | {e2e:.1f} |")
        d, a = medians["direct"], medians["api"]
        print(
            f"| {name} | API overhead | {100 * (a[0] / d[0] - 1):+.1f}% | "
            f"{100 * (1 - a[1] / d[1]):+.1f}% | {100 * (1 - a[2] / d[2]):+.1f}% |"
        )


if __name__ == "__main__":
    main()
