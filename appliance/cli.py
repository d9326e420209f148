"""`appliance ...`: the command line (a contract: names follow DESIGN.md).

Each command is a small function that parses nothing itself: argparse hands it a namespace,
it calls library code, prints, and returns an exit code. `ApplianceError`s become one line on
stderr and their exit code, never a traceback.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.system.logs import setup_logging

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `appliance` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("debug" if args.verbose else "warning", "debug" if args.verbose else "error")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Fine-tune an open GGUF model on plant data at the edge; federate over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_config_commands(commands)
    _add_model_commands(commands)
    _add_generate_command(commands)
    _add_audit_command(commands)
    _add_daemon_commands(commands)
    _add_demo_command(commands)
    _add_keygen_command(commands)
    _add_train_command(commands)
    _add_eval_command(commands)
    _add_fleet_command(commands)
    _add_report_command(commands)
    return parser


def _add_config_commands(commands: Any) -> None:
    config = commands.add_parser("config", help="check configuration files")
    sub = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = sub.add_parser("check", help="validate an edge or aggregator config file")
    check.add_argument("file", type=Path, help="TOML file to check")
    check.add_argument("--json", action="store_true", help="print the effective config as JSON")
    check.set_defaults(handler=_config_check)


def _add_model_commands(commands: Any) -> None:
    from appliance.llm.tiny import ALL_TINY_QUANTS, ARCHITECTURES

    model = commands.add_parser("model", help="make and inspect GGUF models")
    sub = model.add_subparsers(title="model commands", metavar="COMMAND")
    tiny = sub.add_parser("make-tiny", help="write a tiny random GGUF model (for tests)")
    tiny.add_argument("out", type=Path, help="output .gguf file")
    tiny.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        default="llama",
        help="architecture: " + "; ".join(f"{a.name}: {a.special}" for a in ARCHITECTURES.values()),
    )
    tiny.add_argument(
        "--quant",
        choices=ALL_TINY_QUANTS,
        default="f32",
        help="block weight type (q4_k: Q4_K_M made by llama.cpp's quantizer)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(handler=_model_make_tiny)
    info = sub.add_parser("info", help="architecture, sizes, quantisation, licence, sha256")
    info.add_argument("model", help="GGUF path or `builtin`")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_model_info)


def _add_generate_command(commands: Any) -> None:
    gen = commands.add_parser("generate", help="complete a prompt with the model")
    gen.add_argument("prompt", help="text to complete")
    gen.add_argument("--model", required=True, help="GGUF path or `builtin`")
    gen.add_argument("--adapter", type=Path, help="LoRA adapter GGUF to apply")
    gen.add_argument("--max-tokens", type=int, default=64, help="tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--seed", type=int, help="seed for reproducible sampling")
    gen.add_argument("--context-tokens", type=int, default=2048, help="context window")
    gen.add_argument(
        "--allow-unlisted-license",
        action="store_true",
        help="load a model whose licence is missing or not an allowed open licence",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.set_defaults(handler=_generate)


def _add_keygen_command(commands: Any) -> None:
    keygen = commands.add_parser("keygen", help="create this node's Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, required=True, help="directory for the key files")
    keygen.add_argument(
        "--id",
        dest="node_id",
        default="node",
        help="node id: names the files <id>.key (mode 0600) and <id>.pub (default: node)",
    )
    keygen.set_defaults(handler=_keygen)


def _add_audit_command(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check the aggregator's audit log")
    sub = audit.add_subparsers(title="audit commands", metavar="COMMAND")
    verify = sub.add_parser("verify", help="verify the signatures and hash chain of an audit log")
    verify.add_argument("file", type=Path, help="audit log (JSON Lines)")
    anchor = verify.add_mutually_exclusive_group()
    anchor.add_argument("--key", type=Path, help="the aggregator's public key (.pub)")
    anchor.add_argument(
        "--config", type=Path, help="an edge or aggregator config naming the aggregator's key"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=_audit_verify)


def _add_demo_command(commands: Any) -> None:
    demo = commands.add_parser("demo", help="aggregator and boxes on this machine, real rounds")
    demo.add_argument("--boxes", type=int, default=3, help="number of edge boxes")
    demo.add_argument("--rounds", type=int, default=3, help="federated rounds to run")
    demo.add_argument("--model", default="builtin", help="`builtin`, `tiny` or a GGUF path")
    demo.add_argument("--dir", type=Path, help="keep everything here (default: a temp dir)")
    demo.add_argument("--timeout", type=float, default=1800, help="give up after seconds")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from appliance.demo.run import run_demo

    if args.boxes < 1 or args.rounds < 1:
        print("appliance: error: --boxes and --rounds must be at least 1", file=sys.stderr)
        return 2
    summary = run_demo(
        args.boxes,
        args.rounds,
        model=args.model,
        directory=args.dir,
        timeout_s=args.timeout,
        quiet=args.json,
    )
    if args.json:
        _print_json(summary)
    return 0


def _add_daemon_commands(commands: Any) -> None:
    for role in ("edge", "aggregator"):
        parser = commands.add_parser(role, help=f"the {role} daemon")
        sub = parser.add_subparsers(title=f"{role} commands", metavar="COMMAND")
        run = sub.add_parser("run", help=f"run the {role} daemon in the foreground")
        run.add_argument("--config", type=Path, required=True, help="config file (TOML)")
        run.set_defaults(handler=_edge_run if role == "edge" else _aggregator_run)


def _edge_run(args: argparse.Namespace) -> int:
    from appliance.edge.daemon import run

    return run(args.config)


def _aggregator_run(args: argparse.Namespace) -> int:
    from appliance.aggregator.daemon import run

    return run(args.config)


def _audit_verify(args: argparse.Namespace) -> int:
    from appliance.federation.audit import check
    from appliance.federation.audit_anchor import anchor_key

    key = anchor_key(args.key, args.config)
    result = check(args.file, key)
    head = result.head
    if args.json:
        _print_json(
            {
                "ok": True,
                "lines": head.seq,
                "head": head.hash,
                "signed": result.signed,
                "unsigned": result.unsigned,
                "signatures_checked": result.key_checked,
            }
        )
    elif result.key_checked:
        legacy = f" ({result.unsigned} older unsigned lines before them)" if result.unsigned else ""
        print(
            f"{args.file}: {head.seq} lines, chain intact, {result.signed} signatures valid"
            f"{legacy}, head {head.hash}"
        )
    else:
        print(
            f"{args.file}: {head.seq} lines, chain intact, head {head.hash}; signatures NOT "
            "checked (give --key or --config)"
        )
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from appliance.config import load_config

    config = load_config(args.file)
    if args.json:
        _print_json(config.model_dump(mode="json"))
    else:
        print(f"{args.file}: valid {config.role} configuration")
    return 0


def _model_make_tiny(args: argparse.Namespace) -> int:
    from appliance.llm.tiny import make_tiny_model

    path = make_tiny_model(args.out, args.quant, seed=args.seed, arch=args.arch)
    print(f"wrote {path} ({path.stat().st_size} bytes, {args.arch}, {args.quant})")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from appliance.errors import ModelError
    from appliance.llm.builtin import resolve_model_path
    from appliance.llm.gguf_file import read_model_info

    info = read_model_info(resolve_model_path(args.model), ModelError)
    if args.json:
        _print_json(asdict(info))
        return 0
    types = ", ".join(f"{name} x{count}" for name, count in sorted(info.tensor_types.items()))
    rows = [
        ("file", info.path),
        ("name", info.name or "-"),
        ("architecture", info.architecture),
        ("layers", info.layers),
        ("embedding", info.embedding_length),
        ("feed-forward", info.feed_forward_length),
        ("heads (kv)", f"{info.head_count} ({info.head_count_kv})"),
        ("context (trained)", info.context_length),
        ("vocabulary", info.vocab_size),
        ("quantisation", f"{info.file_type} ({types})"),
        ("parameters", f"{info.parameters:,}"),
        ("licence", info.license or "none declared"),
        ("size", f"{info.size_bytes:,} bytes"),
        ("sha256", info.sha256),
    ]
    for key, value in rows:
        print(f"{key:<18} {value}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from appliance.llm.licenses import LicensePolicy
    from appliance.llm.runtime import Runtime

    policy = LicensePolicy(allow_unlisted=args.allow_unlisted_license)
    with Runtime(args.model, context_tokens=args.context_tokens, policy=policy) as runtime:
        if args.adapter:
            runtime.set_adapters([(runtime.load_adapter(args.adapter), 1.0)])
        result = runtime.generate(
            args.prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            stop=args.stop,
            seed=args.seed,
        )
    if args.json:
        _print_json(
            {
                "text": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "model_sha256": runtime.info.sha256,
                "adapter": str(args.adapter) if args.adapter else None,
            }
        )
    else:
        print(result.text)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from appliance.identity import generate_key_pair

    private, public = generate_key_pair(args.out, args.node_id)
    print(f"wrote {private} (private, mode 0600) and {public} (copy it to peers' trust dirs)")
    return 0


def _add_train_command(commands: Any) -> None:
    train = commands.add_parser("train", help="fine-tune a LoRA adapter on JSON Lines data")
    train.add_argument("--model", required=True, help="GGUF path or `builtin`")
    train.add_argument("--data", required=True, type=Path, help="JSON Lines training data")
    train.add_argument("--out", required=True, type=Path, help="adapter GGUF to write")
    train.add_argument("--rank", type=int, help="LoRA rank (power of two)")
    train.add_argument("--alpha", type=float, help="LoRA alpha")
    train.add_argument("--targets", help="comma-separated block weights, e.g. attn_q,attn_v")
    train.add_argument("--top-layers", type=int, help="adapt only the top N blocks (0 = all)")
    train.add_argument("--epochs", type=int, help="passes over the data")
    train.add_argument("--max-steps", type=int, help="stop after this many steps")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--lr-decay", choices=["none", "linear"], help="learning-rate schedule")
    train.add_argument("--optimizer", choices=["adamw", "sgd"], help="optimizer")
    train.add_argument("--window", type=int, help="tokens per window (multiple of 256)")
    train.add_argument("--stride", type=int, help="tokens between window starts")
    train.add_argument("--validation-fraction", type=float, help="share of records held out")
    train.add_argument("--freeze-a", action="store_true", help="derive A from the seed; train B")
    train.add_argument("--seed", type=int, help="seed for A, the split and the order")
    train.add_argument("--from", dest="start_adapter", type=Path, help="adapter to start from")
    train.add_argument(
        "--base-precision", choices=["same", "q8_0", "f32"], help="training copy precision"
    )
    train.add_argument("--cache-dir", type=Path, help="where training copies are kept")
    train.add_argument("--threads", type=int, help="training threads (0 = all cores)")
    train.add_argument("--memory-limit-mb", type=int, help="refuse runs estimated above this")
    train.add_argument(
        "--allow-unlisted-license", action="store_true", help="train on any model licence"
    )
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(handler=_train)


def _add_eval_command(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="mean NLL and perplexity on JSON Lines data")
    evaluate.add_argument("--model", required=True, help="GGUF path or `builtin`")
    evaluate.add_argument("--adapter", type=Path, help="LoRA adapter GGUF to apply")
    evaluate.add_argument("--data", required=True, type=Path, help="JSON Lines held-out data")
    evaluate.add_argument(
        "--allow-unlisted-license", action="store_true", help="load any model licence"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_eval)


def _train(args: argparse.Namespace) -> int:
    from appliance.llm.training.commands import describe, run_train

    result = run_train(args)
    if args.json:
        _print_json(result)
    else:
        print(describe(result))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from appliance.llm.training.commands import run_eval

    result = run_eval(args)
    if args.json:
        _print_json(result)
    else:
        print(
            f"{result['records']} records, {result['tokens']} tokens: mean NLL "
            f"{result['nll']:.4f} nats/token, perplexity {result['perplexity']:.2f}"
        )
        for bad in result["bad_lines"]:
            print(f"skipped {bad}", file=sys.stderr)
    return 0


def _add_fleet_command(commands: Any) -> None:
    fleet = commands.add_parser("fleet", help="hardware health of the plant's boxes")
    sub = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")
    status = sub.add_parser("status", help="health and training state of every box")
    status.add_argument("--config", type=Path, required=True, help="the aggregator's config")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_fleet_status)
    rollback = sub.add_parser(
        "rollback", help="roll the fleet (or one box) back to the previous global adapter"
    )
    rollback.add_argument("--config", type=Path, required=True, help="the aggregator's config")
    rollback.add_argument("--box", help="only this box (default: the whole fleet)")
    rollback.set_defaults(handler=_fleet_request, action="rollback", version=None)
    pin = sub.add_parser("pin", help="keep a box on one global adapter version")
    pin.add_argument("--config", type=Path, required=True, help="the aggregator's config")
    pin.add_argument("--box", required=True, help="the box to pin")
    pin.add_argument("--version", type=int, required=True, help="global adapter version")
    pin.set_defaults(handler=_fleet_request, action="pin")
    unpin = sub.add_parser("unpin", help="let a pinned box follow the fleet again")
    unpin.add_argument("--config", type=Path, required=True, help="the aggregator's config")
    unpin.add_argument("--box", required=True, help="the box to unpin")
    unpin.set_defaults(handler=_fleet_request, action="unpin", version=None)


def _fleet_request(args: argparse.Namespace) -> int:
    from appliance.rollout.operator import queue_request

    command = queue_request(_aggregator_config(args.config), args.action, args.box, args.version)
    target = args.box or "the whole fleet"
    print(f"queued #{command.id}: {args.action} for {target}; the aggregator sends it next step")
    return 0


def _aggregator_config(path: Path) -> Any:
    from appliance.config.loading import load_config
    from appliance.config.roles import AggregatorConfig
    from appliance.errors import ConfigError

    config = load_config(path)
    if not isinstance(config, AggregatorConfig):
        raise ConfigError(f"{path}: role: this command reads the aggregator's config")
    return config


def _add_report_command(commands: Any) -> None:
    report = commands.add_parser("report", help="ROI report: HTML charts, CSV, text summary")
    report.add_argument("--config", type=Path, required=True, help="the aggregator's config")
    report.add_argument("--out", type=Path, default=Path("appliance-report"), help="directory")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from appliance.report.build import build_report

    result = build_report(_aggregator_config(args.config), args.out)
    if args.json:
        _print_json(result.summary)
    else:
        print(result.text)
    return 0


def _fleet_status(args: argparse.Namespace) -> int:
    from appliance.config.loading import load_config
    from appliance.config.roles import AggregatorConfig
    from appliance.errors import ConfigError
    from appliance.telemetry.edge_node import now_ms
    from appliance.telemetry.fleet import fleet_report, render_report, store_path
    from appliance.telemetry.freshness import box_stale_after_s
    from appliance.telemetry.store import FleetStore

    config = load_config(args.config)
    if not isinstance(config, AggregatorConfig):
        raise ConfigError(f"{args.config}: role: fleet status reads the aggregator's config")
    path = store_path(config)
    if not path.exists():
        raise ApplianceError(f"no fleet health store at {path}; has the aggregator run yet?")
    store = FleetStore(path, read_only=True)
    try:
        report = fleet_report(store, now_ms(), box_stale_after_s(), config.fleet.participants)
    finally:
        store.close()
    from appliance.rollout.operator import store_path as rollout_path
    from appliance.rollout.status import render_rollout, rollout_status
    from appliance.telemetry.scores import latest_scores, render_scores

    rollout = rollout_status(rollout_path(config))
    scores = latest_scores(config.layout.audit_log)  # own data and plant set, per box
    if args.json:
        _print_json(
            {**report.as_json(), "rollout": rollout, "scores": [s.as_json() for s in scores]}
        )
    else:
        print(render_report(report))
        if lines := render_rollout(rollout):
            print(lines)
        if table := render_scores(scores):
            print(table)
    return 0


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
