"""Witness state that survives a restart, and one alarm per incident (docs/recovery.md §1).

Two terminals (US-EUCOM and RU-GS, SQLite) are made with ``make_network`` and
opened in this process; envelopes, receipts and witness rounds are carried
between them by hand, so each test decides exactly what each side holds and
when a terminal restarts (it is opened again from its data directory).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from parley.core.checkpoint import sign_checkpoint, verify_checkpoint
from parley.core.party import Party
from parley.core.receipts import issue_receipt, read_receipt
from parley.errors import CheckpointRejected, CheckpointRollback, Equivocation, RolledBack
from parley.merkle import MerkleLog
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"


@dataclass
class World:
    tmp: Path
    us: Terminal
    ru: Terminal
    hooked: list[dict[str, Any]]

    def restart(self, which: str) -> Terminal:
        """Close the terminal and open it again from its data directory."""
        old = self.us if which == US else self.ru
        old.engine.dispose()
        fresh = Terminal.open(old.data.path, PASSPHRASE)
        fresh.on_alarm = self.hooked.append
        if which == US:
            self.us = fresh
        else:
            self.ru = fresh
        return fresh


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    hooked: list[dict[str, Any]] = []
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    us.on_alarm = ru.on_alarm = hooked.append
    w = World(tmp_path, us, ru, hooked)
    yield w
    w.us.engine.dispose()
    w.ru.engine.dispose()


def rows(terminal: Terminal, table: Any) -> int:
    with terminal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_repeated_evidence_of_one_incident_is_one_alarm_with_a_count(world: World) -> None:
    ru = world.ru
    evidence = {"earlier": "note of size 20", "later": "note of size 6"}
    for _ in range(5):
        ru._alarms.record_equivocation(
            Equivocation("US-EUCOM signed two logs", evidence=evidence), US
        )
    ru._alarms.record_equivocation(
        Equivocation("US-EUCOM signed two logs", evidence={**evidence, "later": "size 8"}), US
    )
    (alarm,) = ru.alarms()
    assert (alarm["kind"], alarm["subject"], alarm["count"]) == ("equivocation", US, 6)
    assert alarm["last_at"] >= alarm["at"]
    assert len(world.hooked) == 1  # the hook ran for the first only
    assert rows(ru, m.evidence) == 2  # one row per distinct pair of notes
    # Cleared, the next evidence is a new incident: a new alarm.
    ru.clear_alarms("equivocation", US)
    ru._alarms.record_equivocation(Equivocation("again", evidence=evidence), US)
    assert [a["count"] for a in ru.alarms()] == [1, 6]
    assert rows(ru, m.evidence) == 2


# Carrying traffic and witness rounds by hand --------------------------------------------


def raw_of(terminal: Terminal, message_id: str) -> bytes:
    index = terminal.show(message_id)["log_index"]
    return terminal.party.transcript.entry(index)[1:]


def send(src: Terminal, dst: Terminal, text: str) -> tuple[str, bytes]:
    """``src`` sends ``text``; ``dst`` logs it; returns the id and ``dst``'s receipt."""
    sent = src.send([dst.me], kind="text", body={"text": text}, operator="o")
    return sent["id"], dst.receive_envelope(raw_of(src, sent["id"]), tls_party=src.me)


def exchange(world: World, n: int) -> None:
    """``n`` messages each way, every receipt returned."""
    for i in range(n):
        for src, dst in ((world.us, world.ru), (world.ru, world.us)):
            _, receipt = send(src, dst, f"{src.me} {i}")
            src.receive_receipt(receipt, peer=dst.me)


def round_(owner: Terminal, witness: Terminal) -> int:
    """One witness round: ``witness`` cosigns ``owner``'s log; the cosigned size."""
    offer = owner.offer_checkpoint(witness.checkpoint_request(owner.me), tls_party=witness.me)
    cosigned = witness.witness(owner.me, offer, owner.log_leaves)
    return int(owner.accept_cosignature(cosigned, tls_party=witness.me)["size"])


def unchecked_round(owner: Terminal, witness: Terminal) -> int:
    """A round with an owner that ignores what the witness saw of its log (as an old or
    careless terminal would): what the witness alone does with the offer."""
    request = witness.checkpoint_request(owner.me)
    owner.party.frozen = None
    cosigned = witness.witness(owner.me, owner.party.offer_checkpoint(request), owner.log_leaves)
    return int(owner.accept_cosignature(cosigned, tls_party=witness.me)["size"])


