"""``parley doctor``: a terminal checks itself, and says what to do about each problem.

Each check ends ``ok``, ``warn`` (works, but needs attention) or ``fail``
(something the terminal needs is broken), with what was found and, for
every one that is not ``ok``, one line saying what to do. In order:

* configuration: ``parley.toml`` parses and its values are usable (listeners,
  database URL, times, the alarm command);
* files: the data directory belongs to the user running the check and nobody
  else may write to it; the key file, console token and passphrase file are
  readable by their owner only; the database file and the backup directory
  are writable; a revocation certificate left beside the keys;
* keys: the key file opens with the passphrase (when one is given) and holds
  the card of ``card.json``; the card and its TLS certificate are valid, and
  not within the expiry alarms' 90/30/7 days of their end;
* database: reachable, its schema at this code's newest migration, the stored
  log hashing to the last checkpoint the terminal signed (as at every start,
  ``parley.core.checkpoint.verify_log_head``), the card chains readable, and
  the terminal not frozen;
* clock: not behind the newest record the terminal wrote, and, per peer, close
  to the peer's (the ``Date`` of its answer over the link);
* links: each link's listener answers a TLS 1.3 handshake with the peer's
  pinned certificate and this terminal's own (without the passphrase: only a
  TCP connection), within a short timeout;
* peers: each pinned card and its TLS certificate valid, and not near its end.

Nothing is written: the checks read the data directory and the database (the
running ``parley serve`` keeps running) and open one connection per link. The
rules are pure functions of what was read (``config_problems``,
``access_check``, ``expiry_check``, ``schema_check``, ``clock_check``,
``link_check``, ``offset_check``); ``run_doctor`` reads and probes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cryptography import x509
from sqlalchemy import Engine, func, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError

from parley import merkle
from parley.config import (
    Config,
    DataDir,
    check_console_listen,
    parse_hostport,
)
from parley.core.checkpoint import verify_log_head
from parley.core.encoding import format_time
from parley.core.expiry import EXPIRY_THRESHOLDS
from parley.core.identity import Identity, IdentityCard
from parley.errors import (
    DamagedKeyFile,
    ParleyError,
    UnreadableFile,
    UsageError,
    VerificationError,
    WrongPassphrase,
)
from parley.keyfile import load_identity
from parley.service import console_tls, tls
from parley.service.backup import schedule_directory
from parley.service.cardchain import load_chain, load_peer_chains
from parley.service.kernel import stored_frozen, utc_now
from parley.service.peer_api import API_VERSION
from parley.service.peers import CardBundle
from parley.service.reads import Records, checked_leaves
from parley.service.setup import REVOCATION_CERTIFICATE
from parley.store import models as m
from parley.store.db import SchemaRevision, engine_for, normalize_url, reading, schema_revision

__all__ = [
    "CLOCK_WARN",
    "Check",
    "DoctorReport",
    "LinkProbe",
    "access_check",
    "clock_check",
    "config_problems",
    "console_certificate_checks",
    "expiry_check",
    "link_check",
    "offset_check",
    "probe_link",
    "run_doctor",
    "schema_check",
]

Status = Literal["ok", "warn", "fail"]

#: A clock this far from a peer's, or behind the terminal's own records, is worth a
#: warning (a clock kept by NTP is within a second); ``protocol.max_clock_skew`` fails.
CLOCK_WARN: Final = timedelta(seconds=10)
#: The most of a peer's answer read.
_MAX_ANSWER = 64 * 1024

KEY_OPTIONS: Final = "--passphrase-file FILE or PARLEY_PASSPHRASE"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: a name, ok/warn/fail, what was found, and what to do (unless ok)."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


@dataclass(slots=True)
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return all(c.status != "fail" for c in self.checks)

    @property
    def clean(self) -> bool:
        """Every check ok."""
        return all(c.status == "ok" for c in self.checks)

    def count(self, status: Status) -> int:
        return sum(1 for c in self.checks if c.status == status)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "clean": self.clean,
            "counts": {s: self.count(s) for s in ("ok", "warn", "fail")},
            "checks": [c.to_json() for c in self.checks],
        }


# Configuration ------------------------------------------------------------------


def config_problems(
    config: Config, *, which: Callable[[str], str | None] = shutil.which
) -> list[Check]:
    """What is wrong with values that parse (``Config.from_toml`` refused the rest)."""
    name = "configuration"
    edit = "edit parley.toml"
    problems: list[Check] = []
    try:
        parse_hostport(config.peer_listen, "peer.listen")
    except UsageError as exc:
        problems.append(_fail(name, str(exc), f"{edit}: peer.listen = HOST:PORT"))
    try:
        check_console_listen(
            config.console_listen, tls=config.console_tls, names=config.console_names
        )
    except UsageError as exc:
        problems.append(
            _fail(
                name,
                str(exc),
                f"{edit}: console.listen = 127.0.0.1:PORT, or console.tls = true "
                "(and console.names for a wildcard address)",
            )
        )
    try:
        normalize_url(config.database)
    except UsageError as exc:
        problems.append(
            _fail(name, str(exc), f"{edit}: database = a postgresql:// or sqlite:/// URL")
        )
    if not config.link_timeout > 0:
        problems.append(
            _fail(name, f"links.timeout is {config.link_timeout}", f"{edit}: links.timeout = 10")
        )
    if not config.link_test_interval > 0:
        problems.append(
            _fail(
                name,
                f"links.test_interval is {config.link_test_interval}",
                f"{edit}: links.test_interval = 3600",
            )
        )
    elif config.link_timeout >= config.link_test_interval:
        problems.append(
            _warn(
                name,
                f"links.timeout ({config.link_timeout:g} s) is not shorter than "
                f"links.test_interval ({config.link_test_interval:g} s)",
                f"{edit}: a timeout of seconds, a test interval of minutes or hours",
            )
        )
    if not config.max_clock_skew > 0:
        problems.append(
            _fail(
                name,
                f"protocol.max_clock_skew is {config.max_clock_skew}",
                f"{edit}: protocol.max_clock_skew = 600",
            )
        )
    for precedence, seconds in sorted(config.ack_deadlines.items()):
        if seconds <= 0:
            problems.append(
                _fail(
                    name,
                    f"ack_deadlines.{precedence} is {seconds}",
                    f"{edit}: ack_deadlines.{precedence} = seconds, more than 0",
                )
            )
    if config.alarm_command and which(config.alarm_command[0]) is None:
        problems.append(
            _fail(
                name,
                f"alarms.command runs {config.alarm_command[0]}, which is not an executable "
                "program: alarms would reach nobody outside the console",
                f"{edit}: alarms.command = the full path of an installed program, or []",
            )
        )
    return problems


def _configuration(data: DataDir) -> tuple[list[Check], Config | None]:
    if not data.config_file.exists():
        return [
            _fail(
                "configuration",
                f"{data.path} is not a Parley data directory (no parley.toml)",
                "give the terminal's directory (--data DIR or PARLEY_DATA), or create one with "
                "`parley --data DIR init`",
            )
        ], None
    try:
        config = data.load_config()
    except (UsageError, OSError, UnicodeError) as exc:
        return [
            _fail(
                "configuration",
                str(exc),
                "correct parley.toml (each setting is described at its top), or restore it "
                "from a backup",
            )
        ], None
    problems = config_problems(config)
    if problems:
        return problems, config
    return [_ok("configuration", f"{data.config_file} parses; its values are usable")], config


# Files and their permissions -------------------------------------------------------


def access_check(
    name: str,
    path: Path,
    st: os.stat_result | None,
    uid: int,
    *,
    kind: Literal["directory", "secret", "file"],
    required: bool = True,
) -> Check | None:
    """Who may read and write ``path`` (``st``: its ``os.stat``; None: it does not exist).

    A directory belongs to ``uid`` and nobody else may write to it (a warning
    when others may enter it); a secret belongs to ``uid`` and is readable by
    its owner only; a file belongs to ``uid``. None when ``path`` may be absent.
    """
    if st is None:
        if not required:
            return None
        return _fail(name, f"{path} does not exist", f"restore {path} from a backup")
    mode = stat.S_IMODE(st.st_mode)
    if kind == "directory" and not stat.S_ISDIR(st.st_mode):
        return _fail(name, f"{path} is not a directory", "give the terminal's directory (--data)")
    if st.st_uid != uid:
        return _fail(
            name,
            f"{path} belongs to uid {st.st_uid}, not to the user running this (uid {uid})",
            f"run as the user that runs the terminal (sudo -u USER parley …), or "
            f"chown that user {path}",
        )
    if kind == "directory":
        if mode & 0o022:
            return _fail(
                name,
                f"{path} is writable by {'everyone' if mode & 0o002 else 'its group'} "
                f"(mode {mode:o})",
                f"chmod 700 {path}",
            )
        if mode & 0o077:
            return _warn(
                name,
                f"others may enter {path} (mode {mode:o}): files in it are as safe as their own "
                "modes",
                f"chmod 700 {path}",
            )
        return _ok(name, f"{path} belongs to uid {uid}, mode {mode:o}")
    if kind == "secret" and mode & 0o077:
        return _fail(
            name,
            f"{path} is readable or writable by others than its owner (mode {mode:o})",
            f"chmod 600 {path}",
        )
    if kind == "file" and mode & 0o022:
        return _fail(
            name,
            f"{path} is writable by others than its owner (mode {mode:o})",
            f"chmod go-w {path}",
        )
    return _ok(name, f"{path} belongs to uid {uid}, mode {mode:o}")


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database) if parsed.database != ":memory:" else None


def _files(
    data: DataDir, config: Config | None, uid: int, passphrase_file: Path | None
) -> list[Check]:
    checks: list[Check] = []

    def add(check: Check | None) -> None:
        if check is not None:
            checks.append(check)

    add(access_check("data directory", data.path, _stat(data.path), uid, kind="directory"))
    add(access_check("key file", data.key_file, _stat(data.key_file), uid, kind="secret"))
    token = _stat(data.token_file)
    if token is None:
        checks.append(
            _warn(
                "console token",
                f"{data.token_file} does not exist: the local administrator (--local-admin) "
                "cannot act",
                f"restore {data.token_file} from a backup",
            )
        )
    else:
        add(access_check("console token", data.token_file, token, uid, kind="secret"))
    certificate = data.path / REVOCATION_CERTIFICATE
    if certificate.exists():
        checks.append(
            _warn(
                "revocation certificate",
                f"{certificate} is still beside the keys: whoever takes the data directory "
                "can revoke this terminal's card",
                f"print {certificate}, put the paper in the safe and delete the file",
            )
        )
    if passphrase_file is not None:
        found = _stat(passphrase_file)
        if found is None or stat.S_ISREG(
            found.st_mode
        ):  # not a pipe (--passphrase-file /dev/stdin)
            add(access_check("passphrase file", passphrase_file, found, uid, kind="secret"))
    if config is None:
        return checks
    with contextlib.suppress(UsageError):
        database = _sqlite_file(config.database)
        if database is not None:
            check = access_check("database file", database, _stat(database), uid, kind="file")
            if check is not None and check.status == "ok" and not os.access(database, os.W_OK):
                check = _fail(
                    "database file", f"{database} is not writable", f"chmod u+w {database}"
                )
            add(check)
    with contextlib.suppress(UsageError):
        if config.backup_interval is not None:
            checks.append(_backup_directory(schedule_directory(data, config)))
    return checks


def _backup_directory(directory: Path) -> Check:
    name = "backup directory"
    if directory.is_dir():
        if os.access(directory, os.W_OK | os.X_OK):
            return _ok(name, f"automatic backups go to {directory}, which is writable")
        return _fail(
            name,
            f"automatic backups go to {directory}, which is not writable",
            f"chmod u+w {directory}, or set backup.dir in parley.toml",
        )
    parent = directory.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return _ok(name, f"automatic backups go to {directory} (made at the first backup)")
    return _fail(
        name,
        f"automatic backups go to {directory}, which does not exist and cannot be made",
        f"mkdir -m 700 {directory}, or set backup.dir in parley.toml",
    )


# Keys, cards and certificates --------------------------------------------------


def expiry_check(
    name: str,
    whose: str,
    valid_from: datetime,
    valid_until: datetime,
    now: datetime,
    *,
    renew: str,
) -> Check:
    """A card or certificate at ``now``, by the thresholds of the ``card_expiry`` alarms
    (``parley.core.expiry``): a warning one is ``warn``, a critical one (7 days, ended)
    ``fail``; so is a start in the future."""
    end = format_time(valid_until)
    if now < valid_from:
        return _fail(
            name,
            f"{whose} is not valid before {format_time(valid_from)}",
            "check this machine's clock (NTP); if it is right, " + renew,
        )
    left = valid_until - now
    crossed = None
    for days, severity in EXPIRY_THRESHOLDS:
        if left <= timedelta(days=days):
            crossed = severity
    days = left // timedelta(days=1)
    if left <= timedelta(0):
        return _fail(name, f"{whose} expired at {end}", renew)
    if crossed is not None:
        detail = f"{whose} ends at {end}, in {days} day{'' if days == 1 else 's'}"
        return _fail(name, detail, renew) if crossed == "critical" else _warn(name, detail, renew)
    return _ok(name, f"{whose} is valid until {end} ({days} days)")


def _card_expiry(name: str, whose: str, card: IdentityCard, now: datetime, renew: str) -> Check:
    return expiry_check(name, whose, card.valid_from, card.valid_until, now, renew=renew)


def _certificate_expiry(name: str, whose: str, pem: bytes, now: datetime, renew: str) -> Check:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        return _fail(name, f"{whose} cannot be read: {exc}", renew)
    return expiry_check(
        name,
        whose,
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
        now,
        renew=renew,
    )


def console_certificate_checks(
    data: DataDir, config: Config, uid: int, now: datetime
) -> list[Check]:
    """The console's HTTPS certificate and key (``console.tls``): there, private, in date.

    The terminal's own is renewed by ``parley serve`` at start, so only one
    past its renewal date is worth a warning; the operator's is judged by the
    thresholds of the card alarms, as nobody renews it but the operator.
    """
    name = "console certificate"
    if not config.console_tls:
        return []
    try:
        certificate = console_tls.console_certificate(data, config)
    except (UsageError, UnreadableFile) as exc:
        return [_fail(name, str(exc), "correct console.tls_cert in parley.toml")]
    if certificate is None:
        return [
            _warn(
                name,
                f"{data.console_cert_file} does not exist yet: parley serve makes it at start",
                "run `parley console cert` to make it now and see the fingerprint the "
                "workstations are to trust",
            )
        ]
    whose = f"the console certificate {certificate.cert_file}"
    checks: list[Check] = []
    key = certificate.key_file
    if certificate.own:
        access = access_check("console key", key, _stat(key), uid, kind="secret")
        if access is not None:
            checks.append(access)
        renew = "restart parley serve (it makes a new one) or run `parley console cert --renew`"
        if certificate.not_after - now < console_tls.RENEW_BEFORE:
            checks.append(
                _warn(name, f"{whose} ends at {format_time(certificate.not_after)}", renew)
            )
        else:
            checks.append(_ok(name, f"{whose} is valid until {format_time(certificate.not_after)}"))
        return checks
    st = _stat(key)
    if st is None:
        checks.append(_fail("console key", f"{key} does not exist", "correct console.tls_key"))
    elif stat.S_IMODE(st.st_mode) & 0o006:
        checks.append(
            _fail(
                "console key",
                f"{key} is readable or writable by every user (mode {stat.S_IMODE(st.st_mode):o})",
                f"chmod o-rw {key}",
            )
        )
    checks.append(
        expiry_check(
            name,
            whose,
            certificate.not_before,
            certificate.not_after,
            now,
            renew="put a new certificate and key in console.tls_cert and console.tls_key, "
            "and restart parley serve",
        )
    )
    return checks


ROTATE: Final = (
    "run `parley keys rotate` (an administrator): the peers accept the new card by themselves"
)


def _keys(
    data: DataDir, config: Config, passphrase: str | None, now: datetime
) -> tuple[list[Check], CardBundle | None, Identity | None]:
    checks: list[Check] = []
    try:
        bundle = CardBundle.from_json(data.card_file.read_bytes())
    except (OSError, ParleyError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        checks.append(
            _fail(
                "card",
                f"{data.card_file} cannot be read: {detail}",
                f"restore {data.card_file} from a backup",
            )
        )
        bundle = None
    if bundle is not None:
        card = bundle.card
        if card.party != config.party:
            checks.append(
                _fail(
                    "card",
                    f"{data.card_file} is the card of {card.party}, but parley.toml says "
                    f"party = {config.party}",
                    "give the right data directory, or restore card.json from its backup",
                )
            )
        else:
            checks.append(
                _card_expiry(
                    "card", f"card version {card.version} of {card.party}", card, now, ROTATE
                )
            )
            checks.append(
                _certificate_expiry(
                    "TLS certificate",
                    f"the TLS certificate of card version {card.version}",
                    bundle.tls_certificate,
                    now,
                    ROTATE,
                )
            )
    identity = None
    pending = data.key_file.with_name(data.key_file.name + ".next")
    if pending.exists():
        checks.append(
            _warn(
                "keys",
                f"{pending} is left from a key rotation cut short",
                "start `parley serve`: it keeps the new keys if the rotation was recorded, "
                "else removes the file",
            )
        )
    if passphrase is None:
        checks.append(
            _warn(
                "keys",
                f"not checked: no passphrase was given, so whether it opens {data.key_file} "
                "(and the TLS handshakes over the links) is not known",
                f"give the passphrase ({KEY_OPTIONS}) to check the keys and the links",
            )
        )
        return checks, bundle, None
    try:
        identity = load_identity(data.key_file, passphrase)
    except WrongPassphrase as exc:
        checks.append(
            _fail(
                "keys",
                str(exc),
                f"give the passphrase the keys were saved with ({KEY_OPTIONS}); "
                "if it is lost, restore a backup whose passphrase is known",
            )
        )
        return checks, bundle, None
    except DamagedKeyFile as exc:
        checks.append(_fail("keys", str(exc), f"restore {data.key_file} from a backup"))
        return checks, bundle, None
    if bundle is not None and identity.card.key_id != bundle.card.key_id:
        checks.append(
            _fail(
                "keys",
                f"{data.key_file} holds card version {identity.card.version}, but "
                f"{data.card_file} is card version {bundle.card.version}",
                "restore the key file and card.json of the same backup",
            )
        )
    else:
        checks.append(
            _ok(
                "keys",
                f"the passphrase opens {data.key_file} (card version {identity.card.version}, "
                f"fingerprint {identity.card.fingerprint[:17]}…)",
            )
        )
    return checks, bundle, identity


# Database -----------------------------------------------------------------------


def schema_check(revision: SchemaRevision) -> Check:
    """The database's schema against this code's migrations."""
    name = "schema"
    if revision.current is None:
        return _fail(
            name,
            "the database holds no Parley schema",
            "check the database URL in parley.toml (parley init made the schema there)",
        )
    if not revision.known:
        return _fail(
            name,
            f"the database is at revision {revision.current}, made by a newer Parley (this one "
            f"knows up to {revision.head})",
            "install the Parley version that migrated it",
        )
    if not revision.is_current:
        return _fail(
            name,
            f"the database is at revision {revision.current}; this Parley's newest is "
            f"{revision.head}",
            "back it up (`parley backup`), then start `parley serve` once: it migrates the "
            "database",
        )
    return _ok(name, f"the database is at the newest migration ({revision.head})")


def _connect(config: Config, timeout: float) -> tuple[Check, Engine | None]:
    name = "database"
    try:
        database = _sqlite_file(config.database)
    except UsageError as exc:
        return _fail(name, str(exc), "edit parley.toml: database = a valid URL"), None
    if database is not None and not database.exists():
        return _fail(
            name, f"the database file {database} does not exist", "restore it from a backup"
        ), None
    engine = engine_for(config.database, connect_timeout=max(1, round(timeout)))
    where = str(database) if database is not None else _shown_url(config.database)
    try:
        with reading(engine) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        fix = (
            f"check that {database} is a readable SQLite database, or restore it from a backup"
            if database is not None
            else "check that the PostgreSQL server runs and accepts this URL and its password"
        )
        return _fail(name, f"cannot open {where}: {reason}", fix), None
    return _ok(name, f"{where} answers"), engine


def _shown_url(url: str) -> str:
    """The database URL without its password (``url`` is known to parse)."""
    return make_url(url).render_as_string(hide_password=True)


def _transcript(engine: Engine, own: IdentityCard) -> list[Check]:
    """The stored log against the last checkpoint this terminal signed, as at start-up."""
    checks: list[Check] = []
    try:
        with reading(engine) as conn:
            own = load_chain(conn, own)
            load_peer_chains(conn)
            note = conn.execute(
                select(m.checkpoints.c.note).order_by(m.checkpoints.c.size.desc()).limit(1)
            ).scalar()
        tree = merkle.MerkleLog()
        for leaf in checked_leaves(engine):
            tree.append(leaf)
        if note is None:
            detail = f"{tree.size} log entries; no checkpoint signed yet"
        else:
            checkpoint = verify_log_head(tree, note, own)
            detail = (
                f"{tree.size} log entries; they hash to the checkpoint of size "
                f"{checkpoint.size} this terminal signed"
            )
        checks.append(_ok("transcript", detail))
    except (ParleyError, VerificationError) as exc:
        checks.append(
            _fail(
                "transcript",
                str(exc),
                "run `parley verify` for the full audit; restore from a backup and "
                "`parley recover` if records were lost",
            )
        )
    frozen = stored_frozen(engine)
    if frozen is not None:
        checks.append(
            _fail(
                "recovery",
                f"the terminal is frozen: {frozen}",
                "start `parley serve`, then run `parley recover` (an administrator)",
            )
        )
    return checks


# The clock ----------------------------------------------------------------------


def clock_check(newest: datetime | None, now: datetime, max_skew: timedelta) -> Check:
    """This machine's clock against the newest time the terminal itself wrote."""
    name = "clock"
    if newest is None:
        return _ok(name, f"{format_time(now)}; no record to compare it with yet")
    behind = newest - now
    fix = (
        "set this machine's clock right and keep it so (NTP: chrony or systemd-timesyncd) "
        "before serving"
    )
    if behind > max_skew:
        return _fail(
            name,
            f"{format_time(now)} is {_span(behind)} before the newest record "
            f"({format_time(newest)}): the clock went back",
            fix,
        )
    if behind > CLOCK_WARN:
        return _warn(
            name,
            f"{format_time(now)} is {_span(behind)} before the newest record "
            f"({format_time(newest)})",
            fix,
        )
    return _ok(name, f"{format_time(now)}; the newest record is of {format_time(newest)}")


