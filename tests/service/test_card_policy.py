"""Pinning refuses a card the terminal's policy does not accept: through the API and the CLI.

The rule lives in the application layer (``Peers.add_peer``); the operator
API and the CLI, terminal running or not, say the same thing: who broke
which rule, with the setting that holds the number.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from parley.console.api import create_console_app
from parley.core.identity import Identity
from parley.service import tls
from parley.service.terminal import CardBundle, Terminal, utc_now
from parley.testing.network import PASSPHRASE, TerminalProcess, make_network

US, RU = "US-EUCOM", "RU-GS"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
THOUSAND_YEARS = datetime(2970, 1, 1, tzinfo=UTC) - EPOCH
REFUSAL = (
    "UA-GS's card is valid for 1000 years (1970-01-01 to 2970-01-01); the most this "
    "terminal accepts is 3 years (max_card_validity_days): ask for a card with a "
    "shorter validity"
)


def _bundle(valid_from: datetime, validity: timedelta) -> CardBundle:
    identity = Identity.generate("UA-GS", "General Staff", now=valid_from, validity=validity)
    return CardBundle(identity.card, tls.certificate_for(identity))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Terminal]]:
    made = make_network(tmp_path, [(US, "US"), (RU, "RU")])
    terminal = Terminal.open(made[RU].data, PASSPHRASE)
    app = create_console_app(terminal, "t" * 32, hosts={"testserver"})
    yield TestClient(app, headers={"authorization": "Bearer " + "t" * 32}), terminal
    terminal.engine.dispose()


def _pin(client: TestClient, bundle: CardBundle) -> tuple[int, dict[str, object]]:
    answer = client.post(
        "/api/v1/peers",
        json={
            "card": json.loads(bundle.to_json()),
            "fingerprint": bundle.card.fingerprint,
            "links": [],
        },
    )
    return answer.status_code, answer.json()


@pytest.mark.usefixtures("no_db_on_loop")
def test_the_api_refuses_a_thousand_year_card_and_pins_nothing(
    api: tuple[TestClient, Terminal],
) -> None:
    client, _ = api
    status, body = _pin(client, _bundle(EPOCH, THOUSAND_YEARS))
    assert (status, body) == (
        400,
        {"error": "unacceptable_card", "culprit": "us", "usage": False, "message": REFUSAL},
    )
    status, body = _pin(client, _bundle(utc_now() + timedelta(days=2), timedelta(days=365)))
    assert status == 400
    assert "UA-GS's card begins at" in str(body["message"])
    assert "(max_clock_skew)" in str(body["message"])
    assert [p["party"] for p in client.get("/api/v1/peers").json()] == [US]
    status, body = _pin(client, _bundle(utc_now() - timedelta(days=1), timedelta(days=730)))
    assert status == 200, body
    assert sorted(p["party"] for p in client.get("/api/v1/peers").json()) == ["UA-GS", US]


def test_the_maximum_is_the_terminals_setting(api: tuple[TestClient, Terminal]) -> None:
    client, terminal = api
    terminal.config.max_card_validity_days = 365
    status, body = _pin(client, _bundle(utc_now() - timedelta(days=1), timedelta(days=730)))
    assert status == 400
    assert "valid for 2 years" in str(body["message"])
    assert "the most this terminal accepts is 1 year (max_card_validity_days)" in str(
        body["message"]
    )


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TerminalProcess]]:
    made = make_network(tmp_path_factory.mktemp("card-policy"), [(US, "US"), (RU, "RU")])
    yield made
    for terminal in made.values():
        terminal.kill()


@pytest.mark.subprocess
@pytest.mark.parametrize("running", [False, True])
def test_the_cli_refuses_it_alike_running_or_not(
    terminals: dict[str, TerminalProcess], tmp_path: Path, running: bool
) -> None:
    ru = terminals[RU]
    if running:
        ru.start()
    else:
        ru.stop()
    bundle = _bundle(EPOCH, THOUSAND_YEARS)
    card = tmp_path / "ua.card"
    card.write_bytes(bundle.to_json())
    result: subprocess.CompletedProcess[str] = ru.cli(
        "peer", "add", "--card", str(card), "--fingerprint", bundle.card.fingerprint, check=False
    )
    assert result.returncode == 1
    assert " ".join(result.stderr.split()) == f"error: {REFUSAL}"
    listed = json.loads(ru.cli("peer", "list", "--json").stdout)
    assert [p["party"] for p in listed] == [US]
