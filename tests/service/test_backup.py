"""Backups in process (SQLite): what a backup holds, what a restore writes, what is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from parley.config import Config, DataDir, parse_duration
from parley.errors import NotPermitted, UnreadableFile, UsageError, WrongPassphrase
from parley.service import backup as backup_module
from parley.service.audit import audit
from parley.service.backup import (
    MAGIC,
    RECOVERY_REQUIRED,
    BackupSchedule,
    backup_terminal,
    read_manifest,
    restore_terminal,
)
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]
ADMIN = Actor("Maj. Admin", LOCAL_ADMIN, "cli")


@dataclass
class Pair:
    us: Terminal
    ru: Terminal
    ru_path: Path

    def exchange(self, n: int) -> None:
        """``n`` texts from US-EUCOM to RU-GS, received, with their receipts back."""
        for i in range(n):
            sent = self.us.send(
                ["RU-GS"], kind="text", body={"text": f"plaintext marker {i}"}, operator="Col. S"
            )
            raw = self.us.party.transcript.entry(self.us.show(sent["id"])["log_index"])[1:]
            receipt = self.ru.receive_envelope(raw, tls_party="US-EUCOM")
            self.us.receive_receipts([receipt], peer="RU-GS")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    terminals = make_network(tmp_path / "net", PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    try:
        yield Pair(us, ru, terminals["RU-GS"].data)
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def _rows(engine: Engine, table: Any, order: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(order))]


def _setting(path: Path, key: str) -> str | None:
    engine = engine_for(DataDir(path).load_config().database)
    try:
        with engine.connect() as conn:
            value = conn.execute(select(m.settings.c.value).where(m.settings.c.key == key)).scalar()
            return None if value is None else str(value)
    finally:
        engine.dispose()


def test_a_restored_terminal_holds_exactly_the_backup_and_verifies(
    pair: Pair, tmp_path: Path
) -> None:
    pair.exchange(5)
    out = tmp_path / "ru.parley-backup"
    info = backup_terminal(pair.ru_path, out, PASSPHRASE, actor=ADMIN)
    entries = _rows(pair.ru.engine, m.log_entries, m.log_entries.c.idx)
    messages = _rows(pair.ru.engine, m.messages, m.messages.c.log_index)
    assert info.log_size == len(entries) == 10  # 5 received + 5 receipts issued
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes().startswith(MAGIC)
    # Nothing of the plaintext is readable in the file.
    assert b"SQLite format" not in out.read_bytes()
    assert b"plaintext marker" not in out.read_bytes()
    pair.exchange(2)  # after the backup: not in it

    restored = tmp_path / "restored"
    result = restore_terminal(out, restored, PASSPHRASE, operator="Maj. Admin")
    assert (result.party, result.log_size, result.backend) == ("RU-GS", 10, "sqlite")
    config = DataDir(restored).load_config()
    assert config.database.endswith(str((restored / "parley.db").resolve()))
    assert (restored / "identity.key").read_bytes() == (pair.ru_path / "identity.key").read_bytes()
    assert (restored / "identity.key").stat().st_mode & 0o777 == 0o600
    engine = engine_for(config.database)
    try:
        assert _rows(engine, m.log_entries, m.log_entries.c.idx) == entries
        assert _rows(engine, m.messages, m.messages.c.log_index) == messages
        report = audit(engine, pair.ru.identity.card)
        assert report.ok, report.failures
        with engine.connect() as conn:
            actions = conn.execute(
                select(m.operator_actions.c.action, m.operator_actions.c.operator)
            ).all()
        # The backup was recorded after the copy was taken; the restore in the copy.
        assert [tuple(a) for a in actions] == [("restore", "Maj. Admin")]
    finally:
        engine.dispose()
    assert _setting(restored, RECOVERY_REQUIRED) == "1"
    # The backup itself is in the live terminal's action log.
    with pair.ru.engine.connect() as conn:
        logged = conn.execute(
            select(m.operator_actions.c.action, m.operator_actions.c.detail)
        ).all()
    assert [a.action for a in logged] == ["backup"]
    assert json.loads(logged[0].detail)["log_size"] == 10


def test_a_restored_terminal_opens_frozen(pair: Pair, tmp_path: Path) -> None:
    pair.exchange(1)
    out = tmp_path / "ru.parley-backup"
    backup_terminal(pair.ru_path, out, PASSPHRASE)
    restore_terminal(out, tmp_path / "restored", PASSPHRASE)
    terminal = Terminal.open(tmp_path / "restored", PASSPHRASE)
    try:
        assert terminal.kernel.frozen is not None
    finally:
        terminal.engine.dispose()


def test_a_wrong_passphrase_is_refused_for_backup_and_restore(pair: Pair, tmp_path: Path) -> None:
    out = tmp_path / "ru.parley-backup"
    with pytest.raises(WrongPassphrase):
        backup_terminal(pair.ru_path, out, "not the passphrase")
    assert not out.exists()
    backup_terminal(pair.ru_path, out, PASSPHRASE)
    with pytest.raises(WrongPassphrase, match="the passphrase does not open the backup"):
        restore_terminal(out, tmp_path / "restored", "not the passphrase")
    assert not DataDir(tmp_path / "restored").exists()


@pytest.mark.parametrize("where", ["first chunk", "last chunk", "header", "cut short", "appended"])
def test_a_modified_backup_is_refused_and_restores_nothing(
    pair: Pair, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_module, "CHUNK", 4096)  # several chunks
    pair.exchange(3)
    out = tmp_path / "ru.parley-backup"
    backup_terminal(pair.ru_path, out, PASSPHRASE)
    raw = bytearray(out.read_bytes())
    header_end = len(MAGIC) + 4 + int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 4], "big")
    if where == "first chunk":
        raw[header_end + 100] ^= 1
    elif where == "last chunk":
        raw[-5] ^= 1
    elif where == "header":
        at = bytes(raw).index(b'"chunk":4096')
        raw[at : at + 12] = b'"chunk":4095'
    elif where == "cut short":
        del raw[-(4096 + 16) :]
    else:
        raw += bytes(16)
    out.write_bytes(bytes(raw))
    with pytest.raises(UnreadableFile) as caught:
        restore_terminal(out, tmp_path / "restored", PASSPHRASE)
    assert str(out) in str(caught.value)
    assert not DataDir(tmp_path / "restored").exists()
    assert not (tmp_path / "restored" / "parley.db").exists()


def test_restore_refuses_a_non_empty_directory_unless_forced(pair: Pair, tmp_path: Path) -> None:
    pair.exchange(1)
    out = tmp_path / "ru.parley-backup"
    backup_terminal(pair.ru_path, out, PASSPHRASE)
    target = tmp_path / "restored"
    restore_terminal(out, target, PASSPHRASE)
    pair.exchange(1)
    newer = tmp_path / "newer.parley-backup"
    backup_terminal(pair.ru_path, newer, PASSPHRASE)
    with pytest.raises(UsageError, match="is not empty"):
        restore_terminal(newer, target, PASSPHRASE)
    assert restore_terminal(newer, target, PASSPHRASE, force=True).log_size == 4


def test_only_an_administrator_backs_up(pair: Pair, tmp_path: Path) -> None:
    out = tmp_path / "ru.parley-backup"
    for role in ("duty_officer", "supervisor", "auditor"):
        with pytest.raises(NotPermitted, match="back up the terminal"):
            backup_terminal(pair.ru_path, out, PASSPHRASE, actor=Actor("x", role, "cli"))
    assert not out.exists()
    backup_terminal(pair.ru_path, out, PASSPHRASE, actor=Actor("adm", "admin", "cli"))
    assert read_manifest(out, PASSPHRASE)["party"] == "RU-GS"


def test_backup_settings_parse_and_round_trip() -> None:
    assert parse_duration("6h", "x") == 21600
    assert parse_duration("30m", "x") == 1800
    assert parse_duration("off", "x") is None
    assert parse_duration("2.5", "x") == 2.5
    with pytest.raises(UsageError, match="duration"):
        parse_duration("soon", "backup.every")
    config = Config("RU-GS", "General Staff", "sqlite:///x.db")
    assert config.backup_interval is None  # off by default
    config.backup_every, config.backup_keep, config.backup_dir = "6h", 3, "/var/backups/parley"
    again = Config.from_toml(config.to_toml(), "test")
    assert (again.backup_interval, again.backup_keep, again.backup_dir) == (
        21600,
        3,
        "/var/backups/parley",
    )


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(hours=6)
        return self.now


def _alarms(terminal: Terminal) -> list[tuple[str, str | None]]:
    with terminal.engine.connect() as conn:
        return [
            (r.kind, None if r.cleared_at is None else "cleared")
            for r in conn.execute(select(m.alarms).order_by(m.alarms.c.id))
        ]


def test_scheduled_backups_keep_the_newest_and_alarm_once_on_failure(
    pair: Pair, tmp_path: Path
) -> None:
    directory = tmp_path / "backups"
    schedule = BackupSchedule(
        pair.ru_path,
        PASSPHRASE,
        directory=directory,
        every=3600,
        keep=3,
        alarms=pair.ru,
        clock=_Clock(),
    )
    made = []
    for i in range(5):
        pair.exchange(1)
        info = schedule.run_once()
        assert info is not None
        made.append(info.path.name)
        assert info.log_size == 2 * (i + 1)
    assert made[0] == "RU-GS-20261205T120000Z.parley-backup"
    assert [p.name for p in schedule.kept()] == made[-3:]
    assert sorted(p.name for p in directory.iterdir()) == made[-3:]

    # A failure (the directory is a file now) raises one alarm, however often it fails.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    schedule.directory = blocked
    assert schedule.run_once() is None
    assert schedule.run_once() is None
    assert _alarms(pair.ru) == [("backup_failed", None)]
    blocked.unlink()
    assert schedule.run_once() is not None
    assert _alarms(pair.ru) == [("backup_failed", "cleared")]
