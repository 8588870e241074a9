"""The whole role x action matrix, through the console, the operator API and the CLI.

Every front end must give the same outcome (allowed, held or refused) for the
same operator and action, and every allowed or held change must be in the
action log with the operator's name and the front end used. The expected
outcomes are the table ``EXPECTED`` below, written from the roles' duties
(README, "Roles"), not computed from ``parley.service.policy``.

One pair of terminals (US-EUCOM, RU-GS) serves the whole module, opened in
this process: the console and the operator API are driven through
``TestClient``; the CLI runs in this process too (``typer``'s ``CliRunner``),
talking to the same application served on the terminal's console address by
uvicorn in a thread, as it talks to ``parley serve``. Traffic from RU-GS is
carried by hand.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from parley.cli import Failure
from parley.cli import app as cli_app
from parley.config import DataDir
from parley.console.api import create_console_app
from parley.errors import ParleyError
from parley.service import users
from parley.service.lock import ServeLock
from parley.service.operations import Operations
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.recovery import RecoveryReport
from parley.service.setup import init_terminal
from parley.service.terminal import CardBundle, Terminal, utc_now
from parley.service.users import add_user
from parley.store import models as m
from parley.store.db import reading
from parley.testing.network import PASSPHRASE, TEST_SCRYPT_N, free_port, make_network

US, RU = "US-EUCOM", "RU-GS"
PASSWORD = "role-matrix-password"
TOKEN = "role-matrix-console-token-" + "z" * 16
#: Operators of US-EUCOM: the four account roles, and the local administrator (the token).
ACCOUNTS = {"duty": "duty_officer", "sup": "supervisor", "aud": "auditor", "adm": "admin"}
ROOT = "root-on-host"
OPERATORS = (*ACCOUNTS, ROOT)

A, H, R = "allowed", "held", "refused"

#: action -> outcome for duty, sup, aud, adm, and the local administrator. Written
#: from the duties of each role: the watch (duty officers, supervisors) sends and
#: acknowledges; a supervisor also sends FLASH, releases it, runs channels and
#: alarms; auditors read, verify and export; administrators manage accounts, peers
#: and links; the local administrator is root.
EXPECTED: dict[str, tuple[str, str, str, str, str]] = {
    "read": (A, A, A, A, A),
    "send ROUTINE": (A, A, R, R, A),
    "send PRIORITY": (A, A, R, R, A),
    "send IMMEDIATE": (A, A, R, R, A),
    "send FLASH": (H, A, R, R, A),
    "release held FLASH": (R, A, R, R, A),
    "reject held FLASH": (R, A, R, R, A),
    "acknowledge": (A, A, R, R, A),
    "certify translation": (A, A, R, R, A),
    "countersign translation": (A, A, R, R, A),
    "create channel": (R, A, R, R, A),
    "agree channel": (R, A, R, R, A),
    "pin peer": (R, R, R, A, A),
    "re-point link": (R, R, R, A, A),
    "add operator": (R, R, R, A, A),
    "unlock operator": (R, R, R, A, A),
    "clear alarm": (R, A, R, R, A),
    "export evidence": (R, A, A, R, A),
    "verify": (A, A, A, A, A),
    "test links": (R, A, R, A, A),
    "recover": (R, R, R, A, A),
    "rotate keys": (R, R, R, A, A),
    "revoke keys": (R, R, R, A, A),
}

#: Actions that change nothing (no action-log row is required of them).
READ_ONLY = {"read", "verify", "export evidence"}
#: The console has no page for these: a peer's card and a translation are files
#: handled with the CLI (or the API); the console shows them.
NOT_IN_CONSOLE = {
    "pin peer",
    "re-point link",
    "certify translation",
    "countersign translation",
    # The terminal recovers by itself; an administrator may start it from the CLI.
    "recover",
    # Keys are an administrator's work at the terminal (CLI) or through the API.
    "rotate keys",
    "revoke keys",
}
FRONT_ENDS = ("console", "api", "cli")


# The terminals ---------------------------------------------------------------------


class FakeWorker:
    """Stands for the delivery worker: the link test itself is not what is judged here."""

    async def test_links(self) -> None:
        return None

    async def recover(self) -> RecoveryReport:
        return RecoveryReport(before=3, target=3, after=3, complete=True)


@dataclass
class World:
    us: Terminal
    ru: Terminal
    app: FastAPI
    data: Path
    spare_cards: Iterator[Path]
    ru_card: Path
    consoles: dict[str, Any] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def root(self, terminal: Terminal, name: str = "setup") -> Operations:
        return Operations(terminal, Actor(name, LOCAL_ADMIN, "cli"))

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread: the test runner owns the signals
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("matrix")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        )
        made = make_network(root, [(US, "US European Command"), (RU, "General Staff")])
        us = Terminal.open(made[US].data, PASSPHRASE)
        ru = Terminal.open(made[RU].data, PASSPHRASE)
        for name, role in ACCOUNTS.items():
            add_user(us.engine, name, role, PASSWORD, now=utc_now())
        add_user(us.engine, "duty2", "duty_officer", PASSWORD, now=utc_now())
        spare = []
        for n in range(2 * len(OPERATORS)):  # one card for each "pin peer" tried
            data = root / f"spare{n}"
            init_terminal(
                data,
                party=f"XX-SPARE{n}",
                name=f"Spare {n}",
                passphrase=PASSPHRASE,
                peer_listen=f"127.0.0.1:{free_port()}",
                console_listen=f"127.0.0.1:{free_port()}",
                scrypt_n=TEST_SCRYPT_N,
            )
            spare.append(DataDir(data).card_file)
        ru_card = root / "ru.card"
        ru_card.write_bytes(ru.card_bundle().to_json())

        port = made[US].console_port
        app = create_console_app(us, TOKEN, hosts={"testserver", f"127.0.0.1:{port}"})
        app.state.worker = FakeWorker()
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the console listener did not start"
            time.sleep(0.02)
        data = made[US].data
        (data / "console.token").write_text(TOKEN)
        (data / "serve.json").write_text(json.dumps({"console_url": f"http://127.0.0.1:{port}"}))
        lock = ServeLock(DataDir(data))  # the CLI sees a running terminal
        assert lock.acquire()
        try:
            yield World(us, ru, app, data, iter(spare), ru_card)
        finally:
            lock.release()
            server.should_exit = True
            thread.join(timeout=10)
            us.engine.dispose()
            ru.engine.dispose()


# Preparing each action ---------------------------------------------------------------


def _received(world: World, text: str = "Contact at grid 7") -> str:
    """A text RU-GS sent to US-EUCOM, delivered and receipted by hand."""
    sent = world.root(world.ru).send([US], kind="text", body={"text": text})
    raw = world.ru.party.transcript.entry(world.ru.show(sent["id"])["log_index"])[1:]
    receipt = world.us.receive_envelope(raw, tls_party=RU)
    world.ru.receive_receipt(receipt, peer=US)
    return str(sent["id"])


def _held(world: World) -> int:
    held = Operations(world.us, Actor("duty2", "duty_officer", "api")).send(
        [RU], kind="text", body={"text": "Launch detected"}, precedence="FLASH"
    )
    return int(held["held"])


def _proposed_channel(world: World) -> str:
    name = world.fresh("TALKS")
    proposal = world.root(world.ru).create_channel(name, [US])
    raw = world.ru.party.transcript.entry(world.ru.show(proposal["proposal"])["log_index"])[1:]
    world.ru.receive_receipt(world.us.receive_envelope(raw, tls_party=RU), peer=US)
    return name


def _translation(world: World) -> str:
    result = world.root(world.us, "translator").certify_translation(
        _received(world), lang="ru", text="Контакт"
    )
    return str(result["digest"])


def _alarm(world: World) -> int:
    alarm = world.us.raise_alarm("matrix", "warning", world.fresh("S"), "an alarm to clear")
    assert alarm is not None
    return int(alarm["id"])


def _card(path: Path) -> dict[str, Any]:
    return {
        "card": json.loads(path.read_bytes()),
        "fingerprint": CardBundle.from_json(path.read_bytes()).card.fingerprint,
    }


# Each action through each front end ------------------------------------------------------
#
# Each returns what happened, as the front end shows it: allowed, held or refused.


@dataclass(frozen=True)
class Step:
    """One action, ready to run: the subject was prepared just before."""

    console: Callable[[Any], Any] | None
    api: Callable[[Any], Any]
    cli: list[str]


def _step(world: World, action: str) -> Step:
    if action == "read":
        return Step(lambda c: c.get("/inbox"), lambda a: a.get("/api/v1/inbox"), ["inbox"])
    if action.startswith("send "):
        precedence = action.split()[1]
        text = f"{precedence} report"
        return Step(
            lambda c: c.post("/compose", {"text": text, "to": RU, "precedence": precedence}),
            lambda a: a.post(
                "/api/v1/messages", json={"to": [RU], "text": text, "precedence": precedence}
            ),
            ["send", "--to", RU, "--precedence", precedence, "--text", text],
        )
    if action == "release held FLASH":
        held = _held(world)
        return Step(
            lambda c: c.post(f"/outbox/held/{held}/release"),
            lambda a: a.post(f"/api/v1/held/{held}/release"),
            ["held", "release", str(held)],
        )
    if action == "reject held FLASH":
        held = _held(world)
        return Step(
            lambda c: c.post(f"/outbox/held/{held}/cancel"),
            lambda a: a.post(f"/api/v1/held/{held}/reject"),
            ["held", "reject", str(held)],
        )
    if action == "acknowledge":
        message = _received(world)
        return Step(
            lambda c: c.post(f"/messages/{message}/ack"),
            lambda a: a.post(f"/api/v1/messages/{message}/ack"),
            ["ack", message],
        )
    if action == "certify translation":
        message = _received(world)
        return Step(
            None,
            lambda a: a.post(
                f"/api/v1/messages/{message}/translations", json={"lang": "ru", "text": "Да"}
            ),
            ["translation", "add", message, "--lang", "ru", "--text", "Да"],
        )
    if action == "countersign translation":
        digest = _translation(world)
        return Step(
            None,
            lambda a: a.post(f"/api/v1/translations/{digest}/countersign"),
            ["translation", "countersign", digest],
        )
    if action == "create channel":
        name = world.fresh("OPS")
        return Step(
            lambda c: c.post("/channels", {"name": name, "members": RU}),
            lambda a: a.post("/api/v1/channels", json={"name": name, "members": [RU]}),
            ["channel", "create", name, "--members", RU],
        )
    if action == "agree channel":
        name = _proposed_channel(world)
        return Step(
            lambda c: c.post(f"/channels/{name}/agree"),
            lambda a: a.post(f"/api/v1/channels/{name}/agree"),
            ["channel", "agree", name],
        )
    if action == "pin peer":
        card = next(world.spare_cards)
        body = {**_card(card), "links": [["primary", "https://127.0.0.1:9"]]}
        return Step(
            None,
            lambda a: a.post("/api/v1/peers", json=body),
            ["peer", "add", "--card", str(card), "--fingerprint", body["fingerprint"]],
        )
    if action == "re-point link":
        body = {**_card(world.ru_card), "links": [["backup", "https://127.0.0.1:10"]]}
        return Step(
            None,
            lambda a: a.post("/api/v1/peers", json=body),
            [
                "peer",
                "add",
                "--card",
                str(world.ru_card),
                "--fingerprint",
                body["fingerprint"],
                "--link",
                "backup=https://127.0.0.1:11",
            ],
        )
    if action == "add operator":
        name = world.fresh("newop")
        fields = {"name": name, "role": "auditor", "password": PASSWORD}
        return Step(
            lambda c: c.post("/users", fields),
            lambda a: a.post("/api/v1/users", json=fields),
            ["user", "add", name, "--role", "auditor"],
        )
    if action == "unlock operator":
        return Step(
            lambda c: c.post("/users/duty2/unlock"),
            lambda a: a.post("/api/v1/users/duty2/unlock"),
            ["user", "unlock", "duty2"],
        )
    if action == "clear alarm":
        alarm = _alarm(world)
        return Step(
            lambda c: c.post(f"/alarms/{alarm}/clear"),
            lambda a: a.post(f"/api/v1/alarms/{alarm}/clear"),
            ["alarms", "--clear", str(alarm)],
        )
    if action == "export evidence":
        out = world.data.parent / f"{world.fresh('evidence')}.json"
        return Step(
            lambda c: c.get("/transcript/export"),
            lambda a: a.get("/api/v1/evidence"),
            ["export", "--out", str(out)],
        )
    if action == "verify":
        return Step(
            lambda c: c.post("/transcript/verify"),
            lambda a: a.post("/api/v1/verify"),
            ["verify", "--json"],
        )
    if action == "test links":
        return Step(
            lambda c: c.post("/links/test"),
            lambda a: a.post("/api/v1/links/test"),
            ["links", "--test"],
        )
    if action == "recover":
        return Step(None, lambda a: a.post("/api/v1/recover"), ["recover", "--json"])
    if action == "rotate keys":
        return Step(None, lambda a: a.post("/api/v1/keys/rotate", json={}), ["keys", "rotate"])
    if action == "revoke keys":
        if world.us.identity.card.version == 1:  # an earlier card to revoke
            world.root(world.us).rotate_keys()
            _carry_rotation(world)
        body = {"reason": "old laptop lost", "version": 1}
        return Step(
            None,
            lambda a: a.post("/api/v1/keys/revoke", json=body),
            ["keys", "revoke", "--reason", "old laptop lost", "--version", "1"],
        )
    raise AssertionError(f"no step for {action}")


def _carry_rotation(world: World) -> None:
    """Carry US-EUCOM's latest rotation message to RU-GS by hand."""
    index = max(
        m["log_index"]
        for m in world.us.messages("out", all_kinds=True, limit=10_000)
        if m["kind"] == "service"
        and "card_rotation" in m["body"]["service"]
        and m["recipients"] == [RU]
    )
    raw = world.us.party.transcript.entry(index)[1:]
    world.us.receive_receipt(world.ru.receive_envelope(raw, tls_party=US), peer=RU)
    assert world.ru.party.peers[US].version == world.us.identity.card.version


