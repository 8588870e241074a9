"""The console listener: plain HTTP on loopback only, its own Host names only, no cross-site
changes (over TLS: ``test_console_tls.py``).

The application is driven in process (FastAPI's TestClient), answering as the
``Host`` names of its configured ``console.listen`` address; ``serve`` and
``init`` are called directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from parley.config import check_console_listen, console_hosts
from parley.console.api import create_console_app
from parley.errors import UsageError
from parley.server import serve
from parley.service import users
from parley.service.setup import init_terminal
from parley.service.terminal import Terminal
from parley.service.users import MAX_FAILED_LOGINS, add_user
from parley.store import models as m
from parley.testing.network import PASSPHRASE, TEST_SCRYPT_N, make_network

pytestmark = pytest.mark.usefixtures("no_db_on_loop")

PASSWORD = "console-listener-test"
TOKEN = "listener-token-" + "z" * 20


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@dataclass
class Console:
    terminal: Terminal
    app: FastAPI
    origin: str  # http://127.0.0.1:PORT, as configured

    def client(self, base_url: str | None = None) -> TestClient:
        # https only so that TestClient keeps the Secure session cookie (as browsers
        # do for loopback over plain HTTP); the Host header is the same.
        return TestClient(self.app, base_url=base_url or self.origin.replace("http:", "https:"))

    def locked(self, name: str) -> bool:
        with self.terminal.engine.connect() as conn:
            until = conn.execute(
                select(m.users.c.locked_until).where(m.users.c.name == name)
            ).scalar()
        return until is not None


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = make_network(tmp_path, [("RU-GS", "General Staff")])
    terminal = Terminal.open(made["RU-GS"].data, PASSPHRASE)
    add_user(terminal.engine, "duty", "duty_officer", PASSWORD, now=terminal.clock())
    app = create_console_app(terminal, TOKEN)  # the Host names of console.listen
    yield Console(terminal, app, f"http://127.0.0.1:{made['RU-GS'].console_port}")
    terminal.engine.dispose()


# Plain HTTP on loopback only ----------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0:7080", "192.168.1.20:7080", "[::]:7080", "x:1"])
def test_a_console_listener_off_loopback_without_tls_is_refused(address: str) -> None:
    with pytest.raises(UsageError, match="not a loopback address") as refused:
        check_console_listen(address, tls=False, what="--console-listen")
    assert "--console-listen is" in str(refused.value)
    assert "console.tls is off" in str(refused.value)
    assert "in clear" in str(refused.value)


@pytest.mark.parametrize("address", ["127.0.0.1:7080", "[::1]:7080", "localhost:0", "127.0.0.9:1"])
def test_a_loopback_console_listener_is_accepted(address: str) -> None:
    host, _ = check_console_listen(address, tls=False)
    assert host in address


def test_init_refuses_a_console_listener_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"--console-listen is 0\.0\.0\.0, not a loopback.*--console-tls"
    ):
        init_terminal(
            tmp_path / "t",
            party="RU-GS",
            name="General Staff",
            passphrase=PASSPHRASE,
            console_listen="0.0.0.0:7080",
            scrypt_n=TEST_SCRYPT_N,
        )
    assert not (tmp_path / "t" / "identity.key").exists()


def test_serve_refuses_a_configuration_edited_to_listen_off_loopback(console: Console) -> None:
    console.terminal.config.console_listen = "0.0.0.0:0"
    with pytest.raises(
        UsageError, match=r"console\.listen in .*parley\.toml is 0\.0\.0\.0, not a loopback"
    ) as refused:
        asyncio.run(serve(console.terminal, stop=asyncio.Event()))
    assert "console.tls in" in str(refused.value)  # the option that allows it
    assert not (console.terminal.data.path / "serve.json").exists()
    with pytest.raises(UsageError, match="loopback"):
        create_console_app(console.terminal, TOKEN)


# Host -----------------------------------------------------------------------------------


def test_the_console_answers_only_as_its_own_address(console: Console) -> None:
    port = console.origin.rsplit(":", 1)[1]
    for good in (console.origin, f"http://localhost:{port}", f"http://[::1]:{port}"):
        assert console.client(good).get("/login").status_code == 200, good
    for bad in (
        f"http://evil.example:{port}",  # DNS rebinding: evil.example -> 127.0.0.1
        "http://127.0.0.1:1",
        f"http://127.0.0.1.evil.example:{port}",
    ):
        for path in ("/login", "/api/v1/status", "/static/htmx.min.js"):
            refused = console.client(bad).get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert refused.status_code == 400, (bad, path)
            assert "answers only as" in refused.text
    refused = console.client(f"http://evil.example:{port}").post(
        "/login", data={"name": "duty", "password": "wrong password"}
    )
    assert refused.status_code == 400
    assert console_hosts("127.0.0.1", int(port)) == {
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
    }


# Cross-site requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site", "origin": "http://other.localhost"},
    ],
    ids=["other-origin", "opaque-origin", "cross-site", "same-site"],
)
def test_cross_site_logins_are_refused_before_they_count(
    console: Console, headers: dict[str, str]
) -> None:
    client = console.client()
    for _ in range(MAX_FAILED_LOGINS + 2):
        refused = client.post(
            "/login",
            data={"name": "duty", "password": "wrong password"},
            headers=headers,
            follow_redirects=False,
        )
        assert refused.status_code == 403
    assert not console.locked("duty")
    refused = client.post("/login", data={"name": "duty", "password": PASSWORD}, headers=headers)
    assert refused.status_code == 403  # not even the right password from there
    assert "parley_session" not in client.cookies
    logged_in = client.post(
        "/login",
        data={"name": "duty", "password": PASSWORD},
        headers={"origin": console.origin, "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert logged_in.status_code == 303


def test_same_origin_failed_logins_still_lock_the_account(console: Console) -> None:
    client = console.client()
    for _ in range(MAX_FAILED_LOGINS):
        refused = client.post(
            "/login",
            data={"name": "duty", "password": "wrong password"},
            headers={"origin": console.origin, "sec-fetch-site": "same-origin"},
        )
        assert refused.status_code == 401
    assert console.locked("duty")


def test_other_changes_from_another_site_are_refused(console: Console) -> None:
    client = console.client()
    logged_in = client.post(
        "/login", data={"name": "duty", "password": PASSWORD}, follow_redirects=False
    )
    assert logged_in.status_code == 303
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        logout = client.post("/logout", headers=headers, follow_redirects=False)
        assert logout.status_code == 403
        api = client.post(
            "/api/v1/messages",
            json={"to": ["US-EUCOM"], "text": "x"},
            headers={"authorization": f"Bearer {TOKEN}", **headers},
        )
        assert api.status_code == 403
    assert client.get("/inbox", follow_redirects=False).status_code == 200  # still logged in
    assert console.terminal.messages("out") == []


def test_the_console_sends_its_origin_on_its_own_posts(console: Console) -> None:
    # "no-referrer" would make browsers send "Origin: null" on same-origin posts.
    page = console.client().get("/login")
    assert page.headers["referrer-policy"] == "same-origin"
