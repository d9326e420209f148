"""The plant evaluation set: checked where it is sent and where it lands, published once per
content and box, and scored by the box beside its own held-out data.

Services are driven through `handle()` with the events the transport hands them (real
SQLite outboxes, real tiny model, no broker), as in test_service_seams.py.
"""

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.aggregator.evaluation_set import EvaluationSetPublisher
from appliance.aggregator.service import AggregatorService
from appliance.config import load_config
from appliance.config.evaluation_set import BOX_MAX_BYTES
from appliance.config.training import TrainingSettings
from appliance.data.evaluation_set import EvaluationSetError, check_evaluation_set
from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.edge.service import EdgeService
from appliance.edge.state import EdgeState
from appliance.errors import ConfigError, ModelError
from appliance.federation.audit import read_events
from appliance.federation.audit_events import EvaluationSetPublished
from appliance.federation.global_adapter import initial_global_adapter, save_global_adapter
from appliance.federation.messages import Evaluation, RoundAnnouncement
from appliance.federation.updates import GlobalAdapter
from appliance.identity import NodeKey, TrustStore
from appliance.llm.gguf_file import open_gguf, read_model_info, tensor_shapes
from appliance.llm.tiny import make_tiny_model
from appliance.transport.events import ArtifactArrived, MessageArrived
from appliance.transport.wire import open_envelope
from tests.federation.plans import training_plan
from tests.transport.forge import manifest_for

BOX = "box-1"
GOOD = (
    b'{"prompt": "Alarm CV-242 on the transfer conveyor T1?", "completion": "A jammed roller."}\n'
    b'{"text": "Maintenance log: the air dryer A2 shows wet air; drained the separator."}\n'
)


# -- the content check -------------------------------------------------------------------------


def test_a_good_set_is_its_records_and_its_sha256() -> None:
    content = check_evaluation_set(GOOD + b"\n", max_records=10, max_bytes=1000)
    assert len(content.records) == 2  # the blank line is no record
    assert content.records[0].completion == "A jammed roller."
    assert content.sha256 == hashlib.sha256(GOOD + b"\n").hexdigest()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GOOD + b'{"text": "no end"\n', "line 3: not valid JSON"),
        (GOOD[:-20], "the last line has no newline: the file may be cut off"),
        (GOOD + b'{"text": 7}\n', 'line 3: "text" must be a string, got int'),
        (GOOD + b'["text"]\n', "line 3: expected a JSON object, got list"),
        (GOOD + b'{"prompt": "p", "completion": NaN}\n', "line 3: NaN is not a number JSON"),
        (GOOD + b'{"text": "a", "extra": 1}\n', 'line 3: expected the keys {"text"}'),
        (GOOD + b"\xff\xfe\n", "line 3: not valid UTF-8"),
        (b"\n\n", "no record in it"),
        (b"", "no record in it"),
        (GOOD * 3, "more than the 5 records allowed"),
        (GOOD * 20, "bytes, more than the 1000 allowed"),
    ],
)
def test_a_bad_set_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(EvaluationSetError) as caught:
        check_evaluation_set(data, max_records=5, max_bytes=1000)
    assert reason in str(caught.value)


# -- the aggregator's section -------------------------------------------------------------------

AGG_HEAD = 'role = "aggregator"\n[identity]\nplant_id = "plant1"\nnode_id = "agg"\n'