class Console:
    """One operator's browser session on the console (``TestClient``)."""

    def __init__(self, app: FastAPI, name: str) -> None:
        self.http = TestClient(app, base_url="https://testserver")
        response = self.http.post(
            "/login", data={"name": name, "password": PASSWORD}, follow_redirects=False
        )
        assert response.status_code == 303, response.text
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get("/inbox").text)
        assert found is not None
        self.csrf = found[1]

    def get(self, path: str) -> Any:
        return self.http.get(path, follow_redirects=False)

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        return self.http.post(
            path, data={"csrf_token": self.csrf, **(data or {})}, follow_redirects=False
        )


def _held_count(world: World) -> int:
    with reading(world.us.engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(m.held_messages)
                .where(m.held_messages.c.state == "held")
            ).scalar_one()
        )


def _logged(world: World, name: str, via: str) -> int:
    with reading(world.us.engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(m.operator_actions)
                .where(m.operator_actions.c.operator == name, m.operator_actions.c.via == via)
            ).scalar_one()
        )


def _console_outcome(response: Any, held_before: int, world: World) -> str:
    if response.status_code == 403:
        return R
    assert response.status_code in (200, 303), (response.status_code, response.text[:500])
    if _held_count(world) > held_before:
        assert response.headers.get("location") == "/outbox"
        return H
    return A


