"""Recovery in one process, step by step: order from the witness, the entries past what
any peer saw, sequence numbers after, and what cannot be recovered."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.service.audit import audit
from parley.service.recovering import LogGuard
from parley.service.recovery import RecoveryReport
from parley.service.terminal import Terminal
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"


class World:
    def __init__(self, tmp: Path) -> None:
        made = make_network(tmp, [(US, "US European Command"), (RU, "General Staff")])
        self.tmp = tmp
        self.paths = {p: t.data for p, t in made.items()}
        self.t = {p: Terminal.open(path, PASSPHRASE) for p, path in self.paths.items()}
        #: Peers that do not answer (their link is down).
        self.down: set[str] = set()

    def send(self, sender: str, text: str) -> str:
        src, dst = self.t[sender], self.t[RU if sender == US else US]
        sent: str = src.send([dst.me], kind="text", body={"text": text}, operator="o")["id"]
        raw = src.party.transcript.entry(src.show(sent)["log_index"])[1:]
        src.receive_receipt(dst.receive_envelope(raw, tls_party=src.me), peer=dst.me)
        return sent

    def witness(self, owner: str, by: str) -> None:
        o, w = self.t[owner], self.t[by]
        offer = o.offer_checkpoint(w.checkpoint_request(o.me), tls_party=w.me)
        o.accept_cosignature(w.witness(o.me, offer, o.log_leaves), tls_party=w.me)

    def copy(self, party: str, name: str) -> Path:
        self.t[party].engine.dispose()
        target = self.tmp / name
        shutil.copytree(self.paths[party], target)
        return target

    def lose_disk(self, party: str, backup: Path) -> Terminal:
        self.t[party].engine.dispose()
        shutil.rmtree(self.paths[party])
        shutil.copytree(backup, self.paths[party])
        self.t[party] = Terminal.open(self.paths[party], PASSPHRASE)
        return self.t[party]

    async def fetch(self, me: str, peer: str, method: str, path: str, **kw: Any) -> bytes:
        """The peer API's recovery answers, called in process."""
        if peer in self.down:
            raise ConnectionError(f"{peer} does not answer")
        other = self.t[peer]
        params = kw.get("params") or {}
        if path == "/v1/recovery/status":
            return json.dumps(other.recovery_status(me)).encode()
        if path == "/v1/recovery/leaves":
            hashes = other.recovery_leaves(me, int(params["start"]), int(params["limit"]))
            return json.dumps({"leaves": [base64.b64encode(h).decode() for h in hashes]}).encode()
        if path == "/v1/recovery/entries":
            answer = other.recovery_entries(me, int(params["after"]), int(params["limit"]))
            return json.dumps(answer).encode()
        raise AssertionError(path)

    def guard(self, party: str) -> LogGuard:
        async def fetch(peer: str, method: str, path: str, **kw: Any) -> bytes:
            return await self.fetch(party, peer, method, path, **kw)

        return LogGuard(self.t[party], fetch)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    for terminal in w.t.values():
        terminal.engine.dispose()


def _texts(terminal: Terminal) -> list[str]:
    return sorted(m["body"]["text"] for m in terminal.messages("out"))


def test_recovery_puts_back_the_witnessed_log_then_what_no_checkpoint_covered(
    world: World,
) -> None:
    world.send(US, "m0")
    backup = world.copy(US, "backup")
    world.t[US] = Terminal.open(world.paths[US], PASSPHRASE)
    for n in (1, 2):
        world.send(US, f"m{n}")
    world.send(RU, "reply")
    world.witness(US, RU)
    witnessed = world.t[US].party.transcript.size
    root = world.t[US].party.transcript.tree.root_at(witnessed)
    # Sent and receipted, but no checkpoint of US-EUCOM's log that covers them reached RU-GS.
    world.send(US, "m3")
    world.send(US, "m4")
    lost_size = world.t[US].party.transcript.size

    us = world.lose_disk(US, backup)
    assert us.party.transcript.size < witnessed
    report: RecoveryReport = asyncio.run(world.guard(US).recover())
    assert report.complete, report.as_dict()
    assert (report.target, report.recovered) == (witnessed, witnessed - report.before)
    assert report.appended_past_target == lost_size - witnessed  # m3, m4 and their receipts
    assert us.frozen is None
    assert us.party.transcript.tree.root_at(witnessed) == root
    # What the officer sees came back from the entries, text included (RU-GS had it).
    assert _texts(us) == ["m0", "m1", "m2", "m3", "m4"]
    assert [m["body"]["text"] for m in us.messages("in")] == ["reply"]
    # Sequence numbers go on: RU-GS accepts the next message (seq 6), no reuse.
    world.send(US, "after recovery")
    assert "after recovery" in [m["body"]["text"] for m in world.t[RU].messages("in")]
    us.engine.dispose()
    assert audit(us.engine, us.identity.card).ok


def _lost_after_a_witnessed_message(world: World) -> Terminal:
    """US-EUCOM sends m0, is backed up, sends m1, RU-GS witnesses; then its disk dies."""
    world.send(US, "m0")
    backup = world.copy(US, "backup")
    world.t[US] = Terminal.open(world.paths[US], PASSPHRASE)
    world.send(US, "m1")
    world.witness(US, RU)
    return world.lose_disk(US, backup)


def test_what_no_peer_holds_is_listed_and_the_terminal_stays_frozen(world: World) -> None:
    us = _lost_after_a_witnessed_message(world)
    # RU-GS holds the order, but its log lost the entries too (wiped): nothing to put back.
    with world.t[RU].engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM log_entries WHERE idx >= 1")
        conn.exec_driver_sql("DELETE FROM messages WHERE log_index >= 1")
    report = asyncio.run(world.guard(US).recover())
    assert not report.complete
    assert report.holes
    assert [h.index for h in report.holes] == list(range(report.after, report.target))
    assert all("no peer holds" in h.reason for h in report.holes)
    assert us.frozen is not None


def test_a_restored_terminal_waits_for_every_peer_then_recovers(world: World) -> None:
    us = _lost_after_a_witnessed_message(world)
    with us.engine.begin() as conn:  # as parley restore leaves it
        conn.exec_driver_sql("INSERT INTO settings (key, value) VALUES ('recovery_required', '1')")
    us.engine.dispose()
    us = world.t[US] = Terminal.open(world.paths[US], PASSPHRASE)
    assert us.frozen is not None
    assert "restored from a backup" in us.frozen
    world.down.add(RU)
    result = asyncio.run(world.guard(US).check())
    assert not result.everyone_answered
    assert "does not answer" in (result.views[RU].error or "")
    assert us.frozen is not None  # RU-GS may have seen more: it waits
    world.down.clear()
    report = asyncio.run(world.guard(US).recover())
    assert report.complete
    assert us.frozen is None
    assert _texts(us) == ["m0", "m1"]
