"""``parley demo --json``: four terminals, then a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

# Runs `parley demo`, which starts four `parley serve` processes.
pytestmark = pytest.mark.subprocess


def _as_printed(
    command: str, home: Path, env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A command the demo printed, run as printed: a plain shell, another directory."""
    return subprocess.run(
        ["/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
        cwd=home,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), **(env or {})},
    )


def test_demo_prints_four_ready_terminals_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    errors = tmp_path / "demo.err"
    with open(errors, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley.cli", "demo", "--json"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 300
        while len(rows) < 4 and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                rows.append(json.loads(lines.get(timeout=1)))
        assert len(rows) == 4, errors.read_text()[-3000:]
        assert [r["party"] for r in rows] == ["US-EUCOM", "RU-GS", "UA-GS", "AE-MEDIATOR"]
        for row in rows:
            assert set(row) == {
                "party",
                "data_dir",
                "console_url",
                "peer_url",
                "username",
                "password",
                "cli",
                "supervisor",
                "supervisor_password",
                "supervisor_cli",
                "doctor",
            }
            status = httpx.get(
                row["console_url"] + "/api/v1/status",
                auth=(row["username"], row["password"]),
                timeout=10,
            )
            assert status.status_code == 200
            assert status.json()["party"] == row["party"]
            refused = httpx.get(
                row["console_url"] + "/api/v1/status",
                auth=(row["username"], "wrong password"),
                timeout=10,
            )
            assert refused.status_code == 401
        # Two accounts on each terminal: the duty officer's FLASH waits for the supervisor.
        us = rows[0]
        held = httpx.post(
            us["console_url"] + "/api/v1/messages",
            json={"to": ["RU-GS"], "precedence": "FLASH", "text": "Drill: hold this FLASH."},
            auth=(us["username"], us["password"]),
            timeout=10,
        )
        assert held.status_code == 202, held.text
        waiting = _as_printed(us["supervisor_cli"] + " held list --json", tmp_path).stdout
        assert [h["id"] for h in json.loads(waiting)] == [held.json()["held"]]
        mediator = rows[3]
        channels = httpx.get(
            mediator["console_url"] + "/api/v1/channels",
            auth=(mediator["username"], mediator["password"]),
            timeout=10,
        ).json()
        talks = [c for c in channels if c["name"] == "TRILATERAL-TALKS"]
        assert talks
        assert talks[0]["state"] == "active"
        assert len(talks[0]["members"]) == 4
        ru = rows[1]
        inbox = httpx.get(
            ru["console_url"] + "/api/v1/inbox",
            auth=(ru["username"], ru["password"]),
            timeout=10,
        ).json()
        forms = [m for m in inbox if m["kind"] == "form"]
        assert [f["body"]["form"]["name"] for f in forms] == ["MEETING_REQUEST"]
        assert forms[0]["rejection"] is None
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "parley.cli",
                "--data",
                ru["data_dir"],
                "--user",
                ru["username"],
                "show",
                forms[0]["id"],
                "--lang",
                "ru",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PARLEY_PASSWORD": ru["password"]},
        ).stdout
        assert "Предложение о встрече" in shown
        # The CLI hint runs as printed, from another directory, in a plain shell.
        keys = _as_printed(rows[0]["cli"] + " keys status --json", tmp_path).stdout
        status = json.loads(keys)
        assert status["card"]["party"] == "US-EUCOM"
        assert {p["party"] for p in status["peers"]} == {"RU-GS", "UA-GS", "AE-MEDIATOR"}
        # `parley doctor`, as printed, finds every demo terminal clean: its keys open,
        # every link answers a TLS handshake with the pinned certificates, the clocks agree.
        source = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
        for row in rows:
            doctor = _as_printed(row["doctor"] + " --json", tmp_path, source, check=False)
            assert doctor.returncode == 0, doctor.stdout + doctor.stderr
            report = json.loads(doctor.stdout)
            assert report["clean"], [c for c in report["checks"] if c["status"] != "ok"]
            links = [c["name"] for c in report["checks"] if c["name"].startswith("link ")]
            assert len(links) == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        for row in rows:
            assert not Path(row["data_dir"]).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