def offset_check(peer: str, offset: timedelta, max_skew: timedelta) -> Check:
    """This clock against ``peer``'s (``offset``: the peer's time minus ours)."""
    name = f"clock {peer}"
    way = "ahead of" if offset > timedelta(0) else "behind"
    detail = (
        f"{peer}'s clock is {_span(abs(offset))} {way} this one (its answer's Date)"
        if abs(offset) >= timedelta(seconds=2)
        else f"{peer}'s clock agrees with this one (to the second of its answer's Date)"
    )
    fix = (
        f"check this machine's clock (NTP); if it is right, ask {peer} to set theirs: "
        "messages further apart than protocol.max_clock_skew are refused"
    )
    if abs(offset) > max_skew:
        return _fail(name, detail, fix)
    if abs(offset) > CLOCK_WARN:
        return _warn(name, detail, fix)
    return _ok(name, detail)


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _newest_record(engine: Engine) -> datetime | None:
    with reading(engine) as conn:
        times = [
            conn.execute(select(func.max(m.log_entries.c.stored_at))).scalar(),
            conn.execute(select(func.max(m.checkpoints.c.issued_at))).scalar(),
        ]
    known = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in times if t is not None]
    return max(known, default=None)


# Links --------------------------------------------------------------------------


Stage = Literal["address", "connect", "tcp", "certificate", "tls", "refused", "http", "ok"]


