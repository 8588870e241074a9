"""The CLI words each mistake once: the same line and exit code, terminal running or not.

Mistakes are made twice, against a terminal that is served (the CLI goes
through its operator API) and one that is not (the CLI works on its
database): what the operator reads and the exit code must not differ. Exit
2 is a mistake in the command, 1 anything else; ``--json`` prints the error
as a JSON object with its machine code; no class name reaches the operator.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from parley import cli
from parley.config import DataDir
from parley.console.api import create_console_app
from parley.service.terminal import CardBundle, Terminal
from parley.testing.network import PASSPHRASE, TerminalProcess, make_network

US, RU = "US-EUCOM", "RU-GS"
#: What an internal class name looks like in a message: "(UsageError)", "InvalidCard".
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+\b")


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TerminalProcess]]:
    made = make_network(tmp_path_factory.mktemp("cli-errors"), [(US, "US"), (RU, "RU")])
    yield made
    for terminal in made.values():
        terminal.kill()


@pytest.fixture(scope="module", params=["not-running", "running"])
def ru(request: pytest.FixtureRequest, terminals: dict[str, TerminalProcess]) -> TerminalProcess:
    """RU-GS's terminal, served (the CLI uses its API) or not (the CLI uses its database)."""
    terminal = terminals[RU]
    if request.param == "running":
        terminal.start()
    else:
        terminal.stop()
    return terminal


def parley(terminal: TerminalProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return terminal.cli(*args, check=False)


MISTAKES = [
    pytest.param(
        ["send", "--to", US, "--precedence", "URGENT", "--text", "hello"],
        2,
        "--precedence must be FLASH, IMMEDIATE, PRIORITY or ROUTINE, not 'URGENT'",
        id="send-precedence",
    ),
    pytest.param(
        ["show", "NO-SUCH-ID"], 2, "no message NO-SUCH-ID on this terminal", id="show-unknown"
    ),
    pytest.param(
        ["ack", "NO-SUCH-ID"], 2, "no received message NO-SUCH-ID to acknowledge", id="ack"
    ),
    pytest.param(["channel", "agree", "NOPE"], 2, "no proposed channel NOPE", id="channel-agree"),
    pytest.param(
        ["translation", "countersign", "ab" * 32],
        2,
        f"no certified translation {'ab' * 32} on this terminal",
        id="countersign-unknown",
    ),
    pytest.param(
        ["send", "--to", "XX-NOBODY", "--precedence", "ROUTINE", "--text", "hello"],
        1,
        "XX-NOBODY is not a pinned peer of RU-GS",
        id="send-unknown-peer",
    ),
]


@pytest.mark.subprocess
@pytest.mark.parametrize(("args", "code", "message"), MISTAKES)
def test_the_same_mistake_reads_the_same_running_or_not(
    ru: TerminalProcess, args: list[str], code: int, message: str
) -> None:
    result = parley(ru, *args)
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert result.stdout == ""
    assert not CLASS_NAME.search(result.stderr), result.stderr


@pytest.mark.subprocess
def test_json_gives_the_error_as_an_object_with_its_machine_code(ru: TerminalProcess) -> None:
    result = parley(ru, "show", "NO-SUCH-ID", "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "error": "usage_error",
        "culprit": "us",
        "usage": True,
        "message": "no message NO-SUCH-ID on this terminal",
    }
    refused = parley(ru, "send", "--to", US, "--precedence", "URGENT", "--text", "x", "--json")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["message"].startswith("--precedence must be")


@pytest.mark.subprocess
def test_an_unreadable_card_file_is_ours_to_fix_not_the_other_partys(
    ru: TerminalProcess, tmp_path: Path
) -> None:
    fingerprint = "1" * 60
    missing = tmp_path / "missing.card"
    result = parley(ru, "peer", "add", "--card", str(missing), "--fingerprint", fingerprint)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: the card file {missing} could not be read: No such file or directory"
    )
    garbage = tmp_path / "garbage.card"
    garbage.write_text("{not json")
    result = parley(ru, "peer", "add", "--card", str(garbage), "--fingerprint", fingerprint)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: the card file {garbage} could not be parsed as a Parley card: "
    )
    assert "other party" not in result.stderr
    assert not CLASS_NAME.search(result.stderr), result.stderr


@pytest.mark.subprocess
def test_a_fingerprint_mismatch_does_not_print_the_cards_fingerprint(
    ru: TerminalProcess, terminals: dict[str, TerminalProcess], tmp_path: Path
) -> None:
    card = tmp_path / "us.card"
    card.write_bytes(DataDir(terminals[US].data).card_file.read_bytes())
    real = CardBundle.from_json(card.read_bytes()).card.fingerprint
    wrong = real[:-1] + str((int(real[-1]) + 1) % 10)
    result = parley(ru, "peer", "add", "--card", str(card), "--fingerprint", wrong)
    assert result.returncode == 1
    assert "does not match the fingerprint read aloud" in result.stderr
    assert "check the fingerprint again with the other party" in result.stderr
    for output in (result.stdout, result.stderr):
        assert real not in output
        assert real.replace(" ", "") not in output.replace(" ", "")


# In process: the API's error answers and the CLI's reading of them ---------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    made = make_network(tmp_path, [(US, "US"), (RU, "RU")])
    terminal = Terminal.open(made[RU].data, PASSPHRASE)
    app = create_console_app(terminal, "t" * 32, hosts={"testserver"})
    yield TestClient(app, headers={"authorization": "Bearer " + "t" * 32})
    terminal.engine.dispose()


@pytest.mark.usefixtures("no_db_on_loop")
def test_the_api_answers_a_mistake_with_an_error_body(api: TestClient) -> None:
    invalid = api.post("/api/v1/messages", json={"to": [US], "precedence": "URGENT", "text": "x"})
    assert invalid.status_code == 400
    body = invalid.json()
    assert body["error"] == "invalid_request"
    assert body["usage"] is True
    assert body["message"].startswith("precedence: Input should be 'FLASH'")
    assert "'URGENT'" in body["message"]

    unknown = api.get("/api/v1/messages/NO-SUCH-ID")
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": "usage_error",
        "culprit": "us",
        "usage": True,
        "message": "no message NO-SUCH-ID on this terminal",
    }
    unauthorized = api.get("/api/v1/status", headers={"authorization": "Bearer wrong"})
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "error": "unauthorized",
        "culprit": "us",
        "usage": False,
        "message": "bad or missing token",
    }


@pytest.mark.parametrize(
    ("response", "line", "code"),
    [
        (
            httpx.Response(
                400,
                json={
                    "error": "usage_error",
                    "culprit": "us",
                    "usage": True,
                    "message": "no message X",
                },
            ),
            "no message X",
            2,
        ),
        (
            httpx.Response(
                422,
                json={
                    "error": "invalid_card",
                    "culprit": "peer",
                    "usage": False,
                    "message": "bad card",
                },
            ),
            "rejected input from the other party: bad card",
            1,
        ),
        (
            httpx.Response(401, json={"detail": {"error": "unauthorized", "message": "no"}}),
            "no",
            1,
        ),
        (httpx.Response(500, text="Internal Server Error"), "answered HTTP 500", 1),
    ],
    ids=["usage", "peer", "old-detail", "no-body"],
)
def test_the_cli_turns_an_error_answer_into_one_line_and_an_exit_code(
    response: httpx.Response, line: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.report(cli.api_error(response), as_json=False)
    assert exited.value.code == code
    printed = capsys.readouterr().err
    assert printed.startswith("error: ")
    assert line in printed
    assert len(printed.strip().splitlines()) == 1
