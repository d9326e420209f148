"""SecAgg+ restart safety in memory, at every crash point: each step persists the round
state (encrypted, real `Vault` files) before its message goes out, so a box or the aggregator
that crashes after any step and starts again from its files answers the same input with the
same message and the round completes exactly; a box that crashed between masking and sending
never masks a second vector (it counts as dropped, and the round still completes)."""

from pathlib import Path

import numpy as np
import pytest

from appliance.identity import NodeKey
from appliance.privacy.secagg import SecAggError, UnmaskedSum
from appliance.privacy.secagg.plus_box import BoxState, PlusParticipant
from appliance.privacy.secagg.plus_collector import CollectorState, PlusCollector
from appliance.privacy.secagg.vault import Vault
from tests.privacy.secagg_plus_support import GLOBAL, PlusRound, wire
from tests.privacy.secagg_support import AGG, World, world

STEPS = ("keys", "shares", "relay", "mask", "commit", "acks", "reveal")


class Persisted:
    """Every box and the collector saving to their own vaults, and restartable from them."""

    def __init__(self, r: PlusRound, tmp_path: Path) -> None:
        self.r, self.w = r, r.w
        self.keys: dict[str, NodeKey] = {k.node_id: k for k in r.w.boxes}
        self.vaults = {n: Vault(tmp_path / f"vault-{n}", k) for n, k in self.keys.items()}
        self.agg_vault = Vault(tmp_path / "vault-agg", r.w.agg)
        for name, box in r.boxes.items():
            box.on_change = self._saver(name)
            box.on_change(box.state)
        self.save_collector()

    def _saver(self, name: str):
        def save(state: BoxState) -> None:
            self.vaults[name].save("round.box", state.model_dump_json().encode())

        return save

    def save_collector(self) -> None:
        self.agg_vault.save("round.agg", self.r.collector.state.model_dump_json().encode())

    def restart_box(self, name: str) -> None:
        raw = self.vaults[name].load("round.box")
        assert raw is not None
        state = BoxState.model_validate_json(raw)
        self.r.boxes[name] = PlusParticipant(
            self.keys[name], self.w.trust, state, self._saver(name)
        )

    def restart_aggregator(self) -> None:
        raw = self.agg_vault.load("round.agg")
        assert raw is not None
        self.r.state = CollectorState.model_validate_json(raw)
        self.r.collector = PlusCollector(self.r.state, self.w.trust)
        for name, blob in self.r.blobs.items():  # the round store keeps the masked updates
            if name in self.r.state.reported:
                self.r.collector.restore_masked(blob, name)

    def restart_all(self) -> None:
        for name in self.r.boxes:
            self.restart_box(name)
        self.restart_aggregator()


def run_with_restarts(w: World, tmp_path: Path, crash_after: str) -> tuple[PlusRound, UnmaskedSum]:
    r = PlusRound(w)
    p = Persisted(r, tmp_path)

    def crash(step: str) -> None:
        if step == crash_after:
            p.save_collector()
            p.restart_all()

    for name, box in r.boxes.items():
        r.collector.add_key(wire(box.key_message()), name)
    crash("keys")
    keyset = wire(r.collector.close_keys())
    bundles = {n: wire(b.accept_key_set(keyset, AGG)) for n, b in r.boxes.items()}
    crash("shares")
    # a restarted box asked for the same key set answers with the same bundle
    assert {n: b.accept_key_set(keyset, AGG) for n, b in r.boxes.items()} == bundles
    for name, bundle in bundles.items():
        r.collector.add_shares(bundle, name)
    relays = {n: wire(x) for n, x in r.collector.close_shares().items()}
    p.save_collector()
    for name, box in r.boxes.items():
        box.accept_relay(relays[name], AGG)
    crash("relay")
    for name, box in r.boxes.items():
        box.accept_relay(relays[name], AGG)  # the same relay again: no change
        enc = r.encoded[name]
        r.blobs[name] = box.mask(enc.values, w.layout, enc.weight, GLOBAL)
    crash("mask")
    for name, blob in r.blobs.items():
        r.collector.add_masked(blob, name)
    commit = wire(r.collector.commit())
    p.save_collector()
    acks = {n: wire(b.accept_commit(commit, AGG)) for n, b in r.boxes.items()}
    crash("commit")
    assert {n: b.accept_commit(commit, AGG) for n, b in r.boxes.items()} == acks
    for name, ack in acks.items():
        r.collector.add_ack(ack, name)
    ackset = wire(r.collector.close_acks())
    p.save_collector()
    crash("acks")
    reveals = {n: wire(b.reveal(ackset, AGG)) for n, b in r.boxes.items()}
    crash("reveal")
    assert {n: b.reveal(ackset, AGG) for n, b in r.boxes.items()} == reveals
    for name, reveal in reveals.items():
        if r.collector.phase.value != "done":
            r.collector.add_reveal(reveal, name)
    p.save_collector()
    p.restart_aggregator()
    return r, r.collector.unmask()


@pytest.mark.parametrize("crash_after", STEPS)
def test_a_restart_of_everyone_after_any_step_completes_the_round(
    tmp_path: Path, crash_after: str
) -> None:
    w = world(tmp_path, 6)
    r, result = run_with_restarts(w, tmp_path, crash_after)
    assert np.array_equal(result.total, r.plain_sum(r.boxes))


def test_a_box_that_crashed_between_mask_and_send_never_masks_twice(tmp_path: Path) -> None:
    w = world(tmp_path, 6)
    r = PlusRound(w)
    p = Persisted(r, tmp_path)
    r.keys({})
    r.relay({})
    enc = r.encoded["box2"]
    r.boxes["box2"].mask(enc.values, w.layout, enc.weight, GLOBAL)  # crash: never sent
    p.restart_box("box2")
    with pytest.raises(SecAggError, match="already_masked"):
        r.boxes["box2"].mask(enc.values + 1, w.layout, enc.weight, GLOBAL)
    for name in r.boxes:
        if name != "box2":
            e = r.encoded[name]
            r.blobs[name] = r.boxes[name].mask(e.values, w.layout, e.weight, GLOBAL)
            r.collector.add_masked(r.blobs[name], name)
    r.acks({})
    r.reveal({})
    result = r.collector.unmask()
    assert result.dropped == ("box2",)
    assert np.array_equal(result.total, r.plain_sum([n for n in r.boxes if n != "box2"]))


def test_the_vault_is_encrypted_bound_to_its_name_and_fails_closed(tmp_path: Path) -> None:
    w = world(tmp_path, 2)
    vault = Vault(tmp_path / "v", w.boxes[0])
    secret = b'{"share_sk": "very secret"}'
    vault.save("r1.box", secret)
    raw = (tmp_path / "v" / "r1.box").read_bytes()
    assert b"secret" not in raw
    assert vault.load("r1.box") == secret
    # another node's key cannot open it; a file renamed to another round does not open
    other = Vault(tmp_path / "v", w.boxes[1])
    assert other.load("r1.box") is None
    assert not (tmp_path / "v" / "r1.box").exists()  # quarantined, kept for a post-mortem
    vault.save("r1.box", secret)
    (tmp_path / "v" / "r1.box").rename(tmp_path / "v" / "r2.box")
    assert vault.load("r2.box") is None
    vault.save("r3.box", secret)
    path = tmp_path / "v" / "r3.box"
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    assert vault.load("r3.box") is None
    assert vault.load("never.box") is None
    with pytest.raises(ValueError, match="vault name"):
        vault.save("../escape", secret)