def _api_outcome(response: Any) -> str:
    if response.status_code == 403:
        assert response.json()["error"] == "not_permitted"
        return R
    assert response.status_code in (200, 202), (response.status_code, response.text[:500])
    if response.status_code == 202:
        assert "held" in response.json()
        return H
    return A


def _cli_outcome(world: World, operator: str, args: list[str]) -> str:
    if operator == ROOT:
        env = {"PARLEY_LOCAL_ADMIN": "1", "PARLEY_OPERATOR": ROOT, "PARLEY_USER": ""}
    else:
        env = {"PARLEY_USER": operator, "PARLEY_PASSWORD": PASSWORD, "PARLEY_LOCAL_ADMIN": ""}
    env |= {"PARLEY_USER_PASSWORD": PASSWORD, "PARLEY_PASSPHRASE": PASSPHRASE}
    result = CliRunner().invoke(cli_app, ["--data", str(world.data), *args], env=env)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exit_code != 0:
        # In this process the errors reach the runner, not ``main``'s one-line report.
        failure = result.exception
        if isinstance(failure, Failure):
            output += str(failure.body["message"])
        elif isinstance(failure, ParleyError):
            output += str(failure)
        assert re.search(r"may not|cannot", output), output
        return R
    if "held for a supervisor" in output:
        return H
    return A


