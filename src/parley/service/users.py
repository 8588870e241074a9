"""Operator accounts: Argon2id password hashes, roles, lockout after failed logins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, insert, select, update

from parley.errors import UsageError
from parley.store import models as m
from parley.store.db import reading

__all__ = [
    "LOCKOUT",
    "MAX_FAILED_LOGINS",
    "ROLES",
    "Account",
    "AuthenticationFailed",
    "add_user",
    "add_user_in",
    "authenticate",
    "list_users",
    "stored_language",
    "unlock_user",
    "unlock_user_in",
]

ROLES = ("duty_officer", "supervisor", "auditor", "admin")
"""duty_officer: read, compose, acknowledge; supervisor: also FLASH release and channels;
auditor: read and verify, cannot send; admin: users, peers and links."""

MAX_FAILED_LOGINS = 3
LOCKOUT = timedelta(minutes=15)
_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_hasher = PasswordHasher()  # Argon2id with the library's current recommended parameters


class AuthenticationFailed(Exception):
    """Wrong name or password, or a locked account (the message says which to the log only)."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        #: The account exists and is locked (a correct password would not have helped).
        self.locked = locked


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: str


def add_user(engine: Engine, name: str, role: str, password: str, *, now: datetime) -> Account:
    with engine.begin() as conn:
        return add_user_in(conn, name, role, password, now=now)


def add_user_in(conn: Connection, name: str, role: str, password: str, *, now: datetime) -> Account:
    """``add_user`` inside a caller's transaction."""
    if not _NAME.match(name):
        raise UsageError(
            "an operator name is lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 12:
        raise UsageError("an operator password must be at least 12 characters")
    if conn.execute(select(m.users.c.name).where(m.users.c.name == name)).first():
        raise UsageError(f"operator {name} already exists")
    conn.execute(
        insert(m.users).values(
            name=name,
            role=role,
            password_hash=_hasher.hash(password),
            created_at=now,
            failed_logins=0,
        )
    )
    return Account(name, role)


def list_users(engine: Engine, *, now: datetime | None = None) -> list[dict[str, object]]:
    """Every account; ``locked`` is whether it is locked now (ever locked, without ``now``)."""
    with reading(engine) as conn:
        rows = conn.execute(select(m.users).order_by(m.users.c.name)).all()
    result: list[dict[str, object]] = []
    for r in rows:
        until = r.locked_until
        if until is not None and until.tzinfo is None and now is not None:
            until = until.replace(tzinfo=now.tzinfo)
        locked = until is not None and (now is None or until > now)
        result.append(
            {
                "name": r.name,
                "role": r.role,
                "locked": locked,
                "locked_until": until.isoformat() if locked and until is not None else None,
                "lang": r.lang,
            }
        )
    return result


def stored_language(engine: Engine, name: str) -> str | None:
    """The console language an operator chose last (None if never chosen or no such account)."""
    with reading(engine) as conn:
        lang = conn.execute(select(m.users.c.lang).where(m.users.c.name == name)).scalar()
    return None if lang is None else str(lang)


def unlock_user(engine: Engine, name: str) -> None:
    """Lift a lockout (an administrator's decision) and reset the failure count."""
    with engine.begin() as conn:
        unlock_user_in(conn, name)


def unlock_user_in(conn: Connection, name: str) -> None:
    """``unlock_user`` inside a caller's transaction."""
    done = conn.execute(
        update(m.users).where(m.users.c.name == name).values(locked_until=None, failed_logins=0)
    ).rowcount
    if not done:
        raise UsageError(f"no operator {name}")


def authenticate(engine: Engine, name: str, password: str, *, now: datetime) -> Account:
    """Check a password; lock the account for ``LOCKOUT`` after ``MAX_FAILED_LOGINS`` failures."""
    failure: str | None = None
    locked_now = False
    with engine.begin() as conn:  # committed even when the login fails (the counter must stick)
        row = conn.execute(select(m.users).where(m.users.c.name == name)).first()
        if row is None:
            _hasher.hash(password)  # spend the same time as for a real account
            failure = f"no operator {name}"
        else:
            locked = row.locked_until
            if locked is not None and locked.tzinfo is None:
                locked = locked.replace(tzinfo=now.tzinfo)
            if locked is not None and locked > now:
                failure = f"operator {name} is locked until {locked.isoformat()}"
                locked_now = True
            else:
                try:
                    _hasher.verify(row.password_hash, password)
                except (VerificationError, InvalidHashError):
                    failures = row.failed_logins + 1
                    values: dict[str, object] = {"failed_logins": failures}
                    if failures >= MAX_FAILED_LOGINS:
                        values = {"failed_logins": 0, "locked_until": now + LOCKOUT}
                    conn.execute(update(m.users).where(m.users.c.name == name).values(**values))
                    failure = f"wrong password for {name}"
                else:
                    if row.failed_logins or row.locked_until is not None:
                        conn.execute(
                            update(m.users)
                            .where(m.users.c.name == name)
                            .values(failed_logins=0, locked_until=None)
                        )
    if failure is not None or row is None:
        raise AuthenticationFailed(failure or "login failed", locked=locked_now)
    return Account(row.name, row.role)
