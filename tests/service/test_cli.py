"""The CLI on its own: setting up terminals, pinning peers, working without ``serve``, auditing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from parley.config import DataDir
from parley.service.terminal import CardBundle
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import PASSPHRASE, TerminalProcess, wait_until
from tests.service.conftest import NetworkFactory

# Runs the `parley` CLI (and `parley serve`) as processes.
pytestmark = pytest.mark.subprocess

FINGERPRINT = re.compile(r"^(\d{5} ){11}\d{5}$")


def parley(
    data: Path, *args: str, passphrase: str = PASSPHRASE
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PARLEY_PASSPHRASE=passphrase, PARLEY_LOCAL_ADMIN="1")
    return subprocess.run(
        [sys.executable, "-m", "parley.cli", "--data", str(data), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_init_card_fingerprint_and_peer_add(tmp_path: Path) -> None:
    us, ru = tmp_path / "us", tmp_path / "ru"
    for data, party in ((us, "US-EUCOM"), (ru, "RU-GS")):
        result = parley(
            data, "init", "--party", party, "--name", f"{party} terminal", "--scrypt-n", "1024"
        )
        assert result.returncode == 0, result.stderr
    assert (us / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (us / "console.token").stat().st_mode & 0o777 == 0o600

    again = parley(us, "init", "--party", "US-EUCOM", "--name", "x", "--scrypt-n", "1024")
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr

    fingerprint = parley(ru, "fingerprint").stdout.strip()
    assert FINGERPRINT.match(fingerprint), fingerprint
    card = parley(ru, "card").stdout
    bundle = CardBundle.from_json(card.encode())
    assert bundle.card.party == "RU-GS"
    assert bundle.card.fingerprint == fingerprint
    card_file = tmp_path / "ru.card"
    card_file.write_text(card)

    wrong = fingerprint[:-1] + ("0" if fingerprint[-1] != "0" else "1")
    refused = parley(
        us,
        "peer",
        "add",
        "--card",
        str(card_file),
        "--fingerprint",
        wrong,
        "--link",
        "primary=https://127.0.0.1:1",
    )
    assert refused.returncode != 0
    assert "do not trust this card" in refused.stderr
    listed = json.loads(parley(us, "peer", "list", "--json").stdout)
    assert listed == []

    bad_link = parley(
        us,
        "peer",
        "add",
        "--card",
        str(card_file),
        "--fingerprint",
        fingerprint,
        "--link",
        "primary",
    )
    assert bad_link.returncode != 0
    assert "NAME=URL" in bad_link.stderr

    ok = parley(
        us,
        "peer",
        "add",
        "--card",
        str(card_file),
        "--fingerprint",
        fingerprint.replace(" ", ""),
        "--link",
        "primary=https://127.0.0.1:7443",
        "--link",
        "satellite=https://10.0.0.2:7443",
    )
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(parley(us, "peer", "list", "--json").stdout)
    assert [p["party"] for p in listed] == ["RU-GS"]
    assert listed[0]["fingerprint"] == fingerprint
    assert {li["name"] for li in listed[0]["links"]} == {"primary", "satellite"}

    wrong_pass = parley(
        us,
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "ROUTINE",
        "--text",
        "x",
        passphrase="not the passphrase",
    )
    assert wrong_pass.returncode != 0
    assert "passphrase" in wrong_pass.stderr.lower()


def test_help_states_when_commands_reach_the_running_terminal() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "parley.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert "talk to the running terminal" in result.stdout
    assert "work on its database directly" in result.stdout


def _flip_one_byte(url: str, index: int) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        entry = conn.execute(
            select(m.log_entries.c.entry).where(m.log_entries.c.idx == index)
        ).scalar_one()
        changed = bytearray(entry)
        position = len(changed) // 2
        changed[position] ^= 0x01
        conn.execute(
            update(m.log_entries).where(m.log_entries.c.idx == index).values(entry=bytes(changed))
        )
    engine.dispose()


def test_send_without_serve_is_durable_then_delivered_and_verify_catches_one_byte(
    network: NetworkFactory,
) -> None:
    terminals = network(start=False)
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    sent = us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "ROUTINE",
        "--text",
        "Queued while the terminal is down",
        "--json",
    )
    message_id = json.loads(sent.stdout)["id"]
    outbox = json.loads(us.cli("show", message_id, "--json").stdout)
    assert outbox["delivery"]["RU-GS"]["state"] == "pending"

    ru.start()
    us.start()
    wait_until(
        lambda: "RU-GS" in us.api("GET", f"/messages/{message_id}")["receipts"],
        timeout=30,
        what="the receipt",
    )
    assert us.stop() == 0
    assert ru.stop() == 0

    report = json.loads(ru.cli("verify", "--json").stdout)
    assert report["ok"], report["failures"]
    url = DataDir(ru.data).load_config().database
    size = report["entries"]
    for index in (0, size - 1):
        _flip_one_byte(url, index)
        result = ru.cli("verify", "--json", check=False)
        assert result.returncode == 1
        failures = json.loads(result.stdout)["failures"]
        assert any(f"log entry {index}" in f for f in failures), failures
        _flip_one_byte(url, index)  # flip it back: the record verifies again
        assert ru.cli("verify", "--json", check=False).returncode == 0


def test_serve_refuses_a_second_process_and_stops_cleanly(network: NetworkFactory) -> None:
    terminals = network(start=False)
    us: TerminalProcess = terminals["US-EUCOM"]
    us.start()
    second = us.cli("serve", check=False, timeout=60)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert us.stop() == 0
    assert not (us.data / "serve.json").exists()


@pytest.mark.parametrize("field", ["party"])
def test_init_rejects_a_bad_party_id(tmp_path: Path, field: str) -> None:
    result = parley(
        tmp_path / "x", "init", "--party", "us eucom", "--name", "x", "--scrypt-n", "1024"
    )
    assert result.returncode != 0
    assert "party id" in result.stderr
    assert not (tmp_path / "x" / "identity.key").exists()


def _as(terminal: TerminalProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``parley`` on ``terminal`` as whoever ``env`` names (not the local administrator)."""
    return subprocess.run(
        [sys.executable, "-m", "parley.cli", "--data", str(terminal.data), *args],
        env={**terminal.env, "PARLEY_LOCAL_ADMIN": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _actions(terminal: TerminalProcess) -> list[tuple[str, str, str, str]]:
    engine = engine_for(DataDir(terminal.data).load_config().database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(m.operator_actions).order_by(m.operator_actions.c.id))
            return [(r.operator, r.role, r.via, r.action) for r in rows]
    finally:
        engine.dispose()


def test_the_cli_acts_as_a_named_operator_with_or_without_serve(network: NetworkFactory) -> None:
    us = network(start=False)["US-EUCOM"]
    password = "a long operator password"
    for name, role in (("duty", "duty_officer"), ("sup", "supervisor"), ("aud", "auditor")):
        made = _as(
            us, "--local-admin", "user", "add", name, "--role", role, PARLEY_USER_PASSWORD=password
        )
        assert made.returncode == 0, made.stderr
    flash = ("send", "--to", "RU-GS", "--precedence", "FLASH", "--text", "Launch", "--json")

    nobody = _as(us, *flash)
    assert nobody.returncode == 2
    assert json.loads(nobody.stdout)["usage"] is True  # --json: the error on stdout
    assert "--user NAME" in json.loads(nobody.stdout)["message"]
    assert "--local-admin" in json.loads(nobody.stdout)["message"]

    wrong = _as(us, *flash, PARLEY_USER="duty", PARLEY_PASSWORD="not the password")
    assert wrong.returncode != 0
    assert "wrong name or password" in json.loads(wrong.stdout)["message"]

    held = _as(us, *flash, PARLEY_USER="duty", PARLEY_PASSWORD=password)  # no serve: the database
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout) == {"held": 1}
    refused = _as(us, *flash, PARLEY_USER="aud", PARLEY_PASSWORD=password)
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"] == "not_permitted"
    assert "an auditor cannot send" in json.loads(refused.stdout)["message"]

    us.start()
    again = _as(us, *flash, PARLEY_USER="duty", PARLEY_PASSWORD=password)  # through the API
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"held": 2}
    not_yours = _as(us, "held", "release", "2", PARLEY_USER="duty", PARLEY_PASSWORD=password)
    assert not_yours.returncode != 0
    assert "only a supervisor releases a held FLASH" in not_yours.stderr
    released = _as(us, "held", "release", "2", PARLEY_USER="sup", PARLEY_PASSWORD=password)
    assert released.returncode == 0, released.stderr
    message_id = released.stdout.strip()
    shown = json.loads(_as(us, "--local-admin", "show", message_id, "--json").stdout)
    assert shown["precedence"] == "FLASH"
    assert shown["operator"] == "duty"
    assert us.stop() == 0

    released_offline = _as(us, "held", "release", "1", PARLEY_USER="sup", PARLEY_PASSWORD=password)
    assert released_offline.returncode == 0, released_offline.stderr
    logged = [a for a in _actions(us) if a[3] in ("user_add", "hold", "release")]
    assert logged == [
        (_login(), "local_admin", "cli", "user_add"),
        (_login(), "local_admin", "cli", "user_add"),
        (_login(), "local_admin", "cli", "user_add"),
        ("duty", "duty_officer", "cli", "hold"),
        ("duty", "duty_officer", "cli", "hold"),
        ("sup", "supervisor", "cli", "release"),
        ("sup", "supervisor", "cli", "release"),
    ]


