"""``parley doctor``: every check, passing and failing, on terminals made in this process.

The links are checked against small TLS listeners on loopback, made here with
the peer's keys (``tls.server_context``), so each way a handshake can fail is
one test: a closed port, another certificate, a peer that has not pinned us,
a peer whose clock is off. A real ``parley serve`` peer answers the same probe
in ``test_demo``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from parley import merkle
from parley.cli import app
from parley.config import DataDir
from parley.core.identity import Identity
from parley.keyfile import load_identity
from parley.service import tls
from parley.service.doctor import (
    Check,
    DoctorReport,
    LinkProbe,
    clock_check,
    expiry_check,
    link_check,
    offset_check,
    probe_link,
    run_doctor,
)
from parley.service.setup import REVOCATION_CERTIFICATE, init_terminal
from parley.service.terminal import CardBundle, Terminal, utc_now
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import free_port, postgres_database
from tests.service.conftest import POSTGRES_ADMIN

PASSPHRASE = "doctor-test-passphrase"


def _make(root: Path, party: str) -> DataDir:
    data = DataDir(root / party.lower())
    init_terminal(
        data.path,
        party=party,
        name=f"{party} terminal",
        passphrase=PASSPHRASE,
        peer_listen="127.0.0.1:0",
        console_listen="127.0.0.1:0",
        scrypt_n=2**10,
    )
    # Kept in the safe, as `parley init` asks: not beside the keys.
    (data.path / REVOCATION_CERTIFICATE).unlink()
    return data


def _pin(owner: DataDir, peer: DataDir, url: str) -> None:
    bundle = CardBundle.from_json(peer.card_file.read_bytes())
    terminal = Terminal.open(owner.path, PASSPHRASE)
    try:
        terminal.add_peer(bundle, bundle.card.fingerprint, [("primary", url)])
    finally:
        terminal.engine.dispose()


def _identity(data: DataDir) -> Identity:
    return load_identity(data.key_file, PASSPHRASE)


class Listener:
    """A TLS 1.3 listener on loopback that answers every request like a peer's health check."""

    def __init__(
        self,
        context: ssl.SSLContext,
        party: str,
        *,
        clock_offset: timedelta = timedelta(0),
        port: int | None = None,
    ) -> None:
        self.context = context
        self.party = party
        self.clock_offset = clock_offset
        self.sock = socket.create_server(("127.0.0.1", port or 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = tls_conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    body = json.dumps({"party": self.party, "status": "up"}).encode()
                    date = format_datetime(datetime.now(UTC) + self.clock_offset, usegmt=True)
                    tls_conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"date: {date}\r\ncontent-length: {len(body)}\r\n".encode()
                        + b"connection: close\r\n\r\n"
                        + body
                    )

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


@dataclass
class Pair:
    us: DataDir
    ru: DataDir
    url: str
    listen: Callable[..., Listener]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """US-EUCOM, which has pinned RU-GS with one link to a port RU-GS listens on when asked."""
    us, ru = _make(tmp_path, "US-EUCOM"), _make(tmp_path, "RU-GS")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    _pin(us, ru, url)
    _pin(ru, us, "https://127.0.0.1:9")
    listeners: list[Listener] = []

    def listen(
        identity: Identity | None = None, trusts: bytes | None = None, **kwargs: object
    ) -> Listener:
        """RU-GS's listener (or one with ``identity``), trusting ``trusts`` (default: US)."""
        trusted = (
            trusts
            if trusts is not None
            else CardBundle.from_json(us.card_file.read_bytes()).tls_certificate
        )
        context = tls.server_context(identity or _identity(ru), [trusted])
        listener = Listener(context, "RU-GS", port=port, **kwargs)  # type: ignore[arg-type]
        listeners.append(listener)
        return listener

    try:
        yield Pair(us, ru, url, listen)
    finally:
        for listener in listeners:
            listener.close()


def _doctor(data: DataDir, **kwargs: object) -> DoctorReport:
    kwargs.setdefault("passphrase", PASSPHRASE)
    kwargs.setdefault("timeout", 3.0)
    return run_doctor(data, **kwargs)  # type: ignore[arg-type]


def _by_name(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def _only_problem(report: DoctorReport, name: str, status: str = "fail") -> Check:
    """The one check that is not ok; it is ``name`` with ``status`` and says what to do."""
    problems = [c for c in report.checks if c.status != "ok"]
    assert [(c.name, c.status) for c in problems] == [(name, status)], problems
    check = problems[0]
    assert check.fix
    assert "\n" not in check.fix
    return check


# A healthy terminal ---------------------------------------------------------------


def test_a_healthy_terminal_with_a_reachable_peer_is_clean(pair: Pair) -> None:
    pair.listen()
    report = _doctor(pair.us)
    assert report.clean, [c for c in report.checks if c.status != "ok"]
    assert report.ok
    names = _by_name(report)
    for name in (
        "configuration",
        "data directory",
        "key file",
        "console token",
        "database file",
        "keys",
        "card",
        "TLS certificate",
        "database",
        "schema",
        "transcript",
        "clock",
        "link RU-GS/primary",
        "clock RU-GS",
        "peer RU-GS",
    ):
        assert name in names, name
    assert "TLS 1.3 with the pinned certificate" in names["link RU-GS/primary"].detail
    assert all(c.fix is None for c in report.checks)


def test_the_cli_prints_json_and_exits_0_or_1(pair: Pair) -> None:
    pair.listen()
    runner = CliRunner()
    env = {"PARLEY_PASSPHRASE": PASSPHRASE}
    result = runner.invoke(app, ["--data", str(pair.us.path), "doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"]
    assert body["clean"]
    assert body["counts"]["fail"] == 0
    assert {"name", "status", "detail", "fix"} == set(body["checks"][0])

    pair.us.key_file.chmod(0o644)
    result = runner.invoke(app, ["--data", str(pair.us.path), "doctor"], env=env)
    assert result.exit_code == 1
    assert "fail key file" in " ".join(result.output.split())
    assert f"→ chmod 600 {pair.us.key_file}" in result.output


# Configuration and files ----------------------------------------------------------


def test_no_data_directory_fails_and_says_how_to_make_one(tmp_path: Path) -> None:
    report = _doctor(DataDir(tmp_path / "nowhere"))
    configuration = _by_name(report)["configuration"]
    assert configuration.status == "fail"
    assert "parley --data DIR init" in (configuration.fix or "")
    assert not report.ok


def test_a_configuration_that_does_not_parse_fails(pair: Pair) -> None:
    pair.us.config_file.write_text("party = \n")
    report = _doctor(pair.us)
    configuration = _by_name(report)["configuration"]
    assert configuration.status == "fail"
    assert "not valid TOML" in configuration.detail


def test_configuration_values_that_cannot_work_fail(pair: Pair) -> None:
    config = pair.us.load_config()
    config.console_listen = "0.0.0.0:7080"
    config.alarm_command = ["/nonexistent/notify-duty-officer"]
    config.link_timeout = 0
    pair.us.save_config(config)
    pair.listen()
    report = _doctor(pair.us)
    found = [c for c in report.checks if c.name == "configuration"]
    assert [c.status for c in found] == ["fail", "fail", "fail"]
    details = " ".join(c.detail for c in found)
    assert "loopback" in details
    assert "links.timeout is 0" in details
    assert "/nonexistent/notify-duty-officer" in details


@pytest.mark.parametrize(
    ("name", "path", "mode", "fix"),
    [
        ("key file", "identity.key", 0o640, "chmod 600"),
        ("console token", "console.token", 0o604, "chmod 600"),
        ("data directory", ".", 0o777, "chmod 700"),
        ("data directory", ".", 0o770, "chmod 700"),
        ("database file", "parley.db", 0o666, "chmod go-w"),
    ],
)
def test_bad_permissions_fail(pair: Pair, name: str, path: str, mode: int, fix: str) -> None:
    pair.listen()
    target = pair.us.path / path
    target.chmod(mode)
    check = _only_problem(_doctor(pair.us), name)
    assert f"mode {mode:o}" in check.detail
    assert (check.fix or "").startswith(fix)


def test_a_directory_others_may_enter_is_a_warning(pair: Pair) -> None:
    pair.listen()
    pair.us.path.chmod(0o755)
    report = _doctor(pair.us)
    _only_problem(report, "data directory", "warn")
    assert report.ok


def test_files_of_another_user_fail(pair: Pair) -> None:
    pair.listen()
    report = _doctor(pair.us, uid=12345)
    directory = _by_name(report)["data directory"]
    assert directory.status == "fail"
    assert "not to the user running this (uid 12345)" in directory.detail
    assert "sudo -u" in (directory.fix or "")
    assert _by_name(report)["key file"].status == "fail"


def test_a_revocation_certificate_beside_the_keys_is_a_warning(pair: Pair) -> None:
    pair.listen()
    (pair.us.path / REVOCATION_CERTIFICATE).write_text("certificate\n")
    check = _only_problem(_doctor(pair.us), "revocation certificate", "warn")
    assert "safe" in (check.fix or "")


def test_a_passphrase_file_readable_by_others_fails(pair: Pair, tmp_path: Path) -> None:
    pair.listen()
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    assert _doctor(pair.us, passphrase=None, passphrase_file=secret).clean
    secret.chmod(0o644)
    _only_problem(_doctor(pair.us, passphrase=None, passphrase_file=secret), "passphrase file")
    # A pipe (--passphrase-file /dev/stdin) has no permissions of its own to check.
    read, write = os.pipe()
    try:
        os.write(write, PASSPHRASE.encode() + b"\n")
        os.close(write)
        piped = _doctor(pair.us, passphrase=None, passphrase_file=Path(f"/dev/fd/{read}"))
    finally:
        os.close(read)
    assert piped.clean, [c for c in piped.checks if c.status != "ok"]


def test_an_unwritable_backup_directory_fails(pair: Pair, tmp_path: Path) -> None:
    pair.listen()
    config = pair.us.load_config()
    config.backup_every = "6h"
    config.backup_dir = str(tmp_path / "no" / "such" / "place")
    pair.us.save_config(config)
    check = _only_problem(_doctor(pair.us), "backup directory")
    assert "cannot be made" in check.detail
    (tmp_path / "no" / "such" / "place").mkdir(parents=True)
    assert _doctor(pair.us).clean


# Keys -----------------------------------------------------------------------------


def test_a_wrong_passphrase_fails(pair: Pair) -> None:
    pair.listen()
    report = _doctor(pair.us, passphrase="not-the-passphrase")
    keys = _by_name(report)["keys"]
    assert keys.status == "fail"
    assert "passphrase does not open" in keys.detail
    assert "--passphrase-file" in (keys.fix or "")


def test_without_a_passphrase_the_keys_and_handshakes_are_not_checked(pair: Pair) -> None:
    pair.listen()
    report = _doctor(pair.us, passphrase=None)
    names = _by_name(report)
    assert names["keys"].status == "warn"
    assert "not checked" in names["keys"].detail
    link = names["link RU-GS/primary"]
    assert link.status == "warn"
    assert "TLS handshake was not tried" in link.detail
    assert report.ok


def test_a_damaged_key_file_fails(pair: Pair) -> None:
    pair.listen()
    pair.us.key_file.write_bytes(b"{}")
    pair.us.key_file.chmod(0o600)
    report = _doctor(pair.us)
    keys = _by_name(report)["keys"]
    assert keys.status == "fail"
    assert "restore" in (keys.fix or "")


def test_a_key_file_of_another_card_fails(pair: Pair) -> None:
    pair.listen()
    pair.us.card_file.write_bytes(pair.ru.card_file.read_bytes())
    report = _doctor(pair.us)
    assert _by_name(report)["card"].status == "fail"
    assert "card of RU-GS" in _by_name(report)["card"].detail


@pytest.mark.parametrize(
    ("days_before_end", "status"),
    [(60, "warn"), (20, "warn"), (5, "fail"), (-1, "fail")],
)
def test_own_card_and_certificate_near_or_past_their_end(
    pair: Pair, days_before_end: int, status: str
) -> None:
    card = CardBundle.from_json(pair.us.card_file.read_bytes()).card
    moment = card.valid_until - timedelta(days=days_before_end)
    report = _doctor(pair.us, clock=lambda: moment)
    names = _by_name(report)
    assert names["card"].status == status
    assert names["TLS certificate"].status == status
    assert "parley keys rotate" in (names["card"].fix or "")
    # The peer's card was made at the same time: it ends with ours.
    assert names["peer RU-GS"].status == status
    assert "ask RU-GS for its new card" in (names["peer RU-GS"].fix or "")


def test_a_card_not_yet_valid_fails_and_names_the_clock(pair: Pair) -> None:
    card = CardBundle.from_json(pair.us.card_file.read_bytes()).card
    moment = card.valid_from - timedelta(days=1)
    check = _by_name(_doctor(pair.us, clock=lambda: moment))["card"]
    assert check.status == "fail"
    assert "clock" in (check.fix or "")


@pytest.mark.parametrize(
    ("left", "status"),
    [
        (timedelta(days=400), "ok"),
        (timedelta(days=89), "warn"),
        (timedelta(days=7), "fail"),
        (timedelta(seconds=-1), "fail"),
    ],
)
def test_expiry_follows_the_alarm_thresholds(left: timedelta, status: str) -> None:
    now = datetime(2026, 2, 5, tzinfo=UTC)
    check = expiry_check(
        "card", "the card", now - timedelta(days=1), now + left, now, renew="renew it"
    )
    assert check.status == status
    assert (check.fix is None) == (status == "ok")


# Database --------------------------------------------------------------------------


def _set_revision(data: DataDir, revision: str) -> None:
    engine = engine_for(data.load_config().database)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_a_database_behind_the_migrations_fails(pair: Pair) -> None:
    pair.listen()
    _set_revision(pair.us, "0009")
    check = _only_problem(_doctor(pair.us), "schema")
    assert "revision 0009" in check.detail
    assert "parley serve" in (check.fix or "")
    assert "parley backup" in (check.fix or "")


def test_a_database_of_a_newer_parley_fails(pair: Pair) -> None:
    pair.listen()
    _set_revision(pair.us, "0099")
    check = _only_problem(_doctor(pair.us), "schema")
    assert "newer Parley" in check.detail


def test_a_missing_database_file_fails_and_is_not_created(pair: Pair) -> None:
    database = pair.us.sqlite_file
    database.unlink()
    report = _doctor(pair.us)
    assert _by_name(report)["database"].status == "fail"
    assert _by_name(report)["database file"].status == "fail"
    assert not database.exists()


@pytest.mark.postgres
def test_a_terminal_on_postgresql_is_checked_alike(tmp_path: Path) -> None:
    with postgres_database(POSTGRES_ADMIN) as url:
        data = DataDir(tmp_path / "us")
        init_terminal(
            data.path,
            party="US-EUCOM",
            name="US",
            passphrase=PASSPHRASE,
            database=url,
            scrypt_n=2**10,
        )
        (data.path / REVOCATION_CERTIFICATE).unlink()
        report = _doctor(data)
        assert report.clean, [c for c in report.checks if c.status != "ok"]
        assert "database file" not in _by_name(report)
        assert _by_name(report)["database"].detail.endswith(" answers")
        _set_revision(data, "0008")
        assert _only_problem(_doctor(data), "schema").status == "fail"


@pytest.mark.postgres
def test_an_unreachable_postgresql_server_fails_quickly(pair: Pair) -> None:
    config = pair.us.load_config()
    config.database = f"postgresql://parley:s3cret@127.0.0.1:{free_port()}/parley"
    pair.us.save_config(config)
    check = _by_name(_doctor(pair.us, timeout=1.0))["database"]
    assert check.status == "fail"
    assert "s3cret" not in check.detail
    assert "PostgreSQL server" in (check.fix or "")


def _send_and_checkpoint(pair: Pair) -> None:
    """US-EUCOM sends a message and signs a checkpoint of its log for RU-GS."""
    us = Terminal.open(pair.us.path, PASSPHRASE)
    ru = Terminal.open(pair.ru.path, PASSPHRASE)
    try:
        us.send(["RU-GS"], kind="text", body={"text": "hello"}, operator="duty")
        us.offer_checkpoint(ru.checkpoint_request("US-EUCOM"), tls_party="RU-GS")
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def test_a_log_changed_under_its_checkpoint_fails(pair: Pair) -> None:
    pair.listen()
    _send_and_checkpoint(pair)
    report = _doctor(pair.us)
    assert "hash to the checkpoint" in _by_name(report)["transcript"].detail
    # An insider changes one byte of the first entry, and its stored leaf hash to match.
    engine = engine_for(pair.us.load_config().database)
    try:
        with engine.begin() as conn:
            entry = bytearray(
                conn.execute(
                    select(m.log_entries.c.entry).where(m.log_entries.c.idx == 0)
                ).scalar_one()
            )
            entry[-2] ^= 1
            conn.execute(
                update(m.log_entries)
                .where(m.log_entries.c.idx == 0)
                .values(entry=bytes(entry), leaf=merkle.leaf_hash(bytes(entry)))
            )
    finally:
        engine.dispose()
    check = _only_problem(_doctor(pair.us), "transcript")
    assert "does not hash to this terminal's own checkpoint" in check.detail
    assert "parley verify" in (check.fix or "")


def test_a_frozen_terminal_fails(pair: Pair) -> None:
    pair.listen()
    engine = engine_for(pair.us.load_config().database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO settings (key, value) VALUES ('recovery_required', '1')")
            )
    finally:
        engine.dispose()
    check = _only_problem(_doctor(pair.us), "recovery")
    assert "parley recover" in (check.fix or "")


# The clock --------------------------------------------------------------------------


def test_a_clock_behind_the_records_fails(pair: Pair) -> None:
    pair.listen()
    _send_and_checkpoint(pair)
    now = utc_now()
    assert clock_check(now, now, timedelta(minutes=10)).status == "ok"
    assert clock_check(now, now - timedelta(minutes=1), timedelta(minutes=10)).status == "warn"
    report = _doctor(pair.us, clock=lambda: now - timedelta(hours=1))
    clock = _by_name(report)["clock"]
    assert clock.status == "fail"
    assert "went back" in clock.detail
    assert "NTP" in (clock.fix or "")


def test_a_peer_clock_far_off_fails(pair: Pair) -> None:
    pair.listen(clock_offset=timedelta(minutes=30))
    check = _only_problem(_doctor(pair.us), "clock RU-GS")
    assert "30 min ahead of" in check.detail
    skew = timedelta(minutes=10)
    assert offset_check("RU-GS", timedelta(seconds=30), skew).status == "warn"
    assert offset_check("RU-GS", timedelta(seconds=-1), skew).status == "ok"


# Links ------------------------------------------------------------------------------


def test_an_unreachable_link_fails(pair: Pair) -> None:
    check = _only_problem(_doctor(pair.us), "link RU-GS/primary")
    assert "cannot be reached" in check.detail
    assert "serves at" in (check.fix or "")


def test_a_listener_with_another_certificate_fails(pair: Pair) -> None:
    pair.listen(identity=Identity.generate("RU-GS", "impostor", now=utc_now()))
    check = _only_problem(_doctor(pair.us), "link RU-GS/primary")
    assert "does not present RU-GS's pinned certificate" in check.detail


def test_a_peer_that_has_not_pinned_us_refuses_our_certificate(pair: Pair) -> None:
    stranger = tls.certificate_for(Identity.generate("UA-GS", "other", now=utc_now()))
    pair.listen(trusts=stranger)
    check = _only_problem(_doctor(pair.us), "link RU-GS/primary")
    assert "refused this terminal's certificate" in check.detail
    assert "parley fingerprint" in (check.fix or "")


def test_a_peer_that_does_not_answer_in_time_fails_within_the_timeout(pair: Pair) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks TLS
    try:
        port = silent.getsockname()[1]
        probe = probe_link(f"https://127.0.0.1:{port}", _client_context(pair), 0.5)
    finally:
        silent.close()
    assert probe.stage == "tls"
    assert probe.error == "no answer within the timeout"


def _client_context(pair: Pair) -> ssl.SSLContext:
    ru = CardBundle.from_json(pair.ru.card_file.read_bytes()).tls_certificate
    return tls.client_context(_identity(pair.us), ru)


def test_link_check_covers_every_stage() -> None:
    url = "https://127.0.0.1:7443"
    for stage, status in [
        ("address", "fail"),
        ("connect", "fail"),
        ("tcp", "warn"),
        ("certificate", "fail"),
        ("tls", "fail"),
        ("refused", "fail"),
        ("http", "fail"),
    ]:
        probe = LinkProbe(stage, "why", rtt_ms=1.0)  # type: ignore[arg-type]
        check = link_check("RU-GS", "primary", url, probe)
        assert check.status == status, stage
        assert check.fix
        assert "\n" not in check.fix
    answered = LinkProbe("ok", rtt_ms=3.0, status=200, party="UA-GS")
    assert link_check("RU-GS", "primary", url, answered).status == "fail"
    answered = LinkProbe("ok", rtt_ms=3.0, status=200, party="RU-GS")
    assert link_check("RU-GS", "primary", url, answered).status == "ok"
    assert probe_link("http://127.0.0.1:1", None, 1.0).stage == "address"
