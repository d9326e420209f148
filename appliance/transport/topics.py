"""The federation topic tree, built and parsed in one place.

Every topic is `appliance/v1/<plant>/<channel>/<writer>/...`: the node that publishes a
message is always the fifth level. A broker ACL can therefore confine each node to its own
subtree with one line (`pattern write appliance/v1/<plant>/+/%u/#`), and a receiver checks
that the signer of a message is the writer named in its topic.

    artifact/<sender>/<artifact_id>/manifest     signed manifest of an artifact
    artifact/<sender>/<artifact_id>/chunk        one chunk (binary, see `wire`)
    want/<receiver>/<sender>/<artifact_id>       receiver asks for missing chunks
    ack/<receiver>/<sender>/<artifact_id>        receiver confirms a verified artifact
    msg/<sender>/<kind>                          small signed message (rounds, commands...)
"""

from dataclasses import dataclass

from appliance.identity.keys import NODE_ID_RE

ROOT = "appliance/v1"
ARTIFACT = "artifact"
WANT = "want"
ACK = "ack"
MSG = "msg"
MANIFEST = "manifest"
CHUNK = "chunk"


class TopicError(ValueError):
    """A topic (or a name meant for one) does not fit the tree."""


def _safe(name: str, what: str) -> str:
    if not NODE_ID_RE.fullmatch(name):
        raise TopicError(f"invalid {what} {name!r} for a topic level")
    return name


@dataclass(frozen=True)
class ParsedTopic:
    """The parts of a federation topic; `peer` is the other node of a want/ack."""

    channel: str
    writer: str
    artifact_id: str | None = None
    part: str | None = None
    peer: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Topics:
    """Topic builder and parser for one plant."""

    plant: str

    def __post_init__(self) -> None:
        _safe(self.plant, "plant id")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.plant}"

    def manifest(self, sender: str, artifact_id: str) -> str:
        return self._join(ARTIFACT, _safe(sender, "sender"), _safe(artifact_id, "id"), MANIFEST)

    def chunk(self, sender: str, artifact_id: str) -> str:
        return self._join(ARTIFACT, _safe(sender, "sender"), _safe(artifact_id, "id"), CHUNK)

    def want(self, receiver: str, sender: str, artifact_id: str) -> str:
        return self._join(
            WANT, _safe(receiver, "receiver"), _safe(sender, "sender"), _safe(artifact_id, "id")
        )

    def ack(self, receiver: str, sender: str, artifact_id: str) -> str:
        return self._join(
            ACK, _safe(receiver, "receiver"), _safe(sender, "sender"), _safe(artifact_id, "id")
        )

    def message(self, sender: str, kind: str) -> str:
        return self._join(MSG, _safe(sender, "sender"), _safe(kind, "message kind"))

    def artifacts_from(self, sender: str = "+") -> str:
        """Filter for manifests and chunks of `sender` (`+`: every sender)."""
        return self._join(ARTIFACT, sender if sender == "+" else _safe(sender, "sender"), "+", "+")

    def replies_to(self, sender: str) -> tuple[str, str]:
        """Filters for the wants and acks addressed to `sender`."""
        _safe(sender, "sender")
        return self._join(WANT, "+", sender, "+"), self._join(ACK, "+", sender, "+")

    def messages_from(self, sender: str = "+", kind: str = "+") -> str:
        return self._join(MSG, sender, kind)

    def parse(self, topic: str) -> ParsedTopic:
        """Split a topic of this plant's tree; `TopicError` for anything else."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            raise TopicError(f"topic {topic!r} is outside {self.base}/")
        levels = topic[len(prefix) :].split("/")
        for level in levels:
            _safe(level, "topic level")
        match levels:
            case [channel, writer, artifact_id, part] if channel == ARTIFACT and part in (
                MANIFEST,
                CHUNK,
            ):
                return ParsedTopic(channel, writer, artifact_id=artifact_id, part=part)
            case [channel, writer, peer, artifact_id] if channel in (WANT, ACK):
                return ParsedTopic(channel, writer, artifact_id=artifact_id, peer=peer)
            case [channel, writer, kind] if channel == MSG:
                return ParsedTopic(channel, writer, kind=kind)
        raise TopicError(f"topic {topic!r} does not match any known message")

    def _join(self, *levels: str) -> str:
        return "/".join((self.base, *levels))
