"""Manifests, wants, acks, round messages and chunks off the wire: a hostile payload is
refused with a named reason (`RejectedError`) or parsed into a valid model; topics that do not
fit the tree are `TopicError`. Nothing else escapes a parser."""

import base64
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.federation.messages import (
    Command,
    Evaluation,
    GlobalPublished,
    RoundAnnouncement,
)
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.transport.rejects import RejectedError
from appliance.transport.topics import TopicError, Topics
from appliance.transport.wire import (
    CHUNK_HEADER_BYTES,
    Ack,
    Want,
    WireModel,
    decode_chunk,
    encode_chunk,
    open_envelope,
    seal,
)
from tests.federation.plans import training_plan
from tests.fuzz.mutations import EXAMPLES, hostile, json_values, mutated
from tests.transport.forge import manifest_for, sealed_text

REASONS = {"too_large", "malformed", "unknown_signer", "bad_signature", "invalid"}


def _trust(root: Path) -> tuple[NodeKey, TrustStore]:
    private, public = generate_key_pair(root / "keys", "box-1")
    (root / "trust").mkdir()
    (root / "trust" / public.name).write_bytes(public.read_bytes())
    return NodeKey.load("box-1", private), TrustStore(root / "trust")


def _root() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="fuzz-wire-"))


KEY, TRUST = _trust(_root())
OUTSIDER = NodeKey("box-1", Ed25519PrivateKey.generate())
PLAN = training_plan()
MESSAGES: list[WireModel] = [
    manifest_for(KEY, b"x" * 25_000, meta={"round_id": "r1"}),  # type: ignore[list-item]
    Want(artifact_id="a" * 32, sender="agg", receiver="box-1", ranges=((0, 3), (5, 9))),
    Ack(artifact_id="b" * 32, sender="agg", receiver="box-1", sha256="c" * 64),
    RoundAnnouncement(  # type: ignore[list-item]
        round_id="r1", base_sha256="d" * 64, global_version=0, plan=PLAN,
        participants=("box-1", "box-2"), min_updates=1, deadline=time.time() + 60,
    ),
    GlobalPublished(  # type: ignore[list-item]
        round_id="r1", global_version=1, artifact_sha256="e" * 64, participants=("box-1",),
        strategy="fedavg",
    ),
    Evaluation(  # type: ignore[list-item]
        round_id="r1", global_version=1, node_id="box-1", heldout_tokens=100, nll_base=2.0,
        nll_global=1.5, activated=True,
    ),
    Command(action="pin", nodes=("box-1",), global_version=2),  # type: ignore[list-item]
]
SEALED = [(type(m), seal(m, KEY)) for m in MESSAGES]


def check(payload: bytes, schema: type[WireModel]) -> None:
    try:
        message = open_envelope(payload, "box-1", TRUST, schema)
    except RejectedError as exc:
        assert exc.reason in REASONS and exc.detail
        return
    assert isinstance(message, schema)


@given(st.sampled_from(SEALED).flatmap(lambda p: st.tuples(st.just(p[0]), hostile(p[1]))))
@settings(max_examples=EXAMPLES * 3, deadline=None)
def test_mutated_or_random_envelopes(case: tuple[type[WireModel], bytes]) -> None:
    schema, payload = case
    check(payload, schema)


@given(
    st.sampled_from(SEALED).flatmap(
        lambda p: st.tuples(
            st.just(p[0]), mutated(json.loads(p[1])["body"].encode())
        )
    )
)
@settings(max_examples=EXAMPLES * 3, deadline=None)
def test_mutated_bodies_signed_by_a_trusted_key(case: tuple[type[WireModel], bytes]) -> None:
    """A trusted but buggy or compromised box: the signature is fine, the body is not."""
    schema, body = case
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return  # a signed body is text by construction
    check(sealed_text(text, KEY), schema)


@given(st.sampled_from([m for m, _ in SEALED]), json_values)
@settings(max_examples=EXAMPLES, deadline=None)
def test_arbitrary_json_bodies_signed_by_a_trusted_key(schema: type[WireModel], body: object) -> None:
    check(sealed_text(json.dumps(body), KEY), schema)


@given(st.sampled_from(MESSAGES))
@settings(max_examples=20, deadline=None)
def test_a_valid_message_from_an_untrusted_key_is_refused(message: WireModel) -> None:
    payload = seal(message, OUTSIDER)
    try:
        open_envelope(payload, "box-1", TRUST, type(message))
    except RejectedError as exc:
        assert exc.reason == "bad_signature"
    else:
        raise AssertionError("accepted a message signed by a key outside the trust store")
    envelope = json.loads(payload)
    envelope["signature"] = base64.b64encode(b"\0" * 64).decode()
    check(json.dumps(envelope).encode(), type(message))


VALID_CHUNK = encode_chunk("f" * 32, 3, b"payload bytes" * 10)


@given(hostile(VALID_CHUNK))
@settings(max_examples=EXAMPLES, deadline=None)
def test_chunks(payload: bytes) -> None:
    try:
        artifact_id, index, digest, data = decode_chunk(payload)
    except RejectedError as exc:
        assert exc.reason == "malformed_chunk"
        return
    assert len(artifact_id) == 32 and len(digest) == 32 and index >= 0
    assert len(data) == len(payload) - CHUNK_HEADER_BYTES


TOPICS = Topics("plant-1")


@given(
    st.one_of(
        st.text(max_size=120),
        st.lists(
            st.sampled_from(["appliance", "v1", "plant-1", "msg", "artifact", "want", "ack",
                             "box-1", "+", "#", "", "..", "a" * 70, "manifest", "chunk", "round"]),
            max_size=8,
        ).map("/".join),
    )
)
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_topics(topic: str) -> None:
    try:
        parsed = TOPICS.parse(topic)
    except TopicError as exc:
        assert str(exc)
        return
    assert topic.startswith("appliance/v1/plant-1/")
    assert parsed.writer and "/" not in parsed.writer


def test_a_non_ascii_signature_is_malformed_not_a_crash() -> None:
    """Found by the atheris harness: base64 raised a bare ValueError on non-ASCII text."""
    envelope = json.loads(SEALED[0][1])
    envelope["signature"] = envelope["signature"][:-4] + "\u05fd=="
    try:
        open_envelope(json.dumps(envelope).encode(), "box-1", TRUST, SEALED[0][0])
    except RejectedError as exc:
        assert (exc.reason, exc.detail) == ("malformed", "signature is not base64")
    else:
        raise AssertionError("accepted a non-base64 signature")
