"""Secure aggregation (SecAgg+, plan version 2): bytes and seconds per box and at the
aggregator, for the built-in model's adapter.

The layout is the real one (SmolLM2-135M, LoRA rank 8 on attn_q and attn_v: every B of the
initial global adapter, 184,320 values). Each box's B change is Gaussian (std 0.003, about
one round of training). For n boxes, threshold t (default 0.6 of each box's m share
holders) and m - t of box000's holders dropping after they shared their keys (the most a
round survives: n - t with every box as neighbour, all in one neighbourhood with
`--neighbours`; and the costliest case for the aggregator: it rebuilds every dropped box's
mask key and removes its pairwise masks), it runs one whole round with real keys and
messages in one process (no broker; every message goes through its JSON schema) and reports:

- per box: the bytes it sends (keys, sealed shares, masked update, ack, reveal) and receives
  (key set, its relay, commit, ack set), and its CPU seconds over all its steps;
- at the aggregator: the bytes it receives and sends, and its seconds over all its steps;
- the masked update against the same change through the default update codec (dense
  blockwise int8 + zstd), which masking cannot use.

It checks the result against the plain sum of the reporting boxes' codes, and that one more
dropout fails cleanly (`too_many_dropouts`). `--max-weight 1` gives equal weights, so the
sum of up to 258 boxes fits the 16-bit ring; the default weight cap (1024) needs 32 bits.

    .venv/bin/python -m bench.secagg --boxes 3 --boxes 10 --boxes 30 --boxes 100
"""

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from appliance.config.lora import LoraSpec
from appliance.config.secure_aggregation import SecureAggregationSettings
from appliance.federation.codec import CodecSpec, RoundContext, encode_update
from appliance.federation.global_adapter import initial_global_adapter
from appliance.federation.updates import Delta, GlobalAdapter
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.llm.builtin import resolve_model_path
from appliance.llm.gguf_file import open_gguf, tensor_shapes
from appliance.privacy.secagg import SecAggError, ring
from appliance.privacy.secagg.encoding import FixedPoint, layout_of, layout_size
from appliance.privacy.secagg.plus_box import PlusParticipant
from appliance.privacy.secagg.plus_collector import CollectorState, PlusCollector
from appliance.privacy.secagg.plus_protocol import params_of, plan_for

AGG, ROUND, GLOBAL = "agg", "r1-bench", "ab" * 32
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


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


def wire(message: M) -> tuple[M, int]:
    """The message after a JSON round trip, and its size on the wire (body bytes)."""
    raw = message.model_dump_json().encode()
    return type(message).model_validate_json(raw), len(raw)


class Clock:
    """CPU seconds per party."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, who: str, step: Callable[[], T]) -> T:
        started = time.process_time()
        result = step()
        self.seconds[who] = self.seconds.get(who, 0.0) + time.process_time() - started
        return result


def keys_for(n: int, work: Path) -> tuple[list[NodeKey], TrustStore]:
    trust_dir = work / "trust"
    trust_dir.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(n):
        private, public = generate_key_pair(work / "keys", f"box{i:03d}")
        (trust_dir / public.name).write_bytes(public.read_bytes())
        keys.append(NodeKey.load(f"box{i:03d}", private))
    return keys, TrustStore(trust_dir)


class BenchRound:
    """One round with `dropped` boxes gone after sharing; the bytes and seconds of each step."""

    def __init__(
        self, base: GlobalAdapter, n: int, settings: SecureAggregationSettings, work: Path
    ):
        keys, self.trust = keys_for(n, work)
        self.base, self.layout = base, layout_of(base)
        self.plan = plan_for(settings, n, layout_size(self.layout))
        params = params_of(self.plan)
        self.names = tuple(k.node_id for k in keys)
        state = CollectorState(
            round_id=ROUND,
            participants=self.names,
            params=params,
            value_bound=self.plan.value_bound,
            max_weight=self.plan.max_weight,
            layout=self.layout,
        )
        self.clock = Clock()
        self.sent = dict.fromkeys(self.names, 0)
        self.got = dict.fromkeys(self.names, 0)
        self.agg_in = self.agg_out = 0
        self.collector = PlusCollector(state, self.trust)
        self.boxes = {
            k.node_id: self.clock.run(
                k.node_id,
                lambda k=k: PlusParticipant.fresh(k, self.trust, AGG, ROUND, params=params),
            )
            for k in keys
        }
        self.codes: dict[str, np.ndarray] = {}
        self.masked_bytes = 0
        self.change: dict[str, Delta] = {}

    def up(self, name: str, make: Callable[[], M]) -> M:
        """A box's message to the aggregator: timed, sized, parsed again."""
        message, size = wire(self.clock.run(name, make))
        self.sent[name] += size
        self.agg_in += size
        return message

    def down(self, make: Callable[[], M], to: list[str]) -> M:
        """An aggregator message to boxes `to` (a broadcast is counted once at its sender)."""
        message, size = wire(self.clock.run(AGG, make))
        self.agg_out += size
        for name in to:
            self.got[name] += size
        return message

    def agg(self, step: Callable[[], T]) -> T:
        return self.clock.run(AGG, step)

    def keys_and_shares(self) -> None:
        for name, box in self.boxes.items():
            key = self.up(name, box.key_message)
            self.agg(lambda key=key, name=name: self.collector.add_key(key, name))
        keyset = self.down(self.collector.close_keys, list(self.names))
        for name, box in self.boxes.items():
            bundle = self.up(name, lambda box=box: box.accept_key_set(keyset, AGG))
            self.agg(lambda b=bundle, name=name: self.collector.add_shares(b, name))

    def updates(self, dropped: set[str]) -> None:
        relays = self.agg(self.collector.close_shares)
        fixed = FixedPoint(self.plan.value_bound, self.plan.max_weight)
        rng = np.random.default_rng(len(self.names))
        for name, box in self.boxes.items():
            relay = self.down(lambda name=name: relays[name], [name])
            self.clock.run(name, lambda box=box, relay=relay: box.accept_relay(relay, AGG))
            if name in dropped:
                continue
            self.change = {
                k: Delta(None, rng.normal(scale=0.003, size=b.shape).astype(np.float32))
                for k, (_, b) in self.base.factors.items()
            }
            encoded = fixed.encode(self.change, self.layout, 500)
            self.codes[name] = encoded.values.view(np.int32).astype(np.int64)
            blob = self.clock.run(
                name, lambda box=box, e=encoded: box.mask(e.values, self.layout, e.weight, GLOBAL)
            )
            self.masked_bytes = len(blob)
            self.sent[name] += len(blob)
            self.agg_in += len(blob)
            self.agg(lambda blob=blob, name=name: self.collector.add_masked(blob, name))

    def finish(self) -> None:
        """Commit, acks, reveals, unmask; checks the sum against the plain one."""
        commit = self.down(self.collector.commit, [])
        reporting = list(commit.reporting)
        self.got.update({n: self.got[n] + len(commit.model_dump_json()) for n in reporting})
        for name in reporting:
            ack = self.up(name, lambda b=self.boxes[name]: b.accept_commit(commit, AGG))
            self.agg(lambda ack=ack, name=name: self.collector.add_ack(ack, name))
        acks = self.down(self.collector.close_acks, reporting)
        for name in reporting:
            reveal = self.up(name, lambda b=self.boxes[name]: b.reveal(acks, AGG))
            self.agg(lambda r=reveal, name=name: self.collector.add_reveal(r, name))
        result = self.agg(self.collector.unmask)
        bits = self.plan.ring_bits
        plain = ring.to_signed(ring.reduce(sum(self.codes.values()), bits), bits)
        assert np.array_equal(result.total, plain), "the unmasked sum is not the plain sum"


