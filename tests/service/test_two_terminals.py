"""Two real terminals on loopback: send, receipt, acknowledge, witness, verify."""

from __future__ import annotations

import json

import pytest

from parley.testing.network import wait_until
from tests.service.conftest import NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = pytest.mark.subprocess


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


def test_peer_api_is_versioned_and_described_by_openapi(network: NetworkFactory) -> None:
    import httpx

    from parley.keyfile import load_identity
    from parley.service import tls
    from parley.service.terminal import CardBundle
    from parley.testing.network import PASSPHRASE

    terminals = network()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    identity = load_identity(us.data / "identity.key", PASSPHRASE)
    ru_cert = CardBundle.from_json((ru.data / "card.json").read_bytes()).tls_certificate
    with httpx.Client(verify=tls.client_context(identity, ru_cert), timeout=10) as client:
        spec = client.get(ru.peer_url + "/v1/openapi.json").json()
        health = client.get(ru.peer_url + "/v1/health").json()
    assert spec["info"]["version"] == "v1"
    assert {
        "/v1/envelopes",
        "/v1/envelopes/batch",
        "/v1/catch-up",
        "/v1/checkpoint-offers",
        "/v1/cosignatures",
    } <= set(spec["paths"])
    assert all(path.startswith("/v1/") for path in spec["paths"])
    assert health == {"party": "RU-GS", "status": "up"}