def _login() -> str:
    import getpass

    return getpass.getuser()


def test_show_and_verify_name_a_changed_column_without_showing_its_value(
    network: NetworkFactory,
) -> None:
    terminals = network(start=False)
    us = terminals["US-EUCOM"]
    sent = us.cli(
        "send", "--to", "RU-GS", "--precedence", "ROUTINE", "--text", "Hold the bridge", "--json"
    )
    message_id = json.loads(sent.stdout)["id"]
    assert "Hold the bridge" in us.cli("show", message_id).stdout
    engine = engine_for(DataDir(us.data).load_config().database)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(m.messages)
                .where(m.messages.c.envelope_id == message_id)
                .values(body=json.dumps({"text": "Blow the bridge"}))
            )
    finally:
        engine.dispose()
    shown = us.cli("show", message_id, check=False)
    assert shown.returncode == 1
    assert "DOES NOT VERIFY: body differs from the signed content" in shown.stdout
    assert "bridge" not in shown.stdout
    as_json = json.loads(us.cli("show", message_id, "--json", check=False).stdout)
    assert (as_json["verified"], as_json["body"]) == (False, None)
    audit = us.cli("verify", "--json", check=False)
    assert audit.returncode == 1
    (failure,) = json.loads(audit.stdout)["failures"]
    assert failure.startswith(f"messages row {message_id} ")
    assert failure.endswith("column body differs from the signed content")
