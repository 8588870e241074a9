"""Alarms, security events and evidence of equivocation: what an operator must see.

An alarm is stored, logged and handed to the terminal's alarm hook (the
server runs the configured alarm command); a hook that fails never breaks
the terminal.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from sqlalchemy import and_, insert, select, update

from parley.core.canonical import canonical_bytes
from parley.errors import Equivocation, ParleyError
from parley.service.kernel import Kernel, iso
from parley.store import models as m

__all__ = ["Alarms"]

log = structlog.get_logger("parley.terminal")


class Alarms:
    """Raise and clear alarms; keep security events and evidence of equivocation."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._alarm_lock = threading.Lock()

    def raise_alarm(
        self, kind: str, severity: str, subject: str, message: str, *, once: bool = False
    ) -> dict[str, Any] | None:
        now = self.kernel.clock()
        # One serve process owns the database: a process lock makes "once" hold
        # under concurrent failures on every backend.
        with self._alarm_lock, self.kernel.engine.begin() as conn:
            if (
                once
                and conn.execute(
                    select(m.alarms.c.id).where(
                        and_(
                            m.alarms.c.kind == kind,
                            m.alarms.c.subject == subject,
                            m.alarms.c.cleared_at.is_(None),
                        )
                    )
                ).first()
            ):
                return None
            alarm_id = conn.execute(
                insert(m.alarms).values(
                    at=now, kind=kind, severity=severity, subject=subject, message=message
                )
            ).inserted_primary_key
        alarm = {
            "id": alarm_id[0] if alarm_id else None,
            "at": iso(now),
            "kind": kind,
            "severity": severity,
            "subject": subject,
            "message": message,
            "party": self.kernel.me,
        }
        log.warning("alarm", **{k: v for k, v in alarm.items() if k != "at"})
        try:
            self.kernel.on_alarm(alarm)
        except Exception:  # an alarm hook must never break the terminal
            log.exception("alarm_hook_failed")
        return alarm

    def clear_alarms(self, kind: str, subject: str) -> None:
        with self.kernel.engine.begin() as conn:
            conn.execute(
                update(m.alarms)
                .where(
                    and_(
                        m.alarms.c.kind == kind,
                        m.alarms.c.subject == subject,
                        m.alarms.c.cleared_at.is_(None),
                    )
                )
                .values(cleared_at=self.kernel.clock())
            )

    def record_security_event(
        self, *, endpoint: str, remote: str, tls_party: str | None, error: ParleyError
    ) -> None:
        code = getattr(error, "code", type(error).__name__)
        with self.kernel.engine.begin() as conn:
            conn.execute(
                insert(m.security_events).values(
                    at=self.kernel.clock(),
                    endpoint=endpoint,
                    remote=remote,
                    tls_party=tls_party,
                    code=code,
                    # A peer's bytes may be quoted in the message: no NUL reaches the database.
                    message=str(error)[:1000].replace("\x00", "\\x00"),
                )
            )
        log.warning(
            "security_event",
            endpoint=endpoint,
            remote=remote,
            peer=tls_party,
            code=code,
            message=str(error)[:300],
        )

    def record_equivocation(self, exc: Equivocation, party: str) -> None:
        with self.kernel.engine.begin() as conn:
            conn.execute(
                insert(m.evidence).values(
                    at=self.kernel.clock(),
                    party=party,
                    message=str(exc),
                    evidence=canonical_bytes(dict(exc.evidence)).decode(),
                )
            )
        self.raise_alarm("equivocation", "critical", party, str(exc))
