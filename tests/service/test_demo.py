"""``parley demo --json``: four terminals, then a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def test_demo_prints_four_ready_terminals_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley.cli", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 240
        while len(rows) < 4 and time.monotonic() < deadline:
            if selector.select(timeout=1):
                line = proc.stdout.readline()
                if not line:
                    break
                rows.append(json.loads(line))
        assert len(rows) == 4, proc.stderr.read() if proc.stderr else ""
        assert [r["party"] for r in rows] == ["US-EUCOM", "RU-GS", "UA-GS", "AE-MEDIATOR"]
        for row in rows:
            assert set(row) == {
                "party",
                "data_dir",
                "console_url",
                "peer_url",
                "username",
                "password",
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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        for row in rows:
            assert not Path(row["data_dir"]).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
