"""Held-out scores of adapters on the box, measured on the serving model itself.

Training may use a higher-precision copy of the base; what matters on the line is the model
as served, so every number here comes from the serving runtime. The adapters in effect are
restored afterwards whatever happens.

Two numbers per adapter: the mean NLL of every held-out record (how well it predicts plant
language) and, for prompt/completion records, a task metric: the share of prompts whose
greedy completion gets the answer exactly right (its first line, or the group of a configured
label pattern). A candidate global adapter is scored next to the adapter the box serves and
the base model, so the aggregator can tell whether it would make this box worse.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config.rollout import EvaluationSettings
from appliance.data.records import Record
from appliance.llm.runtime import Adapter, Runtime
from appliance.llm.texts import record_text

_SLACK_TOKENS = 2
"""Tokens generated beyond the reference's length: enough to see that an answer goes on."""


def nll_with(runtime: Runtime, texts: Sequence[str], adapter: Adapter | None) -> tuple[float, int]:
    """(mean NLL, tokens) of `texts` with `adapter` alone (None: the base model)."""
    before = runtime.active_adapters
    try:
        runtime.set_adapters([] if adapter is None else [(adapter, 1.0)])
        result = runtime.nll(texts, special=True)
    finally:
        runtime.set_adapters(before)
    return result.mean_nll, result.tokens


def nll_of_file(runtime: Runtime, texts: Sequence[str], path: Path) -> float:
    """Mean held-out NLL of an adapter file (loaded, measured, freed)."""
    adapter = runtime.load_adapter(path)
    try:
        return nll_with(runtime, texts, adapter)[0]
    finally:
        runtime.free_adapter(adapter)


@dataclass(frozen=True)
class TaskItem:
    """One prompt as the model is served it, and the answer expected."""

    prompt: str
    expected: str
    max_tokens: int


@dataclass(frozen=True)
class HeldOut:
    """What a box scores adapters on: every held-out text, and the task prompts among them."""

    texts: list[str]
    items: list[TaskItem]


@dataclass(frozen=True)
class Scores:
    """One adapter's numbers on the held-out set."""

    nll: float
    tokens: int
    task: float | None


@dataclass(frozen=True)
class Comparison:
    """Base model, the adapter served now, and the candidate, on the same records."""

    base: Scores
    current: Scores
    candidate: Scores
    task_records: int


def answer(text: str, pattern: str | None) -> str | None:
    """The part of a completion the task metric compares (None: nothing to compare)."""
    if pattern is not None:
        found = re.search(pattern, text)
        return found.group(1).strip() if found else None
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else None


def held_out(
    runtime: Runtime,
    records: Sequence[Record],
    template: str | None,
    settings: EvaluationSettings,
) -> HeldOut:
    """The held-out texts, and up to `max_task_records` prompt/completion task items."""
    texts = [record_text(r, template) for r in records]
    items: list[TaskItem] = []
    for record in records:
        if len(items) >= settings.max_task_records:
            break
        if record.prompt is None or record.completion is None:
            continue
        expected = answer(record.completion, settings.label_pattern)
        if expected is None:
            continue
        rendered = record_text(record, template)
        # The served prompt is the rendered record up to where the completion starts, so
        # the model sees exactly the format it was trained on (chat template or not).
        cut = rendered.rfind(record.completion)
        prompt = rendered[:cut] if cut > 0 else f"{record.prompt}\n"
        limit = settings.max_new_tokens
        if settings.label_pattern is None:
            limit = min(limit, len(runtime.tokenize(expected, add_bos=False)) + _SLACK_TOKENS)
        items.append(TaskItem(prompt, expected, limit))
    return HeldOut(texts, items)


def task_rate(
    runtime: Runtime, items: Sequence[TaskItem], adapter: Adapter | None, pattern: str | None
) -> float | None:
    """Share of `items` answered exactly right with `adapter` alone (None when no items)."""
    if not items:
        return None
    before = runtime.active_adapters
    right = 0
    try:
        runtime.set_adapters([] if adapter is None else [(adapter, 1.0)])
        for item in items:
            # greedy with a fixed seed: the same adapter gives the same answers every time
            generated = runtime.generate(
                item.prompt, max_tokens=item.max_tokens, temperature=0.0, top_p=1.0, seed=0
            )
            if answer(generated.text, pattern) == item.expected:
                right += 1
    finally:
        runtime.set_adapters(before)
    return right / len(items)


def scores(
    runtime: Runtime, held: HeldOut, adapter: Adapter | None, settings: EvaluationSettings
) -> Scores:
    """NLL and task metric of one adapter (None: the base model)."""
    nll, tokens = nll_with(runtime, held.texts, adapter)
    return Scores(nll, tokens, task_rate(runtime, held.items, adapter, settings.label_pattern))


def compare(
    runtime: Runtime,
    held: HeldOut,
    candidate: Adapter,
    current: Adapter | None,
    settings: EvaluationSettings,
) -> Comparison:
    """Score base, current (the base again when the box serves no adapter) and candidate."""
    base = scores(runtime, held, None, settings)
    served = base if current is None else scores(runtime, held, current, settings)
    return Comparison(base, served, scores(runtime, held, candidate, settings), len(held.items))


def scores_of_file(
    runtime: Runtime, path: Path, sets: Sequence[HeldOut], settings: EvaluationSettings
) -> list[Scores]:
    """One adapter file's scores on each of `sets` (loaded once, measured, freed): the
    round's local adapter on the box's held-out data and on the plant set."""
    adapter = runtime.load_adapter(path)
    try:
        return [scores(runtime, held, adapter, settings) for held in sets]
    finally:
        runtime.free_adapter(adapter)