CASES = [
    (action, front_end, operator, EXPECTED[action][n])
    for action in EXPECTED
    for front_end in FRONT_ENDS
    for n, operator in enumerate(OPERATORS)
    if not (front_end == "console" and (operator == ROOT or action in NOT_IN_CONSOLE))
]


@pytest.mark.parametrize(
    ("action", "front_end", "operator", "expected"),
    CASES,
    ids=[f"{a}-{f}-{o}" for a, f, o, _ in CASES],
)
def test_every_front_end_gives_the_same_outcome(
    world: World, action: str, front_end: str, operator: str, expected: str
) -> None:
    step = _step(world, action)
    held_before = _held_count(world)
    name = ROOT if operator == ROOT else operator
    via = "console" if front_end == "console" else front_end
    logged_before = _logged(world, name, via)
    if front_end == "console":
        if operator not in world.consoles:
            world.consoles[operator] = Console(world.app, operator)
        assert step.console is not None
        outcome = _console_outcome(step.console(world.consoles[operator]), held_before, world)
    elif front_end == "api":
        auth: Any = (
            {"authorization": f"Bearer {TOKEN}", "x-parley-operator": ROOT}
            if operator == ROOT
            else {"authorization": "Basic " + b64encode(f"{operator}:{PASSWORD}".encode()).decode()}
        )
        client = TestClient(world.app, base_url="https://testserver", headers=auth)
        outcome = _api_outcome(step.api(client))
    else:
        outcome = _cli_outcome(world, operator, step.cli)
    assert outcome == expected, f"{operator} {action} through the {front_end}"
    if action == "rotate keys" and outcome == A:
        _carry_rotation(world)  # RU-GS follows, as it would by itself over the network
    if action == "export evidence" and front_end == "cli":
        assert Path(step.cli[-1]).exists() == (outcome == A)  # no file for a refusal
    if outcome == R:
        assert _held_count(world) == held_before
    if outcome != R and action not in READ_ONLY:
        assert _logged(world, name, via) > logged_before, "the action is not in the log"


def test_the_matrix_covers_every_role_and_front_end() -> None:
    """Each action is tried by every operator through the API and the CLI."""
    for front_end in ("api", "cli"):
        tried = {(a, o) for a, f, o, _ in CASES if f == front_end}
        assert tried == set(itertools.product(EXPECTED, OPERATORS))
    in_console = {a for a, f, _, _ in CASES if f == "console"}
    assert in_console == set(EXPECTED) - NOT_IN_CONSOLE
