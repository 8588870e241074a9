"""Links to peers: the state of each one, from its uses and tests, and their alarms."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, insert, select, update

from parley.service.alarms import Alarms, clear_open_alarms
from parley.service.kernel import Kernel
from parley.store import models as m

__all__ = ["Links"]

log = structlog.get_logger("parley.terminal")

#: Seconds between two writes of a link that stays up (its round-trip time and
#: a sample for the console's 24-hour chart).
UP_WRITTEN_EVERY = 30.0


class Links:
    """Record how each link to a peer fares; raise and clear the alarms that follow."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self._link_written: dict[tuple[str, str], tuple[str, float]] = {}

    def record_link(
        self,
        peer: str,
        name: str,
        *,
        ok: bool,
        rtt_ms: float | None = None,
        error: str | None = None,
        test: bool = False,
        count: bool = True,
    ) -> str:
        """Record one use or test of a link; return its new state; raise alarms on failure.

        A success on a link already up is written at most every
        ``UP_WRITTEN_EVERY`` seconds (the round-trip time shown may be that
        old), so that neither traffic nor idle witness rounds pay a database
        commit per request.
        """
        now = self.kernel.clock()
        key = (peer, name)
        if ok and not test:
            previous = self._link_written.get(key)
            if (
                previous is not None
                and previous[0] == "up"
                and time.monotonic() - previous[1] < UP_WRITTEN_EVERY
            ):
                return "up"
        with self.kernel.engine.begin() as conn:
            row = conn.execute(
                select(m.links).where(and_(m.links.c.peer == peer, m.links.c.name == name))
            ).first()
            if row is None:
                return "unknown"
            failures = 0 if ok else row.failures + (1 if count else 0)
            state = "up" if ok else ("degraded" if failures < 3 else "down")
            values: dict[str, Any] = {"state": state, "failures": failures}
            if ok:
                values.update(last_success=now, rtt_ms=rtt_ms, last_error=None)
            else:
                values.update(last_error=(error or "failed")[:500])
            if test:
                values["last_test"] = now
            conn.execute(update(m.links).where(m.links.c.id == row.id).values(**values))
            conn.execute(
                insert(m.link_samples).values(
                    peer=peer, link=name, at=now, ok=ok, rtt_ms=rtt_ms if ok else None
                )
            )
            if test:  # keep a week of samples (the console charts the last 24 hours)
                conn.execute(
                    delete(m.link_samples).where(m.link_samples.c.at < now - timedelta(days=7))
                )
            if ok:  # in the same transaction: one commit for a link that answers
                clear_open_alarms(conn, "peer_unreachable", peer, now)
                if test:
                    clear_open_alarms(conn, "link_test_failed", f"{peer}/{name}", now)
            self._link_written[key] = (state, time.monotonic())
            states = [
                r.state for r in conn.execute(select(m.links.c.state).where(m.links.c.peer == peer))
            ]
        if test and not ok:
            self.alarms.raise_alarm(
                "link_test_failed",
                "warning",
                f"{peer}/{name}",
                f"link {name} to {peer} failed its test: {error}",
                once=True,
            )
        if not ok and row.state != "down" and state == "down":
            log.warning("link_down", peer=peer, link=name, error=error)
        if states and all(s == "down" for s in states):
            self.alarms.raise_alarm(
                "peer_unreachable",
                "critical",
                peer,
                f"no healthy link to {peer}: every link is down",
                once=True,
            )
        return state
