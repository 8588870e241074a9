"""Backups of a serving terminal under traffic, through the CLI (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from parley.config import DataDir
from parley.service.backup import RECOVERY_REQUIRED
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import (
    PASSPHRASE,
    TerminalProcess,
    make_network,
    postgres_database,
    wait_until,
)
from tests.service.conftest import POSTGRES_ADMIN, NetworkFactory

# Real `parley serve` processes and the CLI.
pytestmark = pytest.mark.subprocess


def _cli(*args: str, passphrase: str = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARLEY_PASSPHRASE": passphrase, "PARLEY_LOCAL_ADMIN": "1"}
    env.pop("PARLEY_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "parley.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _table(data: Path, table: Any, *columns: str) -> list[tuple[Any, ...]]:
    engine = engine_for(DataDir(data).load_config().database)
    try:
        with engine.connect() as conn:
            cols = [table.c[c] for c in columns]
            return [tuple(r) for r in conn.execute(select(*cols).order_by(cols[0]))]
    finally:
        engine.dispose()


class Traffic:
    """US-EUCOM sends to RU-GS through its operator API until stopped."""

    def __init__(self, us: TerminalProcess) -> None:
        self.us = us
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = [{"to": ["RU-GS"], "text": f"under traffic {self.sent + i}"} for i in range(5)]
            self.us.api("POST", "/messages/batch", {"messages": batch})
            self.sent += len(batch)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_backup_taken_under_traffic_restores_what_was_there_and_verifies(
    network: NetworkFactory, backend: str, tmp_path: Path
) -> None:
    terminals = network()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    traffic = Traffic(us)
    try:
        wait_until(lambda: len(ru.api("GET", "/inbox")) >= 20, timeout=60, what="traffic")
        out = tmp_path / "ru.parley-backup"
        made = ru.cli("backup", "--out", str(out), "--json")
        info = json.loads(made.stdout)
        received = len(ru.api("GET", "/inbox"))
        wait_until(lambda: len(ru.api("GET", "/inbox")) > received, timeout=60, what="more traffic")
    finally:
        traffic.stop()
    print(
        f"backup of {info['log_size']} entries ({backend}): {info['seconds']} s, {info['bytes']} B"
    )

    with contextlib.ExitStack() as stack:
        restored = tmp_path / "restored"
        args = ["restore", str(out), "--data", str(restored), "--json"]
        if backend == "postgresql":
            args += ["--database", stack.enter_context(postgres_database(POSTGRES_ADMIN))]
        result = json.loads(_cli(*args).stdout)
        assert result["log_size"] == info["log_size"]
        # Exactly the log the terminal held when the backup was taken: a prefix of today's.
        live = _table(ru.data, m.log_entries, "idx", "entry")
        copy = _table(restored, m.log_entries, "idx", "entry")
        assert len(copy) == info["log_size"] < len(live)
        assert copy == live[: len(copy)]
        live_index = _table(ru.data, m.messages, "log_index", "envelope_id")
        assert _table(restored, m.messages, "log_index", "envelope_id") == [
            row for row in live_index if row[0] < len(copy)
        ]
        report = json.loads(_cli("--data", str(restored), "verify", "--json").stdout)
        assert report["ok"], report["failures"]
        assert report["entries"] == len(copy)
        settings = dict(_table(restored, m.settings, "key", "value"))
        assert settings[RECOVERY_REQUIRED] == "1"
        assert [r[1] for r in _table(restored, m.operator_actions, "id", "action")] == ["restore"]
    assert [r[1] for r in _table(ru.data, m.operator_actions, "id", "action")] == ["backup"]


def test_the_cli_refuses_a_wrong_passphrase_and_a_changed_file_in_one_line(
    tmp_path: Path,
) -> None:
    ru = make_network(tmp_path, [("RU-GS", "General Staff")])["RU-GS"]
    out = tmp_path / "ru.parley-backup"
    ru.cli("backup", "--out", str(out))
    wrong = _cli("restore", str(out), "--data", str(tmp_path / "a"), passphrase="wrong passphrase")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().count("\n") == 0
    assert "the passphrase does not open the backup" in wrong.stderr
    raw = bytearray(out.read_bytes())
    raw[-40] ^= 0x20
    out.write_bytes(bytes(raw))
    changed = _cli("restore", str(out), "--data", str(tmp_path / "b"))
    assert changed.returncode == 1
    assert "was modified or damaged" in changed.stderr
    assert not (tmp_path / "b" / "parley.toml").exists()
    # Another operator than an administrator may not take a backup.
    refused = ru.cli("--user", "nobody", "backup", "--out", str(tmp_path / "x"), check=False)
    assert refused.returncode != 0
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_parley_serve_backs_up_on_schedule_and_keeps_the_newest(tmp_path: Path) -> None:
    ru = make_network(tmp_path, [("RU-GS", "General Staff")])["RU-GS"]
    data = DataDir(ru.data)
    config = data.load_config()
    config.backup_every, config.backup_keep, config.backup_dir = "1s", 2, "scheduled"
    data.save_config(config)
    directory = ru.data / "scheduled"

    def written() -> int:
        log = (ru.data / "parley.log").read_text() if (ru.data / "parley.log").exists() else ""
        return log.count('"backup_written"')

    ru.start()
    try:
        wait_until(lambda: written() >= 4, timeout=90, what="four scheduled backups")
        files = sorted(p.name for p in directory.iterdir() if p.suffix == ".parley-backup")
        assert len(files) == 2, files
        assert all(f.startswith("RU-GS-") and f.endswith("Z.parley-backup") for f in files)
    finally:
        assert ru.stop() == 0
    assert ru.loop_violations() == []
