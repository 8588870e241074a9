"""Key rotation and revocation between two real terminals (``parley serve`` on loopback).

The rule must hold end to end: messages sent before, during and after a
rotation are all delivered and verifiable, the peer takes the new card by
itself and shows its fingerprint, ``parley verify`` is clean on both
terminals, and a restart moves TLS to the new key. After a revocation,
whatever the revoked key still signs is refused with an alarm.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.testing.network import TerminalProcess, wait_until
from tests.service.conftest import NetworkFactory

pytestmark = pytest.mark.subprocess

US, RU = "US-EUCOM", "RU-GS"


def _send(terminal: TerminalProcess, text: str) -> str:
    sent = terminal.cli("send", "--to", RU, "--precedence", "IMMEDIATE", "--text", text, "--json")
    return str(json.loads(sent.stdout)["id"])


def _receipted(us: TerminalProcess, ids: list[str]) -> bool:
    return all(RU in us.api("GET", f"/messages/{i}")["receipts"] for i in ids)


def _alarms(terminal: TerminalProcess, kind: str) -> list[dict[str, Any]]:
    return [a for a in terminal.api("GET", "/alarms") if a["kind"] == kind]


def test_messages_flow_through_a_rotation_and_both_records_verify(
    network: NetworkFactory,
) -> None:
    terminals = network()
    us, ru = terminals[US], terminals[RU]
    ids = [_send(us, "before 1"), _send(us, "before 2")]
    rotated = json.loads(us.cli("keys", "rotate", "--json").stdout)
    assert rotated["version"] == 2
    ids += [_send(us, "after 1"), _send(us, "after 2")]
    wait_until(lambda: _receipted(us, ids), timeout=60, what="the receipts")

    shown = json.loads(ru.cli("inbox", "--json").stdout)
    inbox = {m["body"]["text"]: m for m in shown if m["kind"] == "text"}
    assert all(m["verified"] for m in shown), shown
    assert set(inbox) == {"before 1", "before 2", "after 1", "after 2"}
    assert inbox["after 2"]["signer_fingerprint"] == rotated["fingerprint"]
    assert inbox["before 1"]["signer_fingerprint"] != rotated["fingerprint"]
    (alarm,) = _alarms(ru, "card_rotated")
    assert rotated["fingerprint"] in alarm["message"]
    peers = json.loads(ru.cli("peer", "list", "--json").stdout)
    assert [(p["party"], p["card_version"]) for p in peers] == [(US, 2)]
    status = json.loads(us.cli("keys", "status", "--json").stdout)
    assert status["card"]["card_version"] == 2

    # Restarted, US-EUCOM presents its new key's TLS certificate: RU-GS trusts it too.
    assert us.stop() == 0
    us.start()
    later = [_send(us, "after restart")]
    wait_until(lambda: _receipted(us, later), timeout=60, what="the receipt after restart")
    answer = ru.cli(
        "send", "--to", US, "--precedence", "ROUTINE", "--text", "received all", "--json"
    )
    answer_id = json.loads(answer.stdout)["id"]
    wait_until(
        lambda: US in ru.api("GET", f"/messages/{answer_id}")["receipts"],
        timeout=60,
        what="RU-GS's message to the rotated terminal",
    )
    wait_until(
        lambda: ru.api("GET", "/status")["cosigned_by"].get(US),
        timeout=60,
        what="US-EUCOM's cosignature with its new key",
    )
    for terminal in (us, ru):
        assert terminal.stop() == 0
        report = json.loads(terminal.cli("verify", "--json").stdout)
        assert report["ok"], report["failures"]


def test_a_message_signed_by_a_revoked_key_is_refused_with_an_alarm(
    network: NetworkFactory,
) -> None:
    terminals = network()
    us, ru = terminals[US], terminals[RU]
    first = [_send(us, "before the compromise")]
    wait_until(lambda: _receipted(us, first), timeout=60, what="the first receipt")

    # The terminal is seized: the administrator revokes its card with the certificate
    # from the safe, and hands the revocation to RU-GS. (US-EUCOM is stopped meanwhile,
    # so that nothing it signs after the stated time reaches RU-GS before the revocation:
    # `parley verify` would rightly name such an entry.)
    assert us.stop() == 0
    certificate = us.data / "revocation-certificate.txt"
    revoked = json.loads(
        us.cli(
            "keys",
            "revoke",
            "--certificate",
            str(certificate),
            "--reason",
            "terminal seized",
            "--json",
        ).stdout
    )
    assert revoked["sent_to"] == []
    taken = json.loads(ru.cli("peer", "revocation", revoked["file"], "--json").stdout)
    assert taken["card_in_use_revoked"] is True
    assert [a["severity"] for a in _alarms(ru, "key_revoked")] == ["critical"]

    # Whatever the seized terminal still signs is refused, with one alarm.
    us.start()
    stolen = _send(us, "stand down")
    wait_until(lambda: _alarms(ru, "superseded_key"), timeout=60, what="the superseded_key alarm")
    assert RU not in us.api("GET", f"/messages/{stolen}")["receipts"]
    texts = [
        m["body"]["text"]
        for m in json.loads(ru.cli("inbox", "--json").stdout)
        if m["kind"] == "text"
    ]
    assert texts == ["before the compromise"]
    assert ru.stop() == 0
    report = json.loads(ru.cli("verify", "--json").stdout)
    assert report["ok"], report["failures"]
