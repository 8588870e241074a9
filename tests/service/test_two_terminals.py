"""Two real terminals on loopback: send, receipt, acknowledge, witness, verify."""

from __future__ import annotations

import json

from parley.testing.network import wait_until
from tests.service.conftest import NetworkFactory


def test_flash_message_is_receipted_acknowledged_and_verified(network: NetworkFactory) -> None:
    terminals = network()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    sent = us.cli(
        "send",
        "--to",
        "RU-GS",
        "--precedence",
        "FLASH",
        "--text",
        "Unannounced aircraft near the line of contact",
        "--json",
    )
    message_id = json.loads(sent.stdout)["id"]

    def receipted() -> bool:
        shown = us.api("GET", f"/messages/{message_id}")
        return "RU-GS" in shown["receipts"]

    wait_until(receipted, timeout=20, what="the receipt")
    inbox = json.loads(ru.cli("inbox", "--json").stdout)
    assert [m["id"] for m in inbox] == [message_id]
    assert inbox[0]["body"] == {"text": "Unannounced aircraft near the line of contact"}
    assert inbox[0]["precedence"] == "FLASH"

    ru.cli("--operator", "col.ivanov", "ack", message_id)
    wait_until(
        lambda: us.api("GET", f"/messages/{message_id}")["acks"],
        timeout=20,
        what="the acknowledgement",
    )
    shown = json.loads(us.cli("show", message_id, "--json").stdout)
    assert shown["acks"]["RU-GS"]["operator"] == "col.ivanov"
    received = json.loads(ru.cli("show", message_id, "--json").stdout)
    assert received["acknowledged_by"] == "col.ivanov"

    # Witnessing runs with the traffic: each side cosigns the other's log.
    wait_until(
        lambda: us.api("GET", "/status")["cosigned_by"].get("RU-GS"),
        timeout=20,
        what="RU-GS's cosignature",
    )
    wait_until(
        lambda: ru.api("GET", "/status")["cosigned_by"].get("US-EUCOM"),
        timeout=20,
        what="US-EUCOM's cosignature",
    )
    for terminal in (us, ru):
        assert terminal.stop() == 0
        report = json.loads(terminal.cli("verify", "--json").stdout)
        assert report["ok"], report["failures"]
        assert report["cosignatures"] >= 1
        assert report["receipts"] >= 1
