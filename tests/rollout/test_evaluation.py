"""A box's scores for base, current and candidate adapters, on the real llama.cpp runtime."""

from pathlib import Path

import pytest

from appliance.config.rollout import EvaluationSettings
from appliance.data.records import Record
from appliance.edge.evaluation import answer, compare, held_out, task_rate
from appliance.llm.runtime import Runtime
from appliance.llm.texts import chat_template
from tests.lora_helpers import attention_shapes, write_random_adapter

RECORDS = [
    Record(1, prompt="Alarm PK-101 on wrapper W1?", completion="worn bearing\nreplace it"),
    Record(2, text="Maintenance log: the press runs hot."),
    Record(3, prompt="Alarm ST-120 on press P4?", completion="Alarm ST-120 means belt. Act."),
]


@pytest.fixture(scope="module")
def runtime(tiny_f32: Path) -> Runtime:
    with Runtime(tiny_f32, context_tokens=256, threads=1) as rt:
        yield rt


def test_answer_is_the_first_line_or_the_label_group() -> None:
    assert answer("  worn bearing\nreplace it", None) == "worn bearing"
    assert answer("\n\n", None) is None
    assert answer("Alarm X means worn bearing. Action: y", r"means (.+?)\.") == "worn bearing"
    assert answer("no label here", r"means (.+?)\.") is None


def test_held_out_set_serves_prompts_as_trained(runtime: Runtime) -> None:
    held = held_out(runtime, RECORDS, None, EvaluationSettings())
    assert len(held.texts) == 3
    assert [i.prompt for i in held.items] == [
        "Alarm PK-101 on wrapper W1?\n",
        "Alarm ST-120 on press P4?\n",
    ]
    assert [i.expected for i in held.items] == ["worn bearing", "Alarm ST-120 means belt. Act."]
    assert held_out(runtime, RECORDS, None, EvaluationSettings(max_task_records=1)).items[0]
    assert held_out(runtime, RECORDS, None, EvaluationSettings(max_task_records=0)).items == []
    labelled = held_out(runtime, RECORDS, None, EvaluationSettings(label_pattern=r"means (\w+)"))
    assert [i.expected for i in labelled.items] == ["belt"]


def test_held_out_prompt_with_a_chat_template(builtin_path: Path) -> None:
    template = chat_template(builtin_path)
    assert template is not None
    with Runtime(builtin_path, context_tokens=256, threads=1) as rt:
        item = held_out(rt, RECORDS[:1], template, EvaluationSettings()).items[0]
    assert "Alarm PK-101 on wrapper W1?" in item.prompt
    assert item.prompt.rstrip().endswith("assistant")
    assert "worn bearing" not in item.prompt


def test_exact_match_counts_the_model_s_own_greedy_answer(runtime: Runtime) -> None:
    held = held_out(runtime, RECORDS, None, EvaluationSettings())
    assert task_rate(runtime, held.items, None, None) == 0.0
    first = held.items[0]
    own = answer(runtime.generate(first.prompt, max_tokens=first.max_tokens, temperature=0.0,
                                  top_p=1.0, seed=0).text, None)  # fmt: skip
    assert own is not None
    right = [first.__class__(first.prompt, own, first.max_tokens), held.items[1]]
    assert task_rate(runtime, right, None, None) == 0.5
    assert task_rate(runtime, [], None, None) is None


def test_compare_scores_three_adapters_and_restores_the_served_one(
    runtime: Runtime, tmp_path: Path
) -> None:
    shapes = attention_shapes(64, 32, 2)
    served = runtime.load_adapter(write_random_adapter(tmp_path / "a.gguf", shapes, seed=1))
    candidate = runtime.load_adapter(write_random_adapter(tmp_path / "b.gguf", shapes, seed=2))
    runtime.set_adapters([(served, 1.0)])
    held = held_out(runtime, RECORDS, None, EvaluationSettings())
    result = compare(runtime, held, candidate, served, EvaluationSettings())
    assert runtime.active_adapters == [(served, 1.0)]
    assert len({result.base.nll, result.current.nll, result.candidate.nll}) == 3
    assert result.task_records == 2
    assert result.base.tokens == result.candidate.tokens > 0
    alone = compare(runtime, held, candidate, None, EvaluationSettings())
    assert alone.current == alone.base
    runtime.set_adapters([])
    runtime.free_adapter(served)
    runtime.free_adapter(candidate)


@pytest.mark.parametrize(
    "bad", [{"label_pattern": "no group"}, {"label_pattern": "(a)(b)"}, {"label_pattern": "("}]
)
def test_bad_label_patterns_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="group|regular expression"):
        EvaluationSettings(**bad)
