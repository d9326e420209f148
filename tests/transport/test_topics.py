"""The topic tree: built and parsed in one module, the writer always at the fifth level."""

import pytest

from appliance.transport.topics import ParsedTopic, TopicError, Topics

TOPICS = Topics("plant1")
AID = "ab" * 16


def test_every_topic_round_trips_through_parse() -> None:
    assert TOPICS.manifest("box1", AID) == f"appliance/v1/plant1/artifact/box1/{AID}/manifest"
    cases = {
        TOPICS.manifest("box1", AID): ParsedTopic("artifact", "box1", AID, "manifest"),
        TOPICS.chunk("box1", AID): ParsedTopic("artifact", "box1", AID, "chunk"),
        TOPICS.want("agg", "box1", AID): ParsedTopic("want", "agg", AID, peer="box1"),
        TOPICS.ack("agg", "box1", AID): ParsedTopic("ack", "agg", AID, peer="box1"),
        TOPICS.message("agg", "round"): ParsedTopic("msg", "agg", kind="round"),
    }
    for topic, parsed in cases.items():
        assert TOPICS.parse(topic) == parsed
        assert topic.split("/")[4] == parsed.writer


def test_filters() -> None:
    assert TOPICS.artifacts_from() == "appliance/v1/plant1/artifact/+/+/+"
    assert TOPICS.artifacts_from("agg") == "appliance/v1/plant1/artifact/agg/+/+"
    assert TOPICS.replies_to("box1") == (
        "appliance/v1/plant1/want/+/box1/+",
        "appliance/v1/plant1/ack/+/box1/+",
    )
    assert TOPICS.messages_from("agg") == "appliance/v1/plant1/msg/agg/+"


@pytest.mark.parametrize(
    "topic",
    [
        "appliance/v1/plant2/msg/agg/round",
        "appliance/v1/plant1/msg/agg",
        "appliance/v1/plant1/artifact/box1/x/other",
        "appliance/v1/plant1/nope/box1/x",
        "appliance/v1/plant1/msg/agg/round/extra",
        "appliance/v1/plant1/msg//round",
    ],
)
def test_foreign_or_malformed_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        TOPICS.parse(topic)


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "x" * 65, "-lead"])
def test_names_that_would_break_the_tree_are_refused(name: str) -> None:
    with pytest.raises(TopicError):
        TOPICS.message(name, "round")
    with pytest.raises(TopicError):
        Topics(name)