def test_the_section_is_optional_and_its_path_is_taken_from_the_files_folder(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text(AGG_HEAD)
    assert load_config(plain).evaluation_set is None  # type: ignore[union-attr]
    (tmp_path / "plant-set.jsonl").write_bytes(GOOD)
    config = tmp_path / "aggregator.toml"
    config.write_text(AGG_HEAD + '[evaluation_set]\npath = "plant-set.jsonl"\nmax_records = 7\n')
    section = load_config(config).evaluation_set  # type: ignore[union-attr]
    assert section is not None
    assert section.path == tmp_path / "plant-set.jsonl"
    assert (section.max_records, section.max_bytes) == (7, 1024 * 1024)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('path = "absent.jsonl"', "evaluation_set.path: file does not exist"),
        ("", "evaluation_set.path: required key is missing"),
        ('path = "set.jsonl"\nmax_records = 0', "evaluation_set.max_records"),
        ('path = "set.jsonl"\nmax_records = "9"', "evaluation_set.max_records"),
        (f'path = "set.jsonl"\nmax_bytes = {BOX_MAX_BYTES + 1}', "evaluation_set.max_bytes"),
        (
            'path = "set.jsonl"\nrecords = 3',
            "evaluation_set.records: unknown key; did you mean 'max_records'",
        ),
        ("path = 5", "evaluation_set.path"),
    ],
)
def test_a_bad_section_is_refused_naming_the_key(tmp_path: Path, lines: str, expected: str) -> None:
    (tmp_path / "set.jsonl").write_bytes(GOOD)
    config = tmp_path / "aggregator.toml"
    config.write_text(AGG_HEAD + "[evaluation_set]\n" + lines + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert expected in str(caught.value), str(caught.value)


# -- services ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def layout(tmp_path: Path, tiny_model: Path) -> FleetLayout:
    return lay_out(tmp_path, FleetOptions(2, 1, str(tiny_model), 1, 24, TINY_TRAINING))


@pytest.fixture
def box(layout: FleetLayout) -> Iterator[EdgeService]:
    service = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    yield service
    service.start()  # stop() stops what start() started
    service.stop()


def delivered(
    tmp_path: Path, data: bytes, meta: dict[str, str | int | float | bool] | None = None
) -> ArtifactArrived:
    """An evaluation set as the transport hands it over (verified, from the aggregator),
    with the meta the aggregator writes unless `meta` says otherwise."""
    path = tmp_path / f"delivery-{time.monotonic_ns()}.jsonl"
    path.write_bytes(data)
    real = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "records": data.count(b"\n"),
        "published_at": time.time(),
    }
    key = NodeKey(AGGREGATOR, Ed25519PrivateKey.generate())
    manifest = manifest_for(
        key, data, recipients=(BOX,), kind="evaluation_set", meta=real | (meta or {})
    )
    return ArtifactArrived(manifest, path)


