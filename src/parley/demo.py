"""``parley demo`` (``make demo``): four real terminals on this machine.

US-EUCOM, RU-GS, UA-GS and the mediator AE-MEDIATOR each run as their own
``parley serve`` process on loopback, with SQLite in a temporary directory.
The demo makes their keys, pins every pair of peers by fingerprint, sets up
the bilateral US-EUCOM/RU-GS channel and the trilateral talks channel with
the mediator (proposed by the mediator, agreed by every member), exchanges a
few messages with receipts and an acknowledgement, then prints where each
terminal's console listens and its two accounts: a duty officer (whose FLASH
waits for a supervisor's release) and a supervisor. Ctrl-C
stops every terminal cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from parley.config import DataDir
from parley.service.setup import REVOCATION_CERTIFICATE
from parley.service.terminal import utc_now
from parley.service.users import add_user
from parley.store.db import engine_for
from parley.testing.network import PASSPHRASE, TerminalProcess, make_network, wait_until

__all__ = ["PARTIES", "TALKS", "run_demo"]

PARTIES = [
    ("US-EUCOM", "United States European Command"),
    ("RU-GS", "General Staff of the Armed Forces of the Russian Federation"),
    ("UA-GS", "General Staff of the Armed Forces of Ukraine"),
    ("AE-MEDIATOR", "Mediator, United Arab Emirates"),
]
TALKS = "TRILATERAL-TALKS"
#: Each terminal's two console accounts: a duty officer (whose FLASH waits for a
#: supervisor's release) and a supervisor.
OPERATOR = "duty"
SUPERVISOR = "supervisor"


def _note(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _receipted(terminal: TerminalProcess, message_id: str, parties: list[str]) -> bool:
    receipts = terminal.api("GET", f"/messages/{message_id}")["receipts"]
    return all(p in receipts for p in parties)


def _has_channel(terminal: TerminalProcess, name: str) -> Callable[[], bool]:
    return lambda: any(c["name"] == name for c in terminal.api("GET", "/channels"))


def _cli_argv(data: Path, user: str) -> list[str]:
    """The ``parley`` command of this environment (``.venv/bin/parley`` after ``make``)."""
    here = Path(sys.executable).parent / "parley"
    program = str(here) if here.exists() else "parley"
    return [program, "--data", str(data), "--user", user]


def _cli(data: Path, user: str, password: str) -> str:
    """A CLI hint that runs as printed, in any shell, from any directory."""
    argv = " ".join(shlex.quote(a) for a in _cli_argv(data, user))
    return f"PARLEY_PASSWORD={shlex.quote(password)} {argv}"


def _doctor(data: Path) -> str:
    """``parley doctor`` for a demo terminal, with its (test) passphrase, as printed."""
    program = _cli_argv(data, OPERATOR)[0]
    argv = " ".join(shlex.quote(a) for a in (program, "--data", str(data), "doctor"))
    return f"PARLEY_PASSPHRASE={shlex.quote(PASSPHRASE)} {argv}"


def _conversation(t: dict[str, TerminalProcess], quiet: bool) -> None:
    us, ru, ua, mediator = (t[p] for p, _ in PARTIES)
    _note("Bilateral US-EUCOM / RU-GS: a FLASH notice, receipted and acknowledged…", quiet)
    flash = us.api(
        "POST",
        "/messages",
        {
            "to": ["RU-GS"],
            "precedence": "FLASH",
            "text": "Unscheduled air activity near the Baltic air boundary; requesting "
            "confirmation that it is a training flight.",
        },
        operator="maj.hale",
    )["id"]
    wait_until(lambda: _receipted(us, flash, ["RU-GS"]), timeout=60, what="RU-GS's receipt")
    ru.api("POST", f"/messages/{flash}/ack", operator="col.orlov")
    ru.api(
        "POST",
        "/messages",
        {
            "to": ["US-EUCOM"],
            "precedence": "IMMEDIATE",
            "text": "Confirmed: scheduled training flight, returning to base by 14:00Z.",
        },
        operator="col.orlov",
    )
    _note(f"Mediator proposes channel {TALKS}; every member agrees…", quiet)
    members = [p for p, _ in PARTIES]
    mediator.api("POST", "/channels", {"name": TALKS, "members": members}, operator="amb.rahman")
    for terminal in (us, ru, ua):
        wait_until(
            _has_channel(terminal, TALKS), timeout=60, what=f"the proposal at {terminal.party}"
        )
        terminal.api("POST", f"/channels/{TALKS}/agree")
    wait_until(
        lambda: all(
            c["state"] == "active" for c in mediator.api("GET", "/channels") if c["name"] == TALKS
        ),
        timeout=60,
        what="every member's agreement",
    )
    agenda = mediator.api(
        "POST",
        "/messages",
        {
            "to": [p for p in members if p != "AE-MEDIATOR"],
            "channel": TALKS,
            "precedence": "PRIORITY",
            "text": "Agenda for the next round: prisoner exchange lists; ceasefire "
            "monitoring along the line of contact.",
        },
        operator="amb.rahman",
    )["id"]
    wait_until(
        lambda: _receipted(mediator, agenda, ["US-EUCOM", "RU-GS", "UA-GS"]),
        timeout=60,
        what="receipts from every member",
    )
    _note("A formatted meeting request on the talks channel, readable in en/ru/uk…", quiet)
    start = (utc_now() + timedelta(days=3)).replace(hour=9, minute=0, second=0, microsecond=0)
    meeting = mediator.api(
        "POST",
        "/messages",
        {
            "to": [p for p in members if p != "AE-MEDIATOR"],
            "channel": TALKS,
            "precedence": "PRIORITY",
            "form": "MEETING_REQUEST",
            "data": {
                "proposed_times": [
                    {
                        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "end": (start + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ],
                "medium": "in_person",
                "location": "Istanbul",
                "agenda": ["Exchange of lists of prisoners of war", "Repatriation of remains"],
            },
        },
        operator="amb.rahman",
    )["id"]
    wait_until(
        lambda: _receipted(mediator, meeting, ["US-EUCOM", "RU-GS", "UA-GS"]),
        timeout=60,
        what="receipts for the meeting request",
    )


def run_demo(*, as_json: bool = False, directory: Path | None = None) -> None:
    """Run the four-terminal demo until Ctrl-C (or SIGTERM)."""
    quiet = as_json
    with contextlib.ExitStack() as stack:
        if directory is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parley-demo-")))
        else:
            root = directory
            root.mkdir(parents=True, exist_ok=True)
        _note(f"Making keys and pinning peers for four terminals in {root}…", quiet)
        terminals = make_network(root, PARTIES, link_test_interval=600.0)
        passwords: dict[str, str] = {}
        supervisor_passwords: dict[str, str] = {}
        for party, terminal in terminals.items():
            # A real terminal's certificate goes to the safe; a demo's is never needed.
            (terminal.data / REVOCATION_CERTIFICATE).unlink(missing_ok=True)
            engine = engine_for(DataDir(terminal.data).load_config().database)
            try:
                password = secrets.token_urlsafe(12)
                add_user(engine, OPERATOR, "duty_officer", password, now=utc_now())
                passwords[party] = password
                password = secrets.token_urlsafe(12)
                add_user(engine, SUPERVISOR, "supervisor", password, now=utc_now())
                supervisor_passwords[party] = password
            finally:
                engine.dispose()
        stack.callback(lambda: [t.stop(timeout=20) for t in terminals.values()])
        for terminal in terminals.values():
            terminal.start(wait=False)
        for terminal in terminals.values():
            terminal.wait_ready()
        _conversation(terminals, quiet)
        rows: list[dict[str, Any]] = [
            {
                "party": party,
                "data_dir": str(t.data),
                "console_url": t.console_url,
                "peer_url": t.peer_url,
                "username": OPERATOR,
                "password": passwords[party],
                "cli": _cli(t.data, OPERATOR, passwords[party]),
                "supervisor": SUPERVISOR,
                "supervisor_password": supervisor_passwords[party],
                "supervisor_cli": _cli(t.data, SUPERVISOR, supervisor_passwords[party]),
                "doctor": _doctor(t.data),
            }
            for party, t in terminals.items()
        ]
        if as_json:
            for row in rows:
                print(json.dumps(row), flush=True)
        else:
            print("\nFour terminals are running:\n")
            for row in rows:
                print(f"  {row['party']:12} console {row['console_url']}  peers {row['peer_url']}")
                print(
                    f"  {'':12} duty officer {row['username']} / {row['password']}  "
                    f"(a FLASH waits for a supervisor)"
                )
                print(f"  {'':12} supervisor   {row['supervisor']} / {row['supervisor_password']}")
                cli = row["cli"]
                print(f"  {'':12} CLI: {cli} inbox")
                print(f"  {'':12}      {row['supervisor_cli']} held list")
                print(f"  {'':12}      {cli} show ID --lang ru")
                print(f"  {'':12}      {cli} keys status")
                print(f"  {'':12}      {row['doctor']}\n")
            first = rows[0]
            print(f"{first['party']}'s keys ({first['cli']} keys status):\n", flush=True)
            shown = subprocess.run(  # noqa: S603 - our own CLI, as the hint prints it
                [*_cli_argv(Path(first["data_dir"]), OPERATOR), "keys", "status"],
                env={**os.environ, "PARLEY_PASSWORD": first["password"]},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            print(shown.stdout or shown.stderr, flush=True)
            print("Stop with Ctrl-C.", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            for terminal in terminals.values():
                if not terminal.running:
                    _note(
                        f"{terminal.party} stopped unexpectedly:\n{terminal.output()[-2000:]}",
                        False,
                    )
                    stop.set()
            stop.wait(1.0)
        _note("Stopping the terminals…", quiet)


def main() -> None:
    run_demo(as_json="--json" in sys.argv[1:])


if __name__ == "__main__":
    main()
