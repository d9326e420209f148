"""`appliance train` and `appliance eval`: options to settings, progress on stderr, results.

cli.py defines the arguments and imports this module only when one of these commands runs,
so `appliance config check` never loads llama.cpp.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.config.training import TrainingSettings
from appliance.data.records import read_records
from appliance.errors import ConfigError
from appliance.llm.builtin import resolve_model_path
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Runtime
from appliance.llm.texts import chat_template, record_text
from appliance.llm.training.supervisor import TrainingRequest, train

EVAL_CONTEXT_TOKENS = 512
_OPTION_FIELDS = {
    "rank": "rank",
    "alpha": "alpha",
    "targets": "targets",
    "top_layers": "top_layers",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "lr": "learning_rate",
    "lr_decay": "lr_decay",
    "optimizer": "optimizer",
    "window": "window_tokens",
    "stride": "stride_tokens",
    "seed": "seed",
    "base_precision": "base_precision",
    "threads": "threads",
    "memory_limit_mb": "memory_limit_mb",
    "validation_fraction": "validation_fraction",
}


def default_cache_dir() -> Path:
    """Where the CLI keeps training copies of base models (the daemon uses its state dir)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "appliance" / "training-copies"


def settings_from_args(args: argparse.Namespace) -> TrainingSettings:
    """TrainingSettings defaults, overridden by the options given on the command line."""
    values: dict[str, Any] = {"freeze_a": bool(args.freeze_a), "nice": 0}
    for option, field in _OPTION_FIELDS.items():
        value = getattr(args, option)
        if value is not None:
            values[field] = value.split(",") if option == "targets" else value
    try:
        return TrainingSettings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        option = {f: o for o, f in _OPTION_FIELDS.items()}.get(field, field)
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--{option.replace('_', '-')}: {message}") from None


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the options say; progress on stderr; the result as a JSON-ready dict."""
    request = TrainingRequest(
        model=args.model,
        data=args.data,
        out=args.out,
        settings=settings_from_args(args),
        cache_dir=args.cache_dir or default_cache_dir(),
        start_adapter=args.start_adapter,
        policy=LicensePolicy(allow_unlisted=args.allow_unlisted_license),
    )
    result = train(request, _Progress(sys.stderr).show)
    return result.to_dict()


def describe(result: dict[str, Any]) -> str:
    """The human summary of a training result."""
    lines = [
        f"{'stopped' if result['stopped'] else 'trained'}: {result['steps']} steps, "
        f"{result['tokens']} tokens, {result['tokens_per_s']:.0f} tokens/s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['seconds']:.1f} s"
    ]
    if result["nll_before"] is not None:
        lines.append(
            f"held-out NLL {result['nll_before']:.4f} -> {result['nll_after']:.4f} "
            f"({result['heldout_tokens']} tokens)"
        )
    if result["nll_gap"] is not None:
        lines.append(
            f"NLL gap serving on the original vs the training copy: {result['nll_gap']:+.4f}"
        )
    if result["adapter"]:
        lines.append(f"wrote {result['adapter']} ({result['adapter_bytes']} bytes)")
    lines += [f"skipped {bad}" for bad in result["bad_lines"]]
    return "\n".join(lines)


class _Progress:
    """One updating line on a terminal, one line per event otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step":
            done = event["step"] / event["steps_total"]
            bar = "#" * int(24 * done)
            text = (
                f"[{bar:<24}] step {event['step']}/{event['steps_total']} epoch {event['epoch']} "
                f"loss {event['loss']:.4f} {event['tokens_per_s']:.0f} tokens/s"
            )
        elif kind == "epoch":
            text = f"epoch {event['epoch']}: validation loss {event['val_loss']:.4f}"
        elif kind == "started":
            text = f"training on {event['windows']} windows of {event['window_tokens']} tokens"
        else:
            text = str(kind)
        if self.live and kind == "step":
            self.stream.write("\r" + text)
        else:
            self.stream.write(("\n" if self.live else "") + text + "\n")
        self.stream.flush()


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Mean NLL per token and perplexity of the model (with an adapter) on a JSONL file."""
    records = read_records(args.data)
    model = resolve_model_path(args.model)
    template = chat_template(model)
    texts = [record_text(r, template) for r in records.records]
    policy = LicensePolicy(allow_unlisted=args.allow_unlisted_license)
    with Runtime(model, context_tokens=EVAL_CONTEXT_TOKENS, policy=policy) as runtime:
        if args.adapter:
            runtime.set_adapters([(runtime.load_adapter(args.adapter), 1.0)])
        nll = runtime.nll(texts, special=True)
    return {
        "model": str(model),
        "model_sha256": runtime.info.sha256,
        "adapter": str(args.adapter) if args.adapter else None,
        "records": len(records.records),
        "bad_lines": [str(b) for b in records.bad_lines],
        "tokens": nll.tokens,
        "nll": nll.mean_nll,
        "perplexity": nll.perplexity,
    }