def cosigned_by(terminal: Terminal, owner: str) -> list[int]:
    with terminal.engine.connect() as conn:
        return list(
            conn.execute(
                select(m.cosignatures.c.size).where(
                    m.cosignatures.c.direction == "by-us", m.cosignatures.c.party == owner
                )
            ).scalars()
        )


def evidence_rows(terminal: Terminal) -> list[dict[str, str]]:
    with terminal.engine.connect() as conn:
        return [json.loads(r) for r in conn.execute(select(m.evidence.c.evidence)).scalars()]


def fabricated_receipt(us: Terminal, ru: Terminal, size: int) -> bytes:
    """US-EUCOM's real key signs a receipt for RU-GS's next message that puts it in a
    made-up log of ``size`` entries (the real one's leaves, then invented ones)."""
    sent = ru.send([US], kind="text", body={"text": "where am I?"}, operator="o")
    raw = raw_of(ru, sent["id"])
    real = read_receipt(us.receive_envelope(raw, tls_party=RU), us.party.card_of)
    fake = MerkleLog()
    for leaf in us.log_leaves(0, us.party.transcript.size):
        fake.append(leaf)
    while fake.size < size:
        fake.append(os.urandom(32))
    return issue_receipt(
        us.identity,
        sender=real.sender,
        channel=real.channel,
        envelope_id=real.envelope_id,
        envelope_digest=real.envelope_digest,
        through_seq=real.through_seq,
        missing=real.missing,
        log_index=real.log_index,
        inclusion=fake.inclusion_proof(real.log_index, size),
        checkpoint=sign_checkpoint(us.identity, size, fake.root()),
        now=us.clock(),
    )


# The fabricated larger checkpoint ---------------------------------------------------------


def test_a_fabricated_larger_checkpoint_survives_a_restart_and_blocks_cosigning(
    world: World,
) -> None:
    exchange(world, 2)
    assert round_(world.us, world.ru) == world.us.party.transcript.size
    forged = fabricated_receipt(world.us, world.ru, 1006)
    assert world.ru.receive_receipt(forged, peer=US)["through_seq"] >= 1  # accepted: a real key
    assert world.us.party.transcript.size < 1006
    with world.ru.engine.connect() as conn:
        stored = conn.execute(
            select(m.observed_checkpoints.c.size, m.observed_checkpoints.c.source).where(
                m.observed_checkpoints.c.party == US
            )
        ).all()
    assert (1006, "receipt") in [tuple(r) for r in stored]

    ru = world.restart(RU)
    assert ru.largest_seen(US) is not None
    exchange(world, 3)  # US-EUCOM's real log grows (to 14 or so): still below 1,006
    before = cosigned_by(ru, US)
    for _ in range(3):
        with pytest.raises(CheckpointRollback):
            unchecked_round(world.us, ru)
    assert cosigned_by(ru, US) == before  # no cosignature
    (alarm,) = [a for a in ru.alarms() if a["subject"] == US]
    assert (alarm["kind"], alarm["severity"], alarm["count"]) == ("rollback", "critical", 3)
    (evidence,) = evidence_rows(ru)
    assert verify_checkpoint(evidence["earlier"], world.us.identity.card).size == 1006
    assert verify_checkpoint(evidence["later"], world.us.identity.card).size == (
        world.us.party.transcript.size
    )
    # Another restart: the same incident, still refused, still one alarm.
    ru = world.restart(RU)
    with pytest.raises(CheckpointRollback):
        unchecked_round(world.us, ru)
    assert [a["count"] for a in ru.alarms() if a["subject"] == US] == [4]
    assert len(evidence_rows(ru)) == 1
    # US-EUCOM itself, reading RU-GS's request, finds a checkpoint of its log that its
    # log does not bear out, signed by its own key: rolled back or its key stolen, it
    # cannot tell which, and stops signing either way.
    with pytest.raises(RolledBack):
        round_(world.us, ru)
    assert world.us.frozen is not None
    assert "saw checkpoint 1006" in world.us.frozen


# A rolled-back peer ------------------------------------------------------------------------


