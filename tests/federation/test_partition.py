"""A network partition mid-round: one box is cut off, the round closes on its deadline rule
without it, and once its link is back the box catches up and joins the next round.

Real processes on a private network of namespaces (tests/support/netns.py): the broker, the
aggregator and three boxes each in a namespace of their own, wired to one bridge; the box is
cut off by taking its veth link down, so its TCP connection simply goes silent, as when a
cable is pulled. Root only (CI runs as root); skipped where `ip netns` cannot be used.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.demo.fleet import AGGREGATOR, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.federation.audit import verify
from appliance.identity.keys import load_public_key
from appliance.llm.tiny import make_tiny_model
from tests.support import netns
from tests.support.fleet_watch import (
    Daemons,
    aggregated,
    audit_records,
    daemon_log,
    evaluations,
    serving,
    stored_updates,
)

BROKER = "broker"
CUT = "box-3"
DEADLINE_S = 60
"""Round deadline: a tiny-model training takes about 8 s here, so boxes 1 and 2 are in long
before it, and the reconnected box has time to get v1 and train within round 2's."""
KEEPALIVE_S = 10
"""MQTT keep-alive of every node: a silent connection is noticed within about 15 s."""
SETTLE_S = 90.0
"""Longest wait for anything that does not wait on a round deadline."""


@pytest.fixture
def network() -> Iterator[netns.Network]:
    """Namespaces for the broker, the aggregator and three boxes; deleted at teardown."""
    if (reason := netns.unavailable()) is not None:
        pytest.skip(reason)
    with netns.star_network([BROKER, AGGREGATOR, "box-1", "box-2", "box-3"]) as net:
        yield net


def _point_at_broker(layout: FleetLayout, address: str) -> None:
    """Every node talks to the namespaced broker, with a short keep-alive."""
    for node in (AGGREGATOR, *layout.boxes):
        path = layout.config(node)
        text = path.read_text()
        assert 'host = "127.0.0.1"' in text
        text = text.replace(
            'host = "127.0.0.1"', f'host = "{address}"\nkeepalive_s = {KEEPALIVE_S}'
        )
        path.write_text(text)


def _round_rules(layout: FleetLayout) -> None:
    """All three updates close a round at once; at the deadline two are enough."""
    path = layout.config(AGGREGATOR)
    text = path.read_text()
    assert "min_updates = 3\n" in text
    for old, new in (
        ("min_updates_at_deadline = 1", "min_updates_at_deadline = 2"),
        ("deadline_s = 3600", f"deadline_s = {DEADLINE_S}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def _opened(layout: FleetLayout) -> list[str]:
    """Round ids in the order the aggregator opened them."""
    return [o["round_id"] for o in audit_records(layout, "round_opened")]


def _refused(layout: FleetLayout, box: str, round_id: str) -> bool:
    """The audit names `box`'s update for `round_id` as refused."""
    return any(
        r["node_id"] == box and r["round_id"] == round_id
        for r in audit_records(layout, "update_rejected")
    )


def _aggregated_second(layout: FleetLayout) -> bool:
    """Round 2 opened and its round_aggregated is in the audit."""
    opened = _opened(layout)
    return len(opened) == 2 and aggregated(layout, opened[1]) is not None


def test_box_cut_off_mid_round_is_left_out_then_catches_up(
    tmp_path: Path, network: netns.Network
) -> None:
    """Box 3 is cut off while it trains for round 1: the round closes at its deadline with
    boxes 1 and 2 and box 3's late update is refused; with its link back box 3 installs v1
    and its update counts in round 2."""
    broker = netns.NamespacedBroker(network, BROKER, tmp_path / "broker").start()
    model = make_tiny_model(tmp_path / "tiny.gguf")
    layout = lay_out(tmp_path, FleetOptions(3, 2, str(model), broker.port, 120, TINY_TRAINING))
    _point_at_broker(layout, network.address(BROKER))
    _round_rules(layout)
    fleet = Daemons(layout)
    try:
        for node in (AGGREGATOR, *layout.boxes):
            fleet.spawn(node, prefix=network.prefix(node))
        fleet.wait(lambda: _opened(layout), "round 1 to open", SETTLE_S)
        first = _opened(layout)[0]
        started, sent = f"round {first}: training on", f"round {first}: update sent"
        fleet.wait(
            lambda: started in daemon_log(layout, CUT),
            f"{CUT} to start training",
            SETTLE_S,
            poll_s=0.02,
        )
        network.cut(CUT)
        assert sent not in daemon_log(layout, CUT), f"{CUT}'s update left before the cut"
        assert CUT not in stored_updates(layout, first)

        # Round 1: boxes 1 and 2 deliver; the round waits for box 3 until its deadline.
        fleet.wait(lambda: aggregated(layout, first), "round 1 to close", DEADLINE_S + SETTLE_S)
        done = aggregated(layout, first)
        assert done is not None
        assert done["close_reason"].startswith("deadline"), done["close_reason"]
        assert sorted(done["participants"]) == ["box-1", "box-2"]
        assert sorted(done["update_sha256"]) == ["box-1", "box-2"]
        assert sent in daemon_log(layout, CUT), f"{CUT} did not finish training while cut off"
        assert not network.link_up(CUT)

        # The link is back: the late update is refused, v1 arrives, round 2 includes box 3.
        network.heal(CUT)
        fleet.wait(
            lambda: _refused(layout, CUT, first),
            f"{CUT}'s late round-1 update to be refused",
            SETTLE_S,
        )
        fleet.wait(lambda: (serving(layout, CUT) or 0) >= 1, f"{CUT} to serve v1", SETTLE_S)
        fleet.wait(lambda: _aggregated_second(layout), "round 2", DEADLINE_S + SETTLE_S)
        second = aggregated(layout, _opened(layout)[1])
        assert second is not None
        assert sorted(second["participants"]) == list(layout.boxes), second
        assert second["close_reason"] == "3 updates arrived", second["close_reason"]
        fleet.wait(
            lambda: all(serving(layout, box) == 2 for box in layout.boxes),
            "every box to serve v2",
            SETTLE_S,
        )
        fleet.wait(lambda: evaluations(layout, CUT, 1), f"{CUT}'s evaluation of v1", SETTLE_S)
        [evaluation] = evaluations(layout, CUT, 1)
        assert evaluation["activated"] is True, evaluation
        assert stored_updates(layout, first) == ["box-1", "box-2"]
        assert [d["global_version"] for d in audit_records(layout, "round_aggregated")] == [1, 2]
        assert not audit_records(layout, "round_abandoned")
        assert not audit_records(layout, "round_failed")
        fleet.assert_running()
        verify(layout.audit_log, load_public_key(layout.root / "trust" / f"{AGGREGATOR}.pub"))
    finally:
        fleet.stop()
        broker.stop()
