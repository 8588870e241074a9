"""Alarms, security events and evidence of equivocation: what an operator must see.

An alarm is stored, logged and handed to the terminal's alarm hook (the
server runs the configured alarm command); a hook that fails never breaks
the terminal.

One incident, one alarm: repeated evidence of the same incident (same kind
and subject, while its alarm is open) updates that alarm's ``count`` and
``last_at`` and does not run the hook again. Evidence of equivocation or
rollback is kept once per distinct pair of checkpoint notes
(``evidence.pair``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, and_, insert, select, update

from parley.core.canonical import canonical_bytes
from parley.errors import CheckpointRollback, Equivocation, ParleyError
from parley.service.kernel import Kernel, iso
from parley.store import models as m

__all__ = ["Alarms", "evidence_pair"]

log = structlog.get_logger("parley.terminal")


def evidence_pair(first: str, second: str) -> str:
    """SHA-256 (hex) naming a pair of checkpoint notes, whichever order they came in."""
    a, b = sorted((first, second))
    return hashlib.sha256(a.encode() + b"\n\x00\n" + b.encode()).hexdigest()


def clear_open_alarms(conn: Connection, kind: str, subject: str, now: datetime) -> None:
    """Clear the open alarms of one kind and subject, in the caller's transaction."""
    conn.execute(
        update(m.alarms)
        .where(
            and_(
                m.alarms.c.kind == kind,
                m.alarms.c.subject == subject,
                m.alarms.c.cleared_at.is_(None),
            )
        )
        .values(cleared_at=now)
    )


class Alarms:
    """Raise and clear alarms; keep security events and evidence of equivocation."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._alarm_lock = threading.Lock()

    def raise_alarm(
        self,
        kind: str,
        severity: str,
        subject: str,
        message: str,
        *,
        once: bool = False,
        count: int = 1,
    ) -> dict[str, Any] | None:
        """Store, log and hand over an alarm; returns it, or None when it only repeated.

        With ``once`` the alarm names an incident: while an alarm of the same
        kind and subject is open, a repetition only counts (``count``,
        ``last_at``) and the hook is not run again.
        """
        now = self.kernel.clock()
        # One serve process owns the database: a process lock makes "once" hold
        # under concurrent failures on every backend.
        with self._alarm_lock, self.kernel.engine.begin() as conn:
            if once:
                open_id = conn.execute(
                    select(m.alarms.c.id)
                    .where(
                        and_(
                            m.alarms.c.kind == kind,
                            m.alarms.c.subject == subject,
                            m.alarms.c.cleared_at.is_(None),
                        )
                    )
                    .order_by(m.alarms.c.id)
                    .limit(1)
                ).scalar()
                if open_id is not None:
                    conn.execute(
                        update(m.alarms)
                        .where(m.alarms.c.id == open_id)
                        .values(count=m.alarms.c.count + count, last_at=now)
                    )
                    return None
            alarm_id = conn.execute(
                insert(m.alarms).values(
                    at=now,
                    kind=kind,
                    severity=severity,
                    subject=subject,
                    message=message,
                    count=count,
                    last_at=now,
                )
            ).inserted_primary_key
        alarm = {
            "id": alarm_id[0] if alarm_id else None,
            "at": iso(now),
            "kind": kind,
            "severity": severity,
            "subject": subject,
            "message": message,
            "count": count,
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
            clear_open_alarms(conn, kind, subject, self.kernel.clock())

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
        """Keep the evidence (once per pair of notes) and raise one alarm per incident.

        A rollback (``CheckpointRollback``) is raised as ``rollback``, any
        other contradiction as ``equivocation``.
        """
        kind = "rollback" if isinstance(exc, CheckpointRollback) else "equivocation"
        self.record_evidence(kind, party, str(exc), exc.evidence)

    def record_evidence(
        self, kind: str, party: str, message: str, evidence: Mapping[str, str]
    ) -> bool:
        """Keep ``evidence`` (its ``earlier`` and ``later`` notes) once; raise or count the alarm.

        Returns whether the pair of notes was new.
        """
        pair = evidence_pair(evidence.get("earlier", ""), evidence.get("later", ""))
        with self._alarm_lock, self.kernel.engine.begin() as conn:
            known = conn.execute(
                select(m.evidence.c.id).where(
                    and_(m.evidence.c.party == party, m.evidence.c.pair == pair)
                )
            ).first()
            if known is None:
                conn.execute(
                    insert(m.evidence).values(
                        at=self.kernel.clock(),
                        party=party,
                        message=message,
                        evidence=canonical_bytes(dict(evidence)).decode(),
                        pair=pair,
                    )
                )
        self.raise_alarm(kind, "critical", party, message, once=True)
        return known is None
