"""The recovery drill (README, "Backup and restore"), on SQLite and on PostgreSQL.

Three terminals exchange 200 messages; one is backed up after the first 100;
traffic goes on; that terminal's data directory is lost, restored from the
backup, and the terminal recovers the rest of its log from its peers by
itself. Then every transcript holds every message exactly once, ``parley
verify`` is clean everywhere and no equivocation or rollback alarm is open.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from parley.testing.network import TerminalProcess, wait_until
from tests.service.conftest import RU, UA, US, NetworkFactory

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

PARTIES = (US, RU, UA)


def _send_round(
    terminals: dict[str, TerminalProcess],
    start: int,
    count: int,
    senders: dict[str, str] | None = None,
) -> list[str]:
    """``count`` messages, round robin over senders and recipients; their ids (and, in
    ``senders``, who sent each)."""
    ids: list[str] = []
    names = [p for p, _ in PARTIES]
    batches: dict[str, list[dict[str, object]]] = {p: [] for p in names}
    for n in range(start, start + count):
        sender = names[n % 3]
        recipient = names[(n + 1 + (n // 3) % 2) % 3]
        batches[sender].append(
            {"to": [recipient], "text": f"drill message {n}", "precedence": "ROUTINE"}
        )
    for sender, messages in batches.items():
        for lo in range(0, len(messages), 20):
            sent = terminals[sender].api(
                "POST", "/messages/batch", {"messages": messages[lo : lo + 20]}
            )
            ids.extend(m["id"] for m in sent["messages"])
            if senders is not None:
                senders.update((m["id"], sender) for m in sent["messages"])
    return ids


def _settled(terminals: dict[str, TerminalProcess]) -> bool:
    """Everything delivered, and every log cosigned by every peer at its current size."""
    statuses = {p: t.api("GET", "/status") for p, t in terminals.items()}
    if any(s["pending"] for s in statuses.values()):
        return False
    return all(
        s["cosigned_by"].get(peer) == s["log_size"]
        for s in statuses.values()
        for peer in s["peers"]
    )


def _texts(terminal: TerminalProcess) -> dict[str, list[str]]:
    shown: dict[str, list[str]] = {}
    for box in ("inbox", "outbox"):
        for item in terminal.api("GET", f"/{box}"):
            if item["kind"] == "text":
                shown.setdefault(item["id"], []).append(item["body"]["text"])
    return shown


def test_a_terminal_restored_from_an_old_backup_recovers_from_its_peers(
    network: NetworkFactory, backend: str, tmp_path: Path
) -> None:
    terminals = network(PARTIES)
    us = terminals[US[0]]
    first = _send_round(terminals, 0, 100)
    wait_until(lambda: _settled(terminals), timeout=120, what="the first 100 to settle")

    backup = tmp_path / "us.backup"
    us.cli("backup", "--out", str(backup))
    size_at_backup = us.api("GET", "/status")["log_size"]

    second = _send_round(terminals, 100, 100)
    wait_until(lambda: _settled(terminals), timeout=120, what="the next 100 to settle")
    lost_size = us.api("GET", "/status")["log_size"]
    assert lost_size > size_at_backup

    # The disk dies (and with PostgreSQL, the database is lost: the restore replaces it).
    us.kill()
    shutil.rmtree(us.data)
    replace = ["--force"] if backend == "postgresql" else []
    us.cli("restore", str(backup), "--data", str(us.data), *replace)

    started = time.monotonic()
    us.start()
    wait_until(
        lambda: us.api("GET", "/status")["frozen"] is None,
        timeout=120,
        what="the restored terminal to recover and thaw",
    )
    recovery_seconds = time.monotonic() - started
    print(f"recovery: {size_at_backup} -> {lost_size} entries in {recovery_seconds:.1f} s")
    assert us.api("GET", "/status")["log_size"] >= lost_size

    # Sequence numbers go on without reuse: a new message is received everywhere.
    after = _send_round(terminals, 200, 3)
    wait_until(lambda: _settled(terminals), timeout=120, what="the messages after recovery")

    every = set(first + second + after)
    assert len(every) == 203
    seen: dict[str, int] = {}
    for terminal in terminals.values():
        for message_id, texts in _texts(terminal).items():
            assert len(texts) == 1
            seen[message_id] = seen.get(message_id, 0) + 1
    # Each message is in its sender's outbox and its recipient's inbox: twice, no more.
    assert seen == dict.fromkeys(every, 2)

    for party, terminal in terminals.items():
        alarms = terminal.api("GET", "/alarms")
        open_ = [a for a in alarms if not a.get("cleared_at")]
        assert not [a for a in open_ if a["kind"] in ("equivocation", "rollback", "rolled_back")], (
            party,
            open_,
        )
        verified = json.loads(terminal.cli("verify", "--json").stdout)
        assert verified["ok"], (party, verified)


def test_a_terminal_killed_in_the_middle_of_traffic_recovers_what_its_peers_hold(
    network: NetworkFactory, backend: str, tmp_path: Path
) -> None:
    """No quiet moment before the disk dies: messages cross in both directions while
    US-EUCOM is killed. What its peers hold comes back in order; what never left it
    (accepted by it but delivered to no one) is the only thing lost, and nothing is
    duplicated."""
    terminals = network(PARTIES)
    us = terminals[US[0]]
    _send_round(terminals, 0, 30)
    wait_until(lambda: _settled(terminals), timeout=120, what="the first messages to settle")
    backup = tmp_path / "us.backup"
    us.cli("backup", "--out", str(backup))

    sent: list[str] = []
    senders: dict[str, str] = {}
    for n in range(6):  # traffic goes on; the last batches are still on their way
        sent += _send_round(terminals, 30 + 15 * n, 15, senders)
        time.sleep(0.3)
    us.kill()
    shutil.rmtree(us.data)
    replace = ["--force"] if backend == "postgresql" else []
    us.cli("restore", str(backup), "--data", str(us.data), *replace)
    us.start()
    wait_until(
        lambda: us.api("GET", "/status")["frozen"] is None,
        timeout=120,
        what="the restored terminal to recover and thaw",
    )
    wait_until(lambda: _settled(terminals), timeout=120, what="everything to settle")

    holders = {p: _texts(t) for p, t in terminals.items()}
    for message_id in sent:
        copies = sum(len(h.get(message_id, [])) for h in holders.values())
        # Twice (sender and recipient), or never if it died with US-EUCOM's disk.
        assert copies in (0, 2), message_id
        if copies == 0:
            assert all(message_id not in h for p, h in holders.items() if p != US[0])
    lost = [i for i in sent if not any(i in h for h in holders.values())]
    # Only what US-EUCOM accepted and never passed on can be lost with its disk:
    # everything the other terminals sent arrived, exactly once (copies == 2 above).
    assert {senders[i] for i in lost} <= {US[0]}
    print(f"killed mid-traffic: {len(sent)} messages, {len(lost)} lost with the disk")
    for party, terminal in terminals.items():
        open_ = [a for a in terminal.api("GET", "/alarms") if not a.get("cleared_at")]
        assert not [a for a in open_ if a["kind"] in ("equivocation", "rollback", "rolled_back")], (
            party,
            open_,
        )
        verified = json.loads(terminal.cli("verify", "--json").stdout)
        assert verified["ok"], (party, verified)
