"""A full prisoner exchange, 100 persons a side, across three running terminals.

RU-GS and UA-GS each propose the persons they hold; UA-GS amends its list;
every party and the mediator sign the manifest; statuses are reported during
the exchange; the closing reconciliation is the same on all three terminals,
with the expected counts and every discrepancy. Everything goes through the
CLI (``parley exchange …``) as ordinary signed, receipted, witnessed traffic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley.testing.network import TerminalProcess, wait_until
from tests.service.conftest import MEDIATOR, RU, UA, NetworkFactory

# Real `parley serve` processes on loopback.
pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(600)]

EXCHANGE = "PX-2026-11-A"
CHANNEL = "EXCHANGE-PX"
RU_NAMES = ["Иванов Сергей Петрович", "Кузнецов Алексей Юрьевич", "Соколов Дмитрий Ильич"]
UA_NAMES = ["Шевченко Олексій Іванович", "Коваленко Юрій Григорович", "Бондаренко Євген Ігорович"]


def _persons(prefix: str, names: list[str], script: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "ref": f"{prefix}-{n:04d}",
            "name": {"full_name": f"{names[n % len(names)]}", "script": script},
            "date_of_birth": f"19{80 + n % 20}-0{1 + n % 9}-1{n % 10}",
            "rank": "sergeant" if n % 3 else "private",
            "unit": f"{100 + n % 7}th brigade",
            "document": {"type": "military_id", "number": f"{prefix}{n:06d}"},
            "status": "prisoner_of_war" if n % 10 else "wounded",
        }
        for n in range(1, count + 1)
    ]


def _report(terminal: TerminalProcess) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        terminal.cli("exchange", "report", EXCHANGE, "--json").stdout
    )
    return report


def _settled(terminals: list[TerminalProcess]) -> bool:
    return all(t.api("GET", "/status")["pending"] == 0 for t in terminals)


def test_a_prisoner_exchange_of_100_persons_a_side(network: NetworkFactory, tmp_path: Path) -> None:
    terminals = network([RU, UA, MEDIATOR])
    ru, ua, mediator = terminals["RU-GS"], terminals["UA-GS"], terminals["AE-MEDIATOR"]
    everyone = [ru, ua, mediator]

    # The mediator opens a channel of the three; each side agrees to it.
    mediator.cli("channel", "create", CHANNEL, "--members", "RU-GS,UA-GS")
    for member in (ru, ua):
        wait_until(
            lambda m=member: any(  # type: ignore[misc]
                c["name"] == CHANNEL for c in json.loads(m.cli("channel", "list", "--json").stdout)
            ),
            timeout=30,
            what=f"the channel proposal at {member.party}",
        )
        member.cli("channel", "agree", CHANNEL)
    for member in everyone:
        wait_until(
            lambda m=member: any(  # type: ignore[misc]
                c["name"] == CHANNEL and c["state"] == "active"
                for c in json.loads(m.cli("channel", "list", "--json").stdout)
            ),
            timeout=30,
            what=f"the channel active at {member.party}",
        )

    # Each side proposes the 100 persons it holds.
    ru_list = _persons("RU", RU_NAMES, "ru", 100)
    ua_list = _persons("UA", UA_NAMES, "uk", 100)
    (tmp_path / "ru.json").write_text(json.dumps(ru_list, ensure_ascii=False), "utf-8")
    (tmp_path / "ua.json").write_text(json.dumps(ua_list, ensure_ascii=False), "utf-8")
    ru.cli(
        "exchange", "propose", EXCHANGE, "--channel", CHANNEL, "--file", str(tmp_path / "ru.json")
    )
    ua.cli(
        "exchange", "propose", EXCHANGE, "--channel", CHANNEL, "--file", str(tmp_path / "ua.json")
    )

    # UA-GS amends: one person removed, two added (still 101).
    amended = [p for p in ua_list if p["ref"] != "UA-0100"] + _persons("UA2", UA_NAMES, "uk", 2)
    (tmp_path / "ua2.json").write_text(json.dumps(amended, ensure_ascii=False), "utf-8")
    wait_until(
        lambda: "UA-GS" in _report(ua)["lists"],
        timeout=30,
        what="UA-GS's first list on its own terminal",
    )
    ua.cli("exchange", "amend", EXCHANGE, "--file", str(tmp_path / "ua2.json"), "--note", "+2 −1")

    def lists_everywhere() -> bool:
        reports = [_report(t) for t in everyone]
        return (
            all(
                set(r["lists"]) == {"RU-GS", "UA-GS"} and r["lists"]["UA-GS"]["revision"] == 2
                for r in reports
            )
            and len({r["manifest"] for r in reports}) == 1
        )

    wait_until(lambda: _settled(everyone) and lists_everywhere(), timeout=60, what="both lists")
    manifest = _report(mediator)["manifest"]
    assert _report(mediator)["mediator"] == "AE-MEDIATOR"
    assert _report(mediator)["agreed"] is False

    # A stale hash is refused before anything is sent.
    stale = ru.cli("exchange", "agree", EXCHANGE, "--manifest", "0" * 64, check=False)
    assert stale.returncode != 0
    assert "no longer" in stale.stderr or "is now" in stale.stderr

    for member in everyone:
        member.cli("exchange", "agree", EXCHANGE, "--manifest", manifest)
    wait_until(
        lambda: _settled(everyone) and all(_report(t)["agreed"] for t in everyone),
        timeout=60,
        what="the manifest agreed on every terminal",
    )

    # The exchange: RU-GS hands over its 100; UA-GS receives 99 of them, one
    # declines to return; UA-GS hands over 100 of its 101 (one not present),
    # RU-GS receives them all but one, about whom the mediator disagrees.
    ru_updates = [
        {"party": "RU-GS", "ref": p["ref"], "status": "handed_over"} for p in ru_list[:99]
    ]
    ru_updates.append({"party": "RU-GS", "ref": "RU-0100", "status": "declined_to_return"})
    ua_refs = [p["ref"] for p in amended]
    ua_updates = [{"party": "UA-GS", "ref": r, "status": "handed_over"} for r in ua_refs[:100]]
    ua_updates.append({"party": "UA-GS", "ref": ua_refs[100], "status": "not_present"})
    ua_received = [{"party": "RU-GS", "ref": p["ref"], "status": "received"} for p in ru_list[:99]]
    ru_received = [{"party": "UA-GS", "ref": r, "status": "received"} for r in ua_refs[:99]]
    for who, updates, name in (
        (ru, ru_updates + ru_received, "ru-status.json"),
        (ua, ua_updates + ua_received, "ua-status.json"),
    ):
        (tmp_path / name).write_text(json.dumps(updates), "utf-8")
        who.cli("exchange", "status", EXCHANGE, "--file", str(tmp_path / name))
    # The mediator saw UA-0099 (handed over by UA-GS, not received by RU-GS) stay behind.
    mediator.cli(
        "exchange",
        "status",
        EXCHANGE,
        "--party",
        "UA-GS",
        "--ref",
        ua_refs[99],
        "--status",
        "not_present",
        "--note",
        "stayed on the bus",
    )
    wait_until(lambda: _settled(everyone), timeout=60, what="every status delivered")

    def final() -> list[dict[str, Any]]:
        return [_report(t) for t in everyone]

    wait_until(
        lambda: (
            all(len(r["discrepancies"]) >= 1 for r in final())
            and len({json.dumps(r["per_side"], sort_keys=True) for r in final()}) == 1
        ),
        timeout=60,
        what="the same reconciliation everywhere",
    )
    reports = final()
    for report in reports:
        assert report["problems"] == []
        assert report["per_side"]["RU-GS"] == {
            "listed": 100,
            "handed_over": 0,
            "received": 99,
            "not_present": 0,
            "declined_to_return": 1,
            "unresolved": 0,
        }
        # UA2-0001 (ua_refs[99]): UA-GS reports it handed over, the mediator
        # that it stayed behind, RU-GS never received it: unresolved, flagged.
        assert report["per_side"]["UA-GS"] == {
            "listed": 101,
            "handed_over": 0,
            "received": 99,
            "not_present": 1,
            "declined_to_return": 0,
            "unresolved": 1,
        }
        flagged = {(d["party"], d["ref"]) for d in report["discrepancies"]}
        assert ("UA-GS", ua_refs[99]) in flagged
        assert report["per_side"]["UA-GS"]["listed"] == sum(
            v for k, v in report["per_side"]["UA-GS"].items() if k != "listed"
        )
    assert len({json.dumps(r["discrepancies"], sort_keys=True) for r in reports}) == 1

    # The human report names the counts and the discrepancy.
    text = mediator.cli("exchange", "report", EXCHANGE).stdout
    assert "AGREED" in text
    assert ua_refs[99] in text
    # And every terminal's record still verifies.
    for terminal in everyone:
        assert terminal.stop() == 0
        verified = json.loads(terminal.cli("verify", "--json").stdout)
        assert verified["ok"] is True, verified
