"""The service layer in one process: catch-up, equivocation, restarts, failed commits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from parley.core.canonical import canonical_bytes
from parley.core.party import Party
from parley.errors import Equivocation, InclusionProofError
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal]]:
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    yield us, ru
    us.engine.dispose()
    ru.engine.dispose()


def _raw(terminal: Terminal, message_id: str) -> bytes:
    index = terminal.show(message_id)["log_index"]
    return terminal.party.transcript.entry(index)[1:]


def test_a_gap_is_detected_and_filled_from_the_senders_catch_up(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    ids = [
        us.send(["RU-GS"], kind="text", body={"text": f"m{i}"}, operator="o")["id"]
        for i in range(4)
    ]
    channel = "RU-GS.US-EUCOM"
    ru.receive_envelope(_raw(us, ids[3]))  # 1..3 lost on the way
    assert ru.gaps == {(channel, "US-EUCOM"): 0}
    answer = us.catch_up(channel, 0, for_party="RU-GS")
    results = ru.apply_catch_up("US-EUCOM", answer)
    assert len(results) == 4
    assert ru.gaps == {}
    assert ru.party.held_through(channel, "US-EUCOM") == (4, ())
    texts = sorted(m["body"]["text"] for m in ru.messages("in"))
    assert texts == ["m0", "m1", "m2", "m3"]  # each exactly once

    # A party that is not a member of the channel gets nothing.
    nothing = json.loads(us.catch_up(channel, 0, for_party="UA-GS"))
    assert nothing["envelopes"] == []


def test_a_catch_up_answer_with_a_wrong_proof_is_refused(pair: tuple[Terminal, Terminal]) -> None:
    us, ru = pair
    ids = [
        us.send(["RU-GS"], kind="text", body={"text": f"m{i}"}, operator="o")["id"]
        for i in range(3)
    ]
    ru.receive_envelope(_raw(us, ids[2]))
    answer = json.loads(us.catch_up("RU-GS.US-EUCOM", 0, for_party="RU-GS"))
    answer["envelopes"][0]["log_index"] = 1  # claims another position in the log
    size_before = ru.party.transcript.size
    with pytest.raises(InclusionProofError):
        ru.apply_catch_up("US-EUCOM", canonical_bytes(answer))
    assert ru.party.transcript.size == size_before


def test_an_equivocating_peer_raises_an_alarm_and_leaves_evidence(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    out = us.send(["RU-GS"], kind="text", body={"text": "real"}, operator="o")
    ru.receive_envelope(_raw(us, out["id"]))
    ru.witness("US-EUCOM", us.offer_checkpoint(ru.checkpoint_request("US-EUCOM")), us.log_leaves)
    # A fork of US-EUCOM: same keys, another history of the same size.
    fork = Party(us.identity, clock=us.clock)
    for card in us.party.peers.values():
        fork.add_peer(card, card.fingerprint)
    while fork.transcript.size < us.party.transcript.size:
        fork.send_text(["RU-GS"], "rewritten", operator="o")
    with pytest.raises(Equivocation):
        ru.witness(
            "US-EUCOM", fork.offer_checkpoint(ru.checkpoint_request("US-EUCOM")), fork.log_leaves
        )
    alarms = ru.alarms()
    assert [a["kind"] for a in alarms] == ["equivocation"]
    assert alarms[0]["severity"] == "critical"
    with ru.engine.connect() as conn:
        evidence = conn.execute(select(m.evidence)).all()
    assert len(evidence) == 1
    assert set(json.loads(evidence[0].evidence)) >= {"earlier", "later"}


def test_a_restarted_terminal_has_the_same_state(pair: tuple[Terminal, Terminal]) -> None:
    us, ru = pair
    for i in range(3):
        out = us.send(["RU-GS"], kind="text", body={"text": f"m{i}"}, operator="o")
        receipt = ru.receive_envelope(_raw(us, out["id"]))
        us.receive_receipt(receipt, peer="RU-GS")
    ru.witness("US-EUCOM", us.offer_checkpoint(ru.checkpoint_request("US-EUCOM")), us.log_leaves)
    root, size = us.party.transcript.root(), us.party.transcript.size
    again = Terminal.open(us.data.path, PASSPHRASE)
    assert (again.party.transcript.root(), again.party.transcript.size) == (root, size)
    assert again.party.receipted_through("RU-GS.US-EUCOM", "RU-GS") == 3
    following = again.send(["RU-GS"], kind="text", body={"text": "after"}, operator="o")
    assert following["seq"] == 4
    again.engine.dispose()


def test_a_failed_commit_leaves_memory_as_the_database_says(
    pair: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = pair
    size = us.party.transcript.size

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(us._messaging, "_store_sent", broken)
    with pytest.raises(OSError, match="disk full"):
        us.send(["RU-GS"], kind="text", body={"text": "lost?"}, operator="o")
    monkeypatch.undo()
    assert us.party.transcript.size == size
    with us.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(m.log_entries)).scalar() == size
    # The sequence number was not consumed: the next message takes it.
    assert us.send(["RU-GS"], kind="text", body={"text": "x"}, operator="o")["seq"] == 1