@dataclass(frozen=True, slots=True)
class LinkProbe:
    """How far a connection to a link got: ``stage`` is where it stopped (``ok``: answered)."""

    stage: Stage
    error: str | None = None
    rtt_ms: float | None = None
    status: int | None = None
    party: str | None = None
    #: The peer's ``Date`` minus this clock at the middle of the request.
    offset: timedelta | None = None


def _address(url: str) -> tuple[str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"{url!r} is not an https://HOST:PORT URL")
    return parts.hostname, port or 443, parts.path.rstrip("/")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer within the timeout"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def probe_link(
    url: str,
    context: ssl.SSLContext | None,
    timeout: float,
    clock: Callable[[], datetime] = utc_now,
) -> LinkProbe:
    """Connect to a peer's listener; with ``context`` (``tls.client_context``), shake
    hands and ask ``GET /v1/health``. Each step waits at most ``timeout`` seconds."""
    try:
        host, port, prefix = _address(url)
    except UsageError as exc:
        return LinkProbe("address", str(exc))
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return LinkProbe("connect", _reason(exc))
    with contextlib.closing(sock):
        if context is None:
            return LinkProbe("tcp", rtt_ms=(time.monotonic() - started) * 1000)
        try:
            wrapped = context.wrap_socket(sock, server_hostname=None)
        except ssl.SSLCertVerificationError as exc:
            return LinkProbe("certificate", exc.verify_message or _reason(exc))
        except OSError as exc:
            return LinkProbe("tls", _reason(exc))
        with wrapped:
            request = (
                f"GET {prefix}/{API_VERSION}/health HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            asked_at, asked = clock(), time.monotonic()
            answer = b""
            try:
                wrapped.sendall(request)
                while len(answer) < _MAX_ANSWER:
                    chunk = wrapped.recv(_MAX_ANSWER)
                    if not chunk:
                        break
                    answer += chunk
            except ssl.SSLError as exc:
                # TLS 1.3: the server checks the client's certificate after the handshake
                # and says so in an alert, read here.
                return LinkProbe("refused", _reason(exc))
            except OSError as exc:
                if not answer:
                    return LinkProbe("http", _reason(exc))
            rtt = time.monotonic() - asked
            middle = asked_at + timedelta(seconds=rtt / 2)
    return _read_answer(answer, rtt * 1000, middle)


def _read_answer(answer: bytes, rtt_ms: float, middle: datetime) -> LinkProbe:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return LinkProbe("http", "the answer is not HTTP", rtt_ms=rtt_ms)
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    offset = None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        offset = parsedate_to_datetime(headers["date"]) - middle
    party = None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        party = str(json.loads(body).get("party"))
    stage: Stage = "ok" if status == 200 else "http"
    error = None if status == 200 else f"answered HTTP {status}"
    return LinkProbe(stage, error, rtt_ms=rtt_ms, status=status, party=party, offset=offset)


def link_check(
    peer: str, name: str, url: str, probe: LinkProbe, last_success: str | None = None
) -> Check:
    """What a probe of one link says, and what to do when it did not answer."""
    check = f"link {peer}/{name}"
    last = f"; it last worked at {last_success[:19]}" if last_success else ""
    if probe.stage == "address":
        return _fail(
            check,
            str(probe.error),
            f"pin {peer} again with the right --link {name}=https://HOST:PORT (`parley peer add`)",
        )
    if probe.stage == "connect":
        return _fail(
            check,
            f"{url} cannot be reached: {probe.error}{last}",
            f"check that {peer}'s terminal serves at {url} and that the network lets this "
            "host through (firewall, route)",
        )
    if probe.stage == "tcp":
        return _warn(
            check,
            f"{url} accepts connections ({probe.rtt_ms:.0f} ms); the TLS handshake was not tried "
            "without the keys",
            f"give the passphrase ({KEY_OPTIONS}) to check the handshake",
        )
    if probe.stage == "certificate":
        return _fail(
            check,
            f"the listener at {url} does not present {peer}'s pinned certificate: {probe.error}",
            f"check the link's address with {peer}; if {peer} has a new card, pin it after "
            "reading its fingerprint aloud (`parley peer add`)",
        )
    if probe.stage == "tls":
        return _fail(
            check,
            f"the TLS handshake with {url} failed: {probe.error}",
            f"check that {url} is {peer}'s peer listener (TLS 1.3, not a proxy or the console)",
        )
    if probe.stage == "refused":
        return _fail(
            check,
            f"{peer} refused this terminal's certificate: {probe.error}",
            f"{peer} has not pinned this terminal's card in use: read it the fingerprint "
            "(`parley fingerprint`) so it can run `parley peer add`",
        )
    if probe.stage == "http" or probe.party != peer:
        what = probe.error or f"answered as {probe.party!r}, not {peer}"
        return _fail(
            check,
            f"{url} shook hands but {what}",
            f"check that {url} is {peer}'s peer listener",
        )
    return _ok(
        check,
        f"{url}: TLS 1.3 with the pinned certificate, {peer} answered in {probe.rtt_ms:.0f} ms",
    )


def _links(
    records: Records,
    chains: dict[str, tuple[IdentityCard, bytes]],
    identity: Identity | None,
    timeout: float,
    clock: Callable[[], datetime],
    probe: Callable[[str, ssl.SSLContext | None, float, Callable[[], datetime]], LinkProbe],
) -> list[tuple[dict[str, Any], LinkProbe]]:
    links = [link for link in records.links() if link["peer"] in chains]
    contexts: dict[str, ssl.SSLContext | None] = {}
    for peer, (_, pems) in chains.items():
        contexts[peer] = None if identity is None else tls.client_context(identity, pems)
    if not links:
        return []

    def one(link: dict[str, Any]) -> LinkProbe:
        return probe(link["url"], contexts[link["peer"]], timeout, clock)

    with ThreadPoolExecutor(max_workers=min(8, len(links))) as pool:
        return list(zip(links, pool.map(one, links), strict=True))


def _peers(chains: dict[str, tuple[IdentityCard, bytes]], now: datetime) -> list[Check]:
    checks = []
    for peer, (card, pems) in sorted(chains.items()):
        renew = (
            f"ask {peer} for its new card (`parley keys rotate` on its side); it is accepted "
            "by itself when it chains to the pinned one"
        )
        check = _card_expiry(
            f"peer {peer}", f"{peer}'s card version {card.version}", card, now, renew
        )
        if card.revoked is not None:
            check = _fail(
                f"peer {peer}",
                f"{peer}'s card version {card.version} is revoked: {card.revoked}",
                f"pin {peer}'s next card after reading its fingerprint aloud (`parley peer add`)",
            )
        checks.append(check)
        current = pems.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
        certificate = _certificate_expiry(
            f"peer {peer} TLS", f"{peer}'s TLS certificate", current, now, renew
        )
        if certificate.status != "ok":
            checks.append(certificate)
    return checks


# Everything ---------------------------------------------------------------------


def run_doctor(
    data: DataDir,
    *,
    passphrase: str | None = None,
    passphrase_file: Path | None = None,
    timeout: float = 5.0,
    clock: Callable[[], datetime] = utc_now,
    uid: int | None = None,
    probe: Callable[
        [str, ssl.SSLContext | None, float, Callable[[], datetime]], LinkProbe
    ] = probe_link,
) -> DoctorReport:
    """Check the terminal in ``data``; the passphrase (or the file that holds it, read
    as ``parley`` reads it) is used to open the keys when given."""
    report = DoctorReport()
    checks = report.checks
    now = clock()
    uid = os.geteuid() if uid is None else uid
    found, config = _configuration(data)
    checks.extend(found)
    checks.extend(_files(data, config, uid, passphrase_file))
    if config is None:
        return report
    if passphrase is None and passphrase_file is not None:
        try:
            passphrase = passphrase_file.read_text("utf-8").rstrip("\r\n")
        except (OSError, UnicodeError) as exc:
            checks.append(
                _fail(
                    "passphrase file",
                    f"{passphrase_file} cannot be read: {_reason(exc)}",
                    f"give a readable passphrase file ({KEY_OPTIONS})",
                )
            )
    found, bundle, identity = _keys(data, config, passphrase, now)
    checks.extend(found)
    checks.extend(console_certificate_checks(data, config, uid, now))
    connected, engine = _connect(config, timeout)
    checks.append(connected)
    if engine is None:
        return report
    try:
        schema = schema_check(schema_revision(engine))
        checks.append(schema)
        if schema.status != "ok":
            return report
        if bundle is not None:
            checks.extend(_transcript(engine, bundle.card))
        checks.append(clock_check(_newest_record(engine), now, _skew(config)))
        try:
            with reading(engine) as conn:
                chains = load_peer_chains(conn)
        except ParleyError:
            chains = {}  # the transcript check named the broken chain
        if bundle is not None:
            records = Records(engine, config.party, own_card=bundle.card)
            probed = _links(records, chains, identity, timeout, clock, probe)
            offsets: dict[str, tuple[float, timedelta]] = {}
            for link, result in probed:
                checks.append(
                    link_check(
                        link["peer"], link["name"], link["url"], result, link["last_success"]
                    )
                )
                if result.offset is not None and result.rtt_ms is not None:
                    best = offsets.get(link["peer"])
                    if best is None or result.rtt_ms < best[0]:
                        offsets[link["peer"]] = (result.rtt_ms, result.offset)
            for peer, (_, offset) in sorted(offsets.items()):
                checks.append(offset_check(peer, offset, _skew(config)))
            unlinked = sorted(set(chains) - {link["peer"] for link, _ in probed})
            for peer in unlinked:
                checks.append(
                    _warn(
                        f"link {peer}",
                        f"{peer} is pinned with no link",
                        f"pin {peer} again with --link NAME=https://HOST:PORT (`parley peer add`)",
                    )
                )
        checks.extend(_peers(chains, now))
    finally:
        engine.dispose()
    return report


def _skew(config: Config) -> timedelta:
    return timedelta(seconds=max(config.max_clock_skew, 0))
