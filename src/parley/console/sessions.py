"""Console sessions: random tokens in a cookie, the state kept in the serve process.

A session ends on logout, after ``IDLE`` without a request, or ``MAXIMUM``
after login (a shift); a restart of the terminal ends every session. Only a
hash of the token is kept, and each session has its own CSRF token.

Over TLS the cookie is ``__Host-parley_session``: browsers take a cookie of
that name only from an HTTPS answer, with ``Secure``, ``Path=/`` and no
``Domain``, so it is bound to this console's exact origin and no page served
over plain HTTP, nor any other host of the domain, can set or shadow it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["COOKIE", "IDLE", "MAXIMUM", "TLS_COOKIE", "Session", "SessionStore", "cookie_name"]

COOKIE = "parley_session"
TLS_COOKIE = "__Host-parley_session"
IDLE = timedelta(minutes=30)
MAXIMUM = timedelta(hours=13)


@dataclass(slots=True)
class Session:
    operator: str
    role: str
    lang: str
    created_at: datetime
    seen_at: datetime
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


def cookie_name(tls: bool) -> str:
    """The session cookie's name on a console listener with or without TLS."""
    return TLS_COOKIE if tls else COOKIE


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, operator: str, role: str, lang: str, now: datetime) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(operator, role, lang, now, now)
        with self._lock:
            self._sessions[_key(token)] = session
        return token, session

    def get(self, token: str | None, now: datetime) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(_key(token))
            if session is None:
                return None
            if now - session.seen_at > IDLE or now - session.created_at > MAXIMUM:
                del self._sessions[_key(token)]
                return None
            session.seen_at = now
            return session

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_key(token), None)

    def end_all(self, operator: str) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.operator == operator]:
                del self._sessions[key]