def test_a_box_keeps_a_good_set_and_refuses_bad_ones_keeping_it(
    box: EdgeService, layout: FleetLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stored = layout.state_dir(BOX) / "plant-set.jsonl"
    first = delivered(tmp_path, GOOD)
    box.handle(first)
    assert stored.read_bytes() == GOOD
    published = EdgeState.load(box.layout.state_file).plant_set_published_at
    assert published == first.manifest.meta["published_at"]

    other = GOOD.replace(b"jammed", b"stuck")
    refusals = {
        "malformed": delivered(tmp_path, GOOD + b"{not json\n"),
        "truncated": delivered(tmp_path, GOOD[:-20]),
        "wrong type": delivered(tmp_path, GOOD + b'{"text": ["a"]}\n'),
        "not finite": delivered(tmp_path, GOOD + b'{"prompt": "p", "completion": Infinity}\n'),
        "sha mismatch": delivered(tmp_path, other, {"sha256": hashlib.sha256(GOOD).hexdigest()}),
        "count mismatch": delivered(tmp_path, other, {"records": 9}),
        "no sha": delivered(tmp_path, other, {"sha256": 5}),
        "older": delivered(tmp_path, other, {"published_at": published - 60}),
        "oversized": delivered(tmp_path, GOOD * (BOX_MAX_BYTES // len(GOOD) + 1)),
    }
    reasons = {
        "malformed": "line 3: not valid JSON",
        "truncated": "the last line has no newline",
        "wrong type": 'line 3: "text" must be a string, got list',
        "not finite": "line 3: Infinity is not a number JSON allows",
        "sha mismatch": "is not the",
        "count mismatch": "2 records, its meta says 9",
        "no sha": "the manifest's meta has no sha256",
        "older": "published before the set held",
        "oversized": f"more than the {BOX_MAX_BYTES} a box takes",
    }
    for what, event in refusals.items():
        caplog.clear()
        box.handle(event)  # the daemon goes on: no exception, the next one is handled
        assert stored.read_bytes() == GOOD, what
        assert "refused the evaluation set" in caplog.text and "keeping the set held" in (
            caplog.text
        ), what
        assert reasons[what] in caplog.text, (what, caplog.text)
    assert box.plant_set.current is not None and box.plant_set.current.data == GOOD

    caplog.clear()
    box.handle(delivered(tmp_path, GOOD))  # the same content again (a new participant's copy)
    assert "delivered again: already held" in caplog.text and stored.read_bytes() == GOOD
    box.handle(delivered(tmp_path, other))  # a newer content replaces it
    assert stored.read_bytes() == other
    restarted = type(box.plant_set)(stored)  # what the next start reads
    assert restarted.current is not None and restarted.current.sha256 == (
        hashlib.sha256(other).hexdigest()
    )


def test_a_box_without_a_set_refuses_a_bad_one_and_holds_none(
    box: EdgeService, layout: FleetLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box.handle(delivered(tmp_path, b'{"text": ""}\n'))
    assert 'line 1: "text" is empty' in caplog.text and "keeping none" in caplog.text
    assert box.plant_set.current is None
    assert not (layout.state_dir(BOX) / "plant-set.jsonl").exists()


def test_a_stored_set_spoiled_on_disk_is_moved_aside(layout: FleetLayout, tiny_model: Path) -> None:
    stored = layout.state_dir(BOX) / "plant-set.jsonl"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(GOOD[:-10])
    service = EdgeService(load_config(layout.config(BOX)))  # type: ignore[arg-type]
    try:
        assert service.plant_set.current is None
        assert len(list(stored.parent.glob("plant-set.jsonl.corrupt-*"))) == 1
    finally:
        service.start()
        service.stop()


@pytest.fixture
def aggregator(layout: FleetLayout) -> Iterator[AggregatorService]:
    service = AggregatorService(load_config(layout.config(AGGREGATOR)))  # type: ignore[arg-type]
    yield service
    service.stop()


def published(layout: FleetLayout) -> list[EvaluationSetPublished]:
    return [e for e in read_events(layout.audit_log) if isinstance(e, EvaluationSetPublished)]


def test_the_aggregator_sends_each_content_to_each_box_once(
    aggregator: AggregatorService, layout: FleetLayout, caplog: pytest.LogCaptureFixture
) -> None:
    aggregator.step()  # opens a round: the set goes out first
    data = layout.plant_set.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (first,) = published(layout)
    assert (first.sha256, first.recipients, first.bytes) == (sha, ("box-1", "box-2"), len(data))
    assert first.records == len(data.splitlines())
    assert aggregator.transport.outbox.holds_artifact(
        "evaluation_set", {"sha256": sha, "records": first.records}
    )
    aggregator.evaluation_set.publish(("box-1", "box-2"))  # the next round: nothing new
    assert len(published(layout)) == 1
    aggregator.evaluation_set.publish(("box-1", "box-2", "box-3"))  # a new box
    assert published(layout)[-1].recipients == ("box-3",)

    # a restart makes a new publisher, which learns from the audit log who has what
    again = EvaluationSetPublisher(
        aggregator.config.evaluation_set, aggregator.transport.sender, aggregator.audit
    )
    again.publish(("box-1", "box-2", "box-3"))
    assert len(published(layout)) == 2
    layout.plant_set.write_bytes(data + GOOD)  # the plant edits its file
    again.publish(("box-1", "box-2", "box-3"))
    latest = published(layout)[-1]
    assert latest.sha256 == hashlib.sha256(data + GOOD).hexdigest()
    assert latest.recipients == ("box-1", "box-2", "box-3")

    layout.plant_set.write_bytes(data + b"{broken\n")  # a bad edit is not sent
    for _ in range(3):
        again.publish(("box-1", "box-2", "box-3"))
    assert len(published(layout)) == 3
    assert caplog.text.count("not sent: line") == 1  # said once, not every round
    layout.plant_set.unlink()
    again.publish(("box-1", "box-2"))  # nor a missing one
    assert len(published(layout)) == 3 and "No such file" in caplog.text


# -- scoring -----------------------------------------------------------------------------------


def _global_adapter(model: Path, path: Path) -> Path:
    """Version 1 of the fleet's adapter for `model` (B no longer zero)."""
    settings = TrainingSettings(**TINY_TRAINING)  # type: ignore[arg-type]
    start = initial_global_adapter(
        tensor_shapes(open_gguf(model, ModelError)),
        settings.lora_spec().model_copy(update={"freeze_a": False}),
    )
    rng = np.random.default_rng(1)
    factors = {
        name: (a, rng.normal(0, 0.05, b.shape).astype(np.float32))
        for name, (a, b) in start.factors.items()
    }
    info = read_model_info(model, ModelError)
    adapter = GlobalAdapter(1, factors, start.alpha, False)
    return save_global_adapter(path, adapter, info.architecture, info.sha256, "r1-plant")


def test_a_box_scores_the_plant_set_and_its_evaluation_carries_the_numbers(
    box: EdgeService, layout: FleetLayout, tiny_model: Path, tmp_path: Path
) -> None:
    plant_data = layout.plant_set.read_bytes()
    box.handle(delivered(tmp_path, plant_data))
    box.step()  # ingest the spool
    box.health.run_once()  # the training gate opens after a first probe round
    round_ = RoundAnnouncement(
        round_id="r1-plant",
        base_sha256=box.runtime.info.sha256,
        global_version=0,
        plan=training_plan(),
        participants=(BOX,),
        min_updates=1,
        deadline=time.time() + 600,
    )
    box.handle(MessageArrived("round", round_, AGGREGATOR))
    deadline = time.monotonic() + 300
    while box.training is not None or "r1-plant" not in box.state.done_rounds:
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.2)
        box.step()
    sha = hashlib.sha256(plant_data).hexdigest()
    saved = EdgeState.load(box.layout.state_file)  # measured at the round's end, kept
    assert saved.plant_local_sha256 == {"r1-plant": sha}
    assert saved.plant_local_nll["r1-plant"] > 0
    assert 0 <= saved.plant_local_task["r1-plant"] <= 1

    global_v1 = _global_adapter(tiny_model, tmp_path / "v1.gguf")
    aggregator = NodeKey(AGGREGATOR, Ed25519PrivateKey.generate())
    manifest = manifest_for(
        aggregator,
        global_v1.read_bytes(),
        recipients=(BOX,),
        kind="global",
        meta={"round_id": "r1-plant", "global_version": 1},
    )
    box.handle(ArtifactArrived(manifest, global_v1))
    trust = TrustStore(layout.root / "trust")
    (evaluation,) = [
        open_envelope(m.payload, BOX, trust, Evaluation)
        for m in box.transport.outbox.messages(set(), 100)
        if m.topic.endswith("/evaluation")
    ]
    records = check_evaluation_set(plant_data, max_records=1000, max_bytes=10**6).records
    prompts = sum(r.prompt is not None for r in records)
    assert evaluation.plant_set_sha256 == sha
    assert evaluation.plant_tokens is not None and evaluation.plant_tokens > len(records)
    assert evaluation.plant_task_records == min(prompts, box.config.evaluation.max_task_records)
    assert evaluation.plant_nll_local == saved.plant_local_nll["r1-plant"]
    assert evaluation.plant_task_local == saved.plant_local_task["r1-plant"]
    numbers = (evaluation.plant_nll_base, evaluation.plant_nll_global)
    assert all(n is not None and 0 < n < 20 for n in numbers)
    assert evaluation.plant_nll_base != evaluation.plant_nll_global  # the adapter was applied
    assert evaluation.plant_nll_local != evaluation.plant_nll_base
    for rate in (evaluation.plant_task_base, evaluation.plant_task_global):
        assert rate is not None and 0 <= rate <= 1
    # the box's own held-out numbers are there as before, and the local task rate with them
    assert evaluation.nll_local == saved.local_nll["r1-plant"]
    assert evaluation.task_local == saved.local_task.get("r1-plant")
    round_trip = Evaluation.model_validate_json(json.dumps(evaluation.model_dump(mode="json")))
    assert round_trip == evaluation


def test_an_evaluation_of_an_older_box_parses_without_the_plant_fields() -> None:
    older = {
        "v": 1,
        "round_id": "r1-old",
        "global_version": 1,
        "node_id": BOX,
        "heldout_tokens": 10,
        "nll_base": 3.0,
        "nll_global": 2.9,
        "activated": True,
    }
    evaluation = Evaluation.model_validate_json(json.dumps(older))
    assert evaluation.plant_set_sha256 is None and evaluation.plant_nll_global is None
    assert evaluation.plant_task_records == 0 and evaluation.task_local is None
    with pytest.raises(ValueError, match="plant_task_global"):
        Evaluation.model_validate_json(json.dumps(older | {"plant_task_global": 1.5}))
    with pytest.raises(ValueError, match="plant_nll_global"):
        Evaluation.model_validate_json(
            json.dumps(older | {"plant_nll_global": float("nan")}, allow_nan=True)
        )
