"""Named multi-party channels, acknowledgement deadlines and alarms, over real terminals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from parley.config import DataDir
from parley.testing.network import TerminalProcess, wait_until
from tests.service.conftest import MEDIATOR, RU, UA, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = pytest.mark.subprocess


def _receipted_by(terminal: TerminalProcess, message_id: str, parties: set[str]) -> bool:
    return parties <= set(terminal.api("GET", f"/messages/{message_id}")["receipts"])


def test_a_named_channel_is_agreed_by_every_member_before_use(network: NetworkFactory) -> None:
    terminals = network([RU, UA, MEDIATOR])
    ru, ua, mediator = terminals["RU-GS"], terminals["UA-GS"], terminals["AE-MEDIATOR"]
    mediator.cli("channel", "create", "TALKS", "--members", "RU-GS,UA-GS")

    refused = mediator.cli(
        "send",
        "--to",
        "RU-GS,UA-GS",
        "--channel",
        "TALKS",
        "--precedence",
        "ROUTINE",
        "--text",
        "too early",
        check=False,
    )
    assert refused.returncode != 0
    assert "not agreed yet" in refused.stderr

    for member in (ru, ua):
        wait_until(
            lambda member=member: any(  # type: ignore[misc]
                c["name"] == "TALKS"
                for c in json.loads(member.cli("channel", "list", "--json").stdout)
            ),
            timeout=30,
            what=f"the proposal at {member.party}",
        )
        member.cli("channel", "agree", "TALKS")

    def active() -> bool:
        channels = json.loads(mediator.cli("channel", "list", "--json").stdout)
        return any(c["name"] == "TALKS" and c["state"] == "active" for c in channels)

    wait_until(active, timeout=30, what="agreement by every member")
    sent = mediator.cli(
        "send",
        "--to",
        "RU-GS,UA-GS",
        "--channel",
        "TALKS",
        "--precedence",
        "PRIORITY",
        "--text",
        "Agenda: exchange lists",
        "--json",
    )
    message_id = json.loads(sent.stdout)["id"]
    wait_until(
        lambda: _receipted_by(mediator, message_id, {"RU-GS", "UA-GS"}),
        timeout=30,
        what="a receipt from each member",
    )
    for member in (ru, ua):
        inbox = json.loads(member.cli("inbox", "--json").stdout)
        texts = [m["body"].get("text") for m in inbox if m["channel"] == "TALKS"]
        assert texts.count("Agenda: exchange lists") == 1
    # A message on the channel must go to all its members.
    partial = mediator.cli(
        "send",
        "--to",
        "RU-GS",
        "--channel",
        "TALKS",
        "--precedence",
        "ROUTINE",
        "--text",
        "only one",
        check=False,
    )
    assert partial.returncode != 0
    assert "must go to all of them" in partial.stderr


@pytest.fixture
def alarm_log(tmp_path: Path) -> Path:
    return tmp_path / "alarms.jsonl"


def test_overdue_acknowledgement_alarms_sender_and_reminds_receiver(
    network: NetworkFactory, alarm_log: Path
) -> None:
    terminals = network(start=False)
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    for terminal in (us, ru):
        data = DataDir(terminal.data)
        config = data.load_config()
        config.ack_deadlines["FLASH"] = 1
        config.alarm_command = [
            sys.executable,
            "-c",
            f"import sys; open({str(alarm_log)!r}, 'a').write(sys.stdin.read() + '\\n')",
        ]
        data.save_config(config)
        terminal.start()
    message_id = us.api(
        "POST", "/messages", {"to": ["RU-GS"], "precedence": "FLASH", "text": "Acknowledge please"}
    )["id"]

    def alarm(terminal: TerminalProcess, kind: str) -> bool:
        return any(
            a["kind"] == kind and a["subject"] == message_id for a in terminal.api("GET", "/alarms")
        )

    wait_until(lambda: alarm(us, "ack_overdue"), timeout=30, what="the overdue alarm")
    wait_until(lambda: alarm(ru, "ack_reminder"), timeout=30, what="the reminder")
    shown = json.loads(us.cli("alarms", "--json").stdout)
    assert any(a["kind"] == "ack_overdue" and "RU-GS" in a["message"] for a in shown)

    def command_saw_it() -> bool:
        if not alarm_log.exists():
            return False
        lines = [json.loads(x) for x in alarm_log.read_text().splitlines() if x.strip()]
        return any(a["kind"] == "ack_overdue" and a["party"] == "US-EUCOM" for a in lines)

    wait_until(command_saw_it, timeout=30, what="the alarm command")
    log_lines = (us.data / "parley.log").read_text().splitlines()
    assert any('"event": "alarm"' in line and "ack_overdue" in line for line in log_lines)
