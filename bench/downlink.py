"""What the delta downlink saves and what it costs, measured on a finished demo run.

For every aggregated round of a demo directory (`appliance demo --dir DIR`), this re-runs the
round's aggregation from the updates the round store kept (the configured strategy, exact
fp32 arithmetic), so it has the global adapter a whole-file downlink would have sent, and
compares it with the global the aggregator defined and sent as a delta (base + int8 step):
bytes per box, and the held-out NLL of both on the served model, over every box's records
and the plant evaluation set.

    .venv/bin/python -m bench.downlink DIR

One trajectory: each round starts from the delta-defined global, as the fleet did; the
difference shown is what quantizing that round's step changed.
"""

import argparse
import tempfile
from pathlib import Path

from appliance.aggregator.strategy import build_strategy
from appliance.config import AggregatorConfig, load_config
from appliance.data.records import read_records
from appliance.edge.evaluation import nll_of_file
from appliance.federation.codec import decode_update
from appliance.federation.global_adapter import load_global_adapter, save_global_adapter
from appliance.federation.rounds import RoundStore
from appliance.federation.updates import GlobalAdapter
from appliance.llm.runtime import Runtime
from appliance.llm.texts import chat_template, record_text


def exact_global(
    store: RoundStore, round_id: str, base: GlobalAdapter, config: AggregatorConfig
) -> GlobalAdapter:
    """The round's aggregation redone in fp32 from its stored updates."""
    strategy = build_strategy(config.fleet.strategy)
    strategy.begin(base)
    for stored in store.updates(round_id):
        _header, update = decode_update(stored.blob, base, 1 << 30)
        strategy.accept(update)
    return GlobalAdapter(base.version + 1, strategy.finish().factors, base.alpha, base.frozen_a)


def texts(root: Path, template: str | None) -> list[str]:
    """Every box's spool records and the plant evaluation set."""
    files = [*sorted(root.glob("box-*/spool/*.jsonl")), *root.glob("aggregator/plant-set.jsonl")]
    return [record_text(r, template) for f in files for r in read_records(f).records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    config = load_config(args.directory / "aggregator" / "aggregator.toml")
    assert isinstance(config, AggregatorConfig)
    layout = config.layout
    runtime = Runtime.from_settings(config.model)
    corpus = texts(args.directory, chat_template(Path(runtime.info.path)))
    store = RoundStore(layout.rounds_db, read_only=True)
    print(f"{len(corpus)} texts (every box's records and the plant set), {runtime.info.path}")
    print(
        f"{'round':<12} {'v':>3} {'whole file':>11} {'delta':>8} {'x fewer':>8} "
        f"{'NLL whole':>10} {'NLL delta':>10} {'change':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for round_, _closed in store.history():
            version = round_.result_version
            if version is None or not layout.global_delta(version).exists():
                continue
            base = load_global_adapter(layout.global_adapter(round_.global_version))
            exact = save_global_adapter(
                Path(tmp) / f"exact-v{version}.gguf",
                exact_global(store, round_.round_id, base, config),
                runtime.info.architecture,
                runtime.info.sha256,
                round_.round_id,
            )
            sent = layout.global_adapter(version)
            whole, delta = sent.stat().st_size, layout.global_delta(version).stat().st_size
            a = nll_of_file(runtime, corpus, exact)
            b = nll_of_file(runtime, corpus, sent)
            print(
                f"{round_.round_id:<12} {version:>3} {whole:>11,} {delta:>8,} "
                f"{whole / delta:>8.1f} {a:>10.5f} {b:>10.5f} {100 * (b / a - 1):>+7.3f}%"
            )
    store.close()
    runtime.close()


if __name__ == "__main__":
    main()