def one_round(
    base: GlobalAdapter, n: int, settings: SecureAggregationSettings, work: Path, extra: int
) -> dict[str, float]:
    """One round with the most dropouts the threshold allows (+ `extra`); its numbers."""
    r = BenchRound(base, n, settings, work)
    r.keys_and_shares()
    first = r.names[0]
    t, holders = r.collector.threshold_for(first), len(r.collector.holders_of(first))
    # the dropouts all hit one neighbourhood (box000's), the worst case for a graph
    peers = [h for h in r.collector.holders_of(first) if h != first]
    dropped = set(peers[: holders - t + extra])
    r.updates(dropped)
    try:
        r.finish()
    except SecAggError as exc:  # one dropout too many: refused before anything is revealed
        assert extra > 0, exc
        assert exc.reason in {"too_many_dropouts", "too_few_reporting"}, exc
        assert not r.collector.state.seed_shares and not r.collector.state.key_shares
        return {"failed_cleanly": 1.0}
    assert extra == 0, "one dropout too many did not fail"
    context = RoundContext("box000", ROUND, "0" * 64, 0)
    int8 = encode_update(r.change, 500, CodecSpec(), context).blob
    reporting = [n for n in r.names if n not in dropped]
    return {
        "t": t,
        "holders": holders,
        "dropped": len(dropped),
        "bits": r.plan.ring_bits,
        "masked_bytes": r.masked_bytes,
        "int8_bytes": len(int8),
        "box_sent": float(np.median([r.sent[n] for n in reporting])),
        "box_got": float(np.median([r.got[n] for n in reporting])),
        "box_s": float(np.median([r.clock.seconds[n] for n in reporting])),
        "agg_in": r.agg_in,
        "agg_out": r.agg_out,
        "agg_s": r.clock.seconds[AGG],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, action="append", help="fleet sizes (repeatable)")
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--neighbours", type=int, default=0, help="0: every box")
    parser.add_argument("--max-weight", type=int, action="append", help="weight caps")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    base = builtin_base(args.rank)
    print(
        "| boxes | t of holders | dropped | ring bits | masked bytes | int8+zstd bytes | ratio "
        "| box sends | box receives | box CPU s | aggregator receives | aggregator sends "
        "| aggregator CPU s | +1 dropout |"
    )
    print("|---" * 14 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for weight in args.max_weight or [1, 1024]:
            settings = SecureAggregationSettings(
                enabled=True,
                max_weight=weight,
                threshold=args.threshold,
                neighbours=args.neighbours,
            )
            for n in args.boxes or [3, 10, 30, 100]:
                r = one_round(base, n, settings, Path(tmp) / f"{weight}-{n}", 0)
                fail = one_round(base, n, settings, Path(tmp) / f"{weight}-{n}-f", 1)
                print(
                    f"| {n} | {int(r['t'])} of {int(r['holders'])} | {int(r['dropped'])} "
                    f"| {int(r['bits'])} | {int(r['masked_bytes']):,} | {int(r['int8_bytes']):,} "
                    f"| {r['masked_bytes'] / r['int8_bytes']:.2f} | {int(r['box_sent']):,} "
                    f"| {int(r['box_got']):,} | {r['box_s']:.3f} | {int(r['agg_in']):,} "
                    f"| {int(r['agg_out']):,} | {r['agg_s']:.3f} "
                    f"| {'fails cleanly' if fail.get('failed_cleanly') else 'NOT REFUSED'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