def test_a_rolled_back_peer_is_one_incident_and_learns_it_was_rolled_back(
    world: World,
) -> None:
    exchange(world, 2)
    round_(world.us, world.ru)
    # A copy of US-EUCOM's data directory, as a backup would be.
    world.us.engine.dispose()
    backup = world.tmp / "us-backup"
    shutil.copytree(world.us.data.path, backup)
    exchange(world, 3)
    seen = round_(world.us, world.ru)
    assert world.ru.mirror(US, 0, 10_000) == world.us.log_leaves(0, 10_000)
    # US-EUCOM's disk dies; it is brought back from the copy.
    world.us.engine.dispose()
    shutil.rmtree(world.us.data.path)
    shutil.copytree(backup, world.us.data.path)
    us = world.restart(US)
    assert us.party.transcript.size < seen
    before = cosigned_by(world.ru, US)
    # A terminal that ignored what its peer saw would offer its smaller log, every
    # round for a minute (every two seconds or so): one incident at RU-GS.
    for _ in range(25):
        with pytest.raises(CheckpointRollback):
            unchecked_round(us, world.ru)
    assert cosigned_by(world.ru, US) == before
    alarms = world.ru.alarms()
    assert [(a["kind"], a["subject"], a["count"]) for a in alarms] == [("rollback", US, 25)]
    assert len(evidence_rows(world.ru)) == 1
    # US-EUCOM reads RU-GS's requests: its own log is behind what RU-GS saw. It
    # freezes, offers nothing (RU-GS sees no rollback from it) and says why, once.
    for _ in range(3):
        with pytest.raises(RolledBack):
            round_(us, world.ru)
    assert us.kernel.rollback == {RU: seen}
    assert us.frozen is not None
    assert f"{RU} saw checkpoint {seen}" in us.frozen
    assert world.ru.alarms()[0]["count"] == 25
    mine = [a for a in us.alarms() if a["kind"] == "rolled_back"]
    assert [(a["subject"], a["severity"], a["count"]) for a in mine] == [(US, "critical", 3)]
    assert str(seen) in mine[0]["message"]


# Equivocation from stored state ---------------------------------------------------------------


def test_an_equivocation_is_found_from_the_stored_state_after_a_restart(world: World) -> None:
    exchange(world, 1)
    round_(world.us, world.ru)
    # A fork of US-EUCOM (its keys, another history) receipts RU-GS's next message.
    fork = Party(world.us.identity, clock=world.us.clock)
    for card in world.us.party.peers.values():
        fork.add_peer(card, card.fingerprint)
    while fork.transcript.size < world.us.party.transcript.size + 1:
        fork.send_text([RU], "another history", operator="o")
    sent = world.ru.send([US], kind="text", body={"text": "hello"}, operator="o")
    raw = raw_of(world.ru, sent["id"])
    forked = fork.receive_envelope(raw).receipt
    world.ru.receive_receipt(forked, peer=US)  # a checkpoint beyond the mirror: kept
    world.us.receive_envelope(raw, tls_party=RU)
    fork_size = read_receipt(forked, world.ru.party.card_of).checkpoint.size
    ru = world.restart(RU)
    exchange(world, 2)  # US-EUCOM's real log passes the fork's size
    assert world.us.party.transcript.size > fork_size
    for _ in range(2):
        with pytest.raises(Equivocation, match=f"checkpoint {fork_size} is not a prefix"):
            round_(world.us, ru)
    assert [(a["kind"], a["count"]) for a in ru.alarms()] == [("equivocation", 2)]
    (evidence,) = evidence_rows(ru)
    assert verify_checkpoint(evidence["later"], world.us.identity.card).size == fork_size
    # After another restart it is found again from the stored checkpoints and leaves.
    ru = world.restart(RU)
    with pytest.raises(Equivocation):
        round_(world.us, ru)
    assert len(evidence_rows(ru)) == 1


# The mirror -----------------------------------------------------------------------------------


def test_the_mirror_refuses_leaves_that_do_not_hash_to_the_checkpoint(world: World) -> None:
    exchange(world, 1)
    round_(world.us, world.ru)
    held = world.ru.mirror(US, 0, 10_000)
    exchange(world, 1)
    offer = world.us.offer_checkpoint(world.ru.checkpoint_request(US), tls_party=RU)
    with pytest.raises(CheckpointRejected, match="do not hash"):
        world.ru.witness(US, offer, lambda start, limit: [os.urandom(32)] * limit)
    assert world.ru.mirror(US, 0, 10_000) == held
    assert [a["kind"] for a in world.ru.alarms()] == ["checkpoint_rejected"]
    ru = world.restart(RU)
    assert ru.mirror(US, 0, 10_000) == held
    assert round_(world.us, ru) == world.us.party.transcript.size
    assert ru.mirror(US, 0, 10_000) == world.us.log_leaves(0, 10_000)


def test_an_idle_peer_offers_what_was_cosigned_and_nothing_is_fetched(world: World) -> None:
    exchange(world, 1)
    round_(world.us, world.ru)
    offer = world.us.offer_checkpoint(world.ru.checkpoint_request(US), tls_party=RU)
    plan = world.ru.plan_witness(US, offer)
    assert not plan.fresh
    assert plan.start == plan.checkpoint.size
