"""Secure aggregation: bytes per box and seconds per step, for the built-in model's adapter.

The layout is the real one (SmolLM2-135M, LoRA rank 8 on attn_q and attn_v: every B of the
initial global adapter). Each box's B change is Gaussian (std 0.003, about one round of
training). For n boxes and d dropouts it times, with real keys and messages (no broker):

- box: n-1 X25519 agreements + HKDF (accepting the key set), and masking (n-1 ChaCha20 masks);
- aggregator: summing the reporting vectors, removing (n-d) x d orphaned masks, decoding.

Bytes compare the masked update with the same change through the default update codec
(dense blockwise int8 + zstd), which cannot be used under masking.

    .venv/bin/python -m bench.secagg --boxes 3 --boxes 10 --boxes 30
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.config.lora import LoraSpec
from appliance.federation.codec import CodecSpec, RoundContext, encode_update
from appliance.federation.global_adapter import initial_global_adapter
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import open_gguf, tensor_shapes
from appliance.privacy.secagg import Collector, FixedPoint, Participant, layout_of

AGG, ROUND = "agg", "r1-bench"
FIXED = FixedPoint(value_bound=0.05, max_weight=1024)


def builtin_base(rank: int) -> GlobalAdapter:
    shapes = tensor_shapes(open_gguf(Path(resolve_model_path("builtin")), ValueError))
    lora = LoraSpec(
        rank=rank,
        alpha=2.0 * rank,
        targets=["attn_q", "attn_v"],
        top_layers=0,
        seed=1,
        freeze_a=True,
    )
    return initial_global_adapter(shapes, lora)


def one_round(base: GlobalAdapter, n: int, d: int, work: Path) -> dict[str, float]:
    trust_dir = work / f"trust-{n}-{d}"
    keys = []
    for i in range(n):
        private, public = generate_key_pair(work / f"keys-{n}-{d}", f"box{i:03d}")
        trust_dir.mkdir(exist_ok=True)
        (trust_dir / public.name).write_bytes(public.read_bytes())
        keys.append(NodeKey.load(f"box{i:03d}", private))
    trust = TrustStore(trust_dir)
    layout = layout_of(base)
    names = tuple(k.node_id for k in keys)
    collector = Collector(ROUND, names, layout, FIXED, trust)
    boxes = [Participant(k, trust, AGG, ROUND) for k in keys]
    for box in boxes:
        collector.add_key(box.key_message(), box.node_id)
    keyset = collector.close_keys()
    rng = np.random.default_rng(n * 100 + d)
    started = time.perf_counter()
    boxes[0].accept_key_set(keyset, AGG)
    agree = time.perf_counter() - started
    for box in boxes[1:]:
        box.accept_key_set(keyset, AGG)
    change = {
        name: Delta(None, rng.normal(scale=0.003, size=b.shape).astype(np.float32))
        for name, (_, b) in base.factors.items()
    }
    encoded = FIXED.encode(change, layout, 500)
    started = time.perf_counter()
    blob = boxes[0].mask(encoded, layout)
    mask = time.perf_counter() - started
    collector.add_masked(blob, boxes[0].node_id)
    for box in boxes[1 : n - d]:
        collector.add_masked(box.mask(encoded, layout), box.node_id)
    commit = collector.commit()
    for box in boxes[: n - d]:
        if commit.dropped:
            collector.add_reveal(box.reveal(commit, AGG), box.node_id)
    started = time.perf_counter()
    result = collector.unmask()
    unmask = time.perf_counter() - started
    assert result.total_weight == (n - d) * 500
    context = RoundContext("box000", ROUND, "0" * 64, 0)
    plain = encode_update(change, 500, CodecSpec(), context).blob
    return {
        "agree": agree,
        "mask": mask,
        "unmask": unmask,
        "masked_bytes": len(blob),
        "int8_bytes": len(plain),
        "coords": encoded.values.size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, action="append", help="fleet sizes (repeatable)")
    parser.add_argument("--dropouts", type=int, default=1, help="boxes that drop out")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median)")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    base = builtin_base(args.rank)
    print(
        "| boxes | dropped | coordinates | masked bytes | int8+zstd bytes | box: agree s "
        "| box: mask s | aggregator: unmask s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.boxes or [3, 10, 30]:
            runs = [
                one_round(base, n, args.dropouts, Path(tmp) / f"{n}-{i}") for i in range(args.runs)
            ]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"| {n} | {args.dropouts} | {int(med['coords']):,} | {int(med['masked_bytes']):,} "
                f"| {int(med['int8_bytes']):,} | {med['agree']:.4f} | {med['mask']:.4f} "
                f"| {med['unmask']:.4f} |"
            )


if __name__ == "__main__":
    main()
