"""The broker dies (SIGKILL) and comes back on the same port; the fleet carries on.

A test-owned Mosquitto configured like the plant's (packaging/mosquitto/appliance.conf:
persistence on, saved at every change). What the round needs comes from the nodes' durable
outboxes, the artifact protocol's acks and re-announces, and the broker's saved sessions.
Real aggregator and boxes as processes, training the tiny model.

Two moments: mid-round, after an update was accepted and before the round closed; and while
the new global adapter is on its way to the boxes. The last test is the transport-level case
that was lost while Mosquitto saved only every 30 minutes (Debian's default): a message the
broker acknowledged for a subscriber that had not reconnected yet.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.config.mqtt import MqttSettings
from appliance.config.transfer import OutboxSettings, TransferSettings
from appliance.demo.fleet import AGGREGATOR, PLANT, FleetLayout, FleetOptions, lay_out
from appliance.demo.run import TINY_TRAINING
from appliance.federation.audit import verify
from appliance.federation.messages import Evaluation
from appliance.identity import NodeKey, TrustStore, generate_key_pair
from appliance.identity.keys import load_public_key
from appliance.llm.tiny import make_tiny_model
from appliance.transport.node import NodeSettings, TransportNode
from tests.support.fleet_watch import (
    Daemons,
    aggregated,
    audit_records,
    daemon_log,
    evaluations,
    log_count,
    outbox_depth,
    resize_spool,
    round_state,
    serving,
    stored_updates,
)
from tests.support.mosquitto import Mosquitto

WAIT_S = 90.0
RECORDS = 24
"""Plant records of a fast box (training about 2 s here)."""
SLOW_RECORDS = 120
"""Plant records of a slow box (training about 8 s): its update comes well after the first."""
UNREACHABLE = "cannot connect to 127.0.0.1"
LOST_AFTER_S = 20.0
"""A message that has not arrived this long after its subscriber is back is lost."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto on a free loopback port with persistence on, as the plant's broker (Debian's
    mosquitto.conf); it saves only at shutdown or autosave, so a SIGKILL loses everything
    since it started. Killed at teardown."""
    directory = tmp_path / "broker"
    mosquitto = Mosquitto(directory, max_packet_size=2_000_000, persistence=True).start()
    yield mosquitto
    mosquitto.kill()


def _fleet(tmp_path: Path, model: Path, broker: Mosquitto) -> Daemons:
    """Three boxes and an aggregator laid out for one round (every box's update needed)."""
    options = FleetOptions(3, 1, str(model), broker.port, RECORDS, TINY_TRAINING)
    return Daemons(lay_out(tmp_path, options))


def _opened(layout: FleetLayout) -> list[str]:
    """Round ids in the order the aggregator opened them."""
    return [o["round_id"] for o in audit_records(layout, "round_opened")]


def _unreachable(fleet: Daemons) -> dict[str, int]:
    """How often each daemon has logged that it cannot reach the broker."""
    return {node: log_count(fleet.layout, node, UNREACHABLE) for node in fleet.processes}


def _wait_noticed(fleet: Daemons, before: dict[str, int]) -> None:
    """Wait until every daemon has tried, and failed, to reconnect since `before`."""
    fleet.wait(
        lambda: all(n > before[node] for node, n in _unreachable(fleet).items()),
        "every daemon to find the broker gone",
        WAIT_S,
    )


def _drained(layout: FleetLayout) -> bool:
    """Nothing is left to send anywhere: every message PUBACKed, every artifact acked (the
    global by every box), so no re-sent global or evaluation can come after this."""
    return all(outbox_depth(layout, node) == 0 for node in (AGGREGATOR, *layout.boxes))


def _all_evaluated(layout: FleetLayout) -> bool:
    """Every box's evaluation of v1 is in the audit."""
    return all(evaluations(layout, box, 1) for box in layout.boxes)


def _check_one_round(layout: FleetLayout, round_id: str) -> None:
    """The round counted each box's update once; each box installed v1 once."""
    done = aggregated(layout, round_id)
    assert done is not None
    assert sorted(done["participants"]) == list(layout.boxes), done["participants"]
    assert len(done["participants"]) == len(set(done["participants"])), done["participants"]
    assert sorted(done["update_sha256"]) == list(layout.boxes)
    assert done["close_reason"] == "3 updates arrived", done["close_reason"]
    assert done["global_version"] == 1
    assert stored_updates(layout, round_id) == list(layout.boxes)
    assert _opened(layout) == [round_id]
    assert not audit_records(layout, "round_abandoned")
    assert not audit_records(layout, "round_failed")
    for box in layout.boxes:
        assert serving(layout, box) == 1, box
        assert log_count(layout, box, "global adapter v1: held-out NLL") == 1, box
        assert len(evaluations(layout, box, 1)) == 1, evaluations(layout, box, 1)
        leftovers = sorted(p.name for p in (layout.state_dir(box) / "adapters").iterdir())
        assert leftovers == ["global-v1.gguf"], leftovers
    verify(layout.audit_log, load_public_key(layout.root / "trust" / f"{AGGREGATOR}.pub"))


def test_broker_killed_mid_round_every_update_counts_once(
    tmp_path: Path, tiny_model: Path, broker: Mosquitto
) -> None:
    """Box 1's update is in; the broker dies before boxes 2 and 3 (more data, slower) are
    done, they finish during the outage, and after the restart the round closes with all
    three updates, each counted once, and every box serves v1."""
    fleet = _fleet(tmp_path, tiny_model, broker)
    layout = fleet.layout
    for box in ("box-2", "box-3"):
        resize_spool(layout, box, SLOW_RECORDS)
    try:
        for node in (AGGREGATOR, *layout.boxes):
            fleet.spawn(node)
        fleet.wait(lambda: _opened(layout), "the round to open", WAIT_S)
        [round_id] = _opened(layout)
        fleet.wait(lambda: stored_updates(layout, round_id), "a first update", WAIT_S, poll_s=0.02)
        before = _unreachable(fleet)
        broker.kill()
        _wait_noticed(fleet, before)
        accepted = stored_updates(layout, round_id)
        assert round_state(layout, round_id) == "open"
        assert 1 <= len(accepted) < 3, accepted
        late = [box for box in layout.boxes if box not in accepted]
        fleet.wait(
            lambda: all(f"round {round_id}: update sent" in daemon_log(layout, b) for b in late),
            "the other boxes to queue their updates while the broker is down",
            WAIT_S,
        )
        assert stored_updates(layout, round_id) == accepted
        broker.start()

        fleet.wait(lambda: aggregated(layout, round_id), "the round to aggregate", WAIT_S)
        fleet.wait(
            lambda: all(serving(layout, box) == 1 for box in layout.boxes),
            "every box to serve v1",
            WAIT_S,
        )
        fleet.wait(lambda: _all_evaluated(layout), "every box's evaluation of v1", WAIT_S)
        fleet.wait(lambda: _drained(layout), "every outbox to drain", WAIT_S)
        _check_one_round(layout, round_id)
        assert all(len(evaluations(layout, box, 1)) == 1 for box in layout.boxes)
        fleet.assert_running()
    finally:
        fleet.stop()


def _audited(layout: FleetLayout, round_id: str) -> bool:
    """round_aggregated is in the audit (the global adapter is about to be queued)."""
    return aggregated(layout, round_id) is not None


def _queued(layout: FleetLayout, round_id: str) -> bool:
    """The aggregator logged the global adapter as queued for the boxes (its transport
    thread publishes it at once, so it is on its way through the broker)."""
    return f"round {round_id} aggregated: global adapter v1" in daemon_log(layout, AGGREGATOR)


@pytest.mark.parametrize("moment", [_audited, _queued], ids=["audited", "queued"])
def test_broker_killed_while_the_global_is_delivered_each_box_installs_it_once(
    tmp_path: Path, tiny_model: Path, broker: Mosquitto, moment: Callable[[FleetLayout, str], bool]
) -> None:
    """The broker dies once the round is aggregated (`moment`), before every box serves v1;
    after the restart every box gets, installs and evaluates v1 exactly once."""
    fleet = _fleet(tmp_path, tiny_model, broker)
    layout = fleet.layout
    try:
        for node in (AGGREGATOR, *layout.boxes):
            fleet.spawn(node)
        fleet.wait(lambda: _opened(layout), "the round to open", WAIT_S)
        [round_id] = _opened(layout)
        fleet.wait(lambda: moment(layout, round_id), moment.__name__, WAIT_S, poll_s=0.01)
        before = _unreachable(fleet)
        broker.kill()
        waiting = [box for box in layout.boxes if serving(layout, box) != 1]
        assert waiting, "every box had installed v1 before the broker was killed"
        _wait_noticed(fleet, before)
        broker.start()

        fleet.wait(
            lambda: all(serving(layout, box) == 1 for box in layout.boxes),
            "every box to serve v1",
            WAIT_S,
        )
        fleet.wait(lambda: _drained(layout), "every outbox to drain", WAIT_S)
        fleet.wait(
            lambda: all(evaluations(layout, box, 1) for box in layout.boxes),
            "every box's evaluation of v1 at the aggregator",
            WAIT_S,
        )
        _check_one_round(layout, round_id)
        fleet.assert_running()
    finally:
        fleet.stop()


def _node(root: Path, node_id: str, broker: Mosquitto) -> TransportNode:
    """A node's transport as the daemons build it (state in `root/node_id`, shared trust);
    made again for the same node, it is that node restarted (same key, same outbox)."""
    private, trust = root / node_id / "keys" / f"{node_id}.key", root / "trust"
    if not private.exists():
        private, public = generate_key_pair(private.parent, node_id)
        trust.mkdir(exist_ok=True)
        (trust / public.name).write_bytes(public.read_bytes())
    mqtt = MqttSettings(host="127.0.0.1", port=broker.port, reconnect_max_delay_s=2)
    settings = NodeSettings(
        PLANT, mqtt, OutboxSettings(), TransferSettings(), root / node_id / "transport"
    )
    return TransportNode(NodeKey.load(node_id, private), TrustStore(trust), settings)


def test_an_evaluation_sent_before_the_aggregator_is_back_reaches_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The plant server loses power: broker and aggregator die together. The broker comes
    back first; a box's evaluation (queued in its outbox meanwhile) goes out before the
    aggregator has reconnected. The aggregator must still get it once it is back."""
    aggregator = _node(tmp_path, AGGREGATOR, broker)
    received: list[Evaluation] = []
    aggregator.on_message("+", "evaluation", Evaluation, lambda m, _s: received.append(m))
    aggregator.start()
    aggregator.client.wait_connected(WAIT_S)  # its persistent session and subscription exist
    box = _node(tmp_path, "box-1", broker)
    box.start()
    box.client.wait_connected(WAIT_S)
    try:
        broker.kill()
        aggregator.stop()
        box.publish("evaluation", _evaluation("box-1"))  # queued durably: no broker
        broker.start()
        deadline = time.monotonic() + WAIT_S
        while box.outbox.count():  # delivered: the broker PUBACKed it
            assert time.monotonic() < deadline, "the box's outbox did not drain"
            time.sleep(0.05)
        aggregator = _node(tmp_path, AGGREGATOR, broker)  # the aggregator's restart
        aggregator.on_message("+", "evaluation", Evaluation, lambda m, _s: received.append(m))
        aggregator.start()
        aggregator.client.wait_connected(WAIT_S)
        deadline = time.monotonic() + LOST_AFTER_S
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [m.node_id for m in received] == ["box-1"], "the evaluation was lost"
    finally:
        box.stop()
        aggregator.stop()


def _evaluation(box: str) -> Evaluation:
    """A box's evaluation of global adapter v1, as EdgeService publishes it."""
    return Evaluation(
        round_id="r1-abcdef",
        global_version=1,
        node_id=box,
        heldout_tokens=100,
        nll_base=6.0,
        nll_global=5.0,
        activated=True,
    )
