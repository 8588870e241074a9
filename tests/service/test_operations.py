"""The operations layer: the FLASH hold, atomic release-and-send, the action log.

Two terminals made with ``make_network`` and opened in this process; the
release is also run in a child process killed between its steps, to show a
crash never releases a held FLASH twice.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from parley.errors import NotPermitted, UnknownPeer, UsageError
from parley.service import users
from parley.service.operations import Operations
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.terminal import Terminal, utc_now
from parley.service.users import add_user
from parley.store import models as m
from parley.store.db import reading
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"
PASSWORD = "operations-test-password"


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
def us(tmp_path: Path) -> Iterator[Terminal]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    terminal = Terminal.open(made[US].data, PASSPHRASE)
    for name, role in (("duty", "duty_officer"), ("sup", "supervisor"), ("aud", "auditor")):
        add_user(terminal.engine, name, role, PASSWORD, now=utc_now())
    yield terminal
    terminal.engine.dispose()


def ops(terminal: Terminal, name: str, role: str, via: str = "cli") -> Operations:
    return Operations(terminal, Actor(name, role, via))


def actions(terminal: Terminal) -> list[Any]:
    with reading(terminal.engine) as conn:
        return list(conn.execute(select(m.operator_actions).order_by(m.operator_actions.c.id)))


def count(terminal: Terminal, table: Any, *where: Any) -> int:
    with reading(terminal.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def out_messages(terminal: Terminal) -> int:
    return count(terminal, m.messages, m.messages.c.direction == "out")


def test_a_duty_officers_flash_is_held_and_a_supervisor_releases_it_once(us: Terminal) -> None:
    duty = ops(us, "duty", "duty_officer", "api")
    held = duty.send([RU], kind="text", body={"text": "Incoming"}, precedence="FLASH")
    assert set(held) >= {"held"}
    assert "id" not in held
    assert out_messages(us) == 0
    (row,) = actions(us)
    assert (row.operator, row.role, row.via, row.action) == ("duty", "duty_officer", "api", "hold")

    with pytest.raises(NotPermitted, match="supervisor"):
        duty.release(held["held"])
    with pytest.raises(NotPermitted, match="an auditor"):
        ops(us, "aud", "auditor").release(held["held"])

    sent = ops(us, "sup", "supervisor", "console").release(held["held"])
    assert us.show(sent["id"])["precedence"] == "FLASH"
    assert us.show(sent["id"])["operator"] == "duty"  # the message is the author's
    assert out_messages(us) == 1
    release = actions(us)[-1]
    assert (release.operator, release.role, release.via, release.action) == (
        "sup",
        "supervisor",
        "console",
        "release",
    )
    assert release.subject == sent["id"]
    with reading(us.engine) as conn:
        state = conn.execute(select(m.held_messages)).one()
    assert (state.state, state.decided_by, state.envelope_id) == ("released", "sup", sent["id"])

    with pytest.raises(UsageError, match="already released"):
        ops(us, "sup", "supervisor").release(held["held"])
    assert out_messages(us) == 1


def test_a_batch_holds_its_flash_and_sends_the_rest_in_one_transaction(us: Terminal) -> None:
    from parley.service.terminal import Draft

    duty = ops(us, "duty", "duty_officer", "api")
    drafts = [
        Draft((RU,), "text", {"text": "one"}, "ignored", precedence="ROUTINE"),
        Draft((RU,), "text", {"text": "two"}, "ignored", precedence="FLASH"),
        Draft((RU,), "text", {"text": "three"}, "ignored", precedence="IMMEDIATE"),
    ]
    results = duty.send_many(drafts)
    assert "id" in results[0]
    assert "held" in results[1]
    assert "id" in results[2]
    assert out_messages(us) == 2
    assert us.show(results[0]["id"])["operator"] == "duty"  # never the name a draft claims
    logged = [(r.action, r.operator, r.via) for r in actions(us)]
    assert logged == [("hold", "duty", "api"), ("send", "duty", "api"), ("send", "duty", "api")]
    assert [r.subject for r in actions(us)[1:]] == [results[0]["id"], results[2]["id"]]


def test_a_refused_action_changes_nothing_and_logs_nothing(us: Terminal) -> None:
    auditor = ops(us, "aud", "auditor", "api")
    with pytest.raises(NotPermitted, match="an auditor cannot send"):
        auditor.send([RU], kind="text", body={"text": "x"})
    with pytest.raises(NotPermitted, match="an auditor may not propose a channel"):
        auditor.create_channel("TRILAT", [RU])
    bundle = us.card_bundle()
    with pytest.raises(NotPermitted, match="an auditor may not pin a peer"):
        auditor.add_peer(bundle, bundle.card.fingerprint, [])
    with pytest.raises(NotPermitted, match="manage operator accounts"):
        ops(us, "duty", "duty_officer").add_user("newbie", "auditor", PASSWORD)
    assert out_messages(us) == 0
    assert actions(us) == []


def test_a_failed_action_leaves_no_log_row(us: Terminal) -> None:
    sup = ops(us, "sup", "supervisor")
    with pytest.raises(UnknownPeer):
        sup.send(["NO-SUCH-PARTY"], kind="text", body={"text": "x"})
    with pytest.raises(UsageError):
        sup.acknowledge("00000000-0000-0000-0000-000000000000")
    assert actions(us) == []
    # The terminal still works, and the next action is logged once.
    sent = sup.send([RU], kind="text", body={"text": "after"})
    assert [(r.action, r.subject) for r in actions(us)] == [("send", sent["id"])]


def test_channel_proposal_and_its_state_are_one_transaction_with_the_log(us: Terminal) -> None:
    result = ops(us, "sup", "supervisor", "console").create_channel("TRILAT", [RU])
    channels = {c["name"]: c for c in us.channels()}
    assert channels["TRILAT"]["kind"] == "named"
    (row,) = actions(us)
    assert (row.action, row.subject, row.via) == ("channel_propose", "TRILAT", "console")
    assert result["proposal"]


def test_the_local_administrator_may_do_everything(us: Terminal) -> None:
    root = ops(us, "root-on-host", LOCAL_ADMIN)
    sent = root.send([RU], kind="text", body={"text": "now"}, precedence="FLASH")
    assert "id" in sent
    assert root.add_user("newbie", "auditor", PASSWORD) == {"name": "newbie", "role": "auditor"}
    assert [(r.action, r.role) for r in actions(us)] == [
        ("send", LOCAL_ADMIN),
        ("user_add", LOCAL_ADMIN),
    ]


_KILLED_RELEASE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from parley.service import operations
    from parley.service.operations import Operations
    from parley.service.policy import Actor
    from parley.service.terminal import Terminal

    terminal = Terminal.open(Path(sys.argv[1]), sys.argv[2])

    def die(held_id):
        # The message is sealed, logged and queued in this transaction; the held
        # row is not yet marked released. The process dies here, uncommitted.
        os._exit(86)

    operations.between_release_steps = die
    Operations(terminal, Actor("sup", "supervisor", "cli")).release(int(sys.argv[3]))
    os._exit(0)  # not reached
    """
)


@pytest.mark.subprocess  # the release is killed in a process of its own
@pytest.mark.subprocess
def test_a_release_killed_between_its_steps_is_not_sent_twice(us: Terminal) -> None:
    held = ops(us, "duty", "duty_officer").send(
        [RU], kind="text", body={"text": "Launch detected"}, precedence="FLASH"
    )["held"]
    data = us.data.path
    us.engine.dispose()
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RELEASE, str(data), PASSPHRASE, str(held)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == 86, killed.stderr

    again = Terminal.open(data, PASSPHRASE)  # the restart
    try:
        assert out_messages(again) == 0
        assert count(again, m.outbox) == 0
        assert count(again, m.held_messages, m.held_messages.c.state == "held") == 1
        assert [r.action for r in actions(again)] == ["hold"]

        sent = ops(again, "sup", "supervisor").release(held)
        assert out_messages(again) == 1
        assert count(again, m.outbox) == 1
        with pytest.raises(UsageError, match="already released"):
            ops(again, "sup2", "supervisor").release(held)
        assert out_messages(again) == 1
        assert [r.action for r in actions(again)] == ["hold", "release"]
        assert actions(again)[-1].subject == sent["id"]
    finally:
        again.engine.dispose()
