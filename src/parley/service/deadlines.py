"""Acknowledgement deadlines: alarms for the sender, reminders for the receiver."""

from __future__ import annotations

from sqlalchemy import and_, select, update

from parley.service.alarms import Alarms
from parley.service.kernel import Kernel
from parley.store import models as m
from parley.store.db import reading

__all__ = ["Deadlines"]


class Deadlines:
    """Check the acknowledgement deadlines of messages sent and received."""

    def __init__(self, kernel: Kernel, alarms: Alarms) -> None:
        self.kernel = kernel
        self.alarms = alarms

    def check_deadlines(self) -> int:
        """Raise overdue-acknowledgement alarms (sender) and reminders (receiver)."""
        now = self.kernel.clock()
        raised = 0
        with reading(self.kernel.engine) as conn:
            rows = conn.execute(
                select(m.messages).where(
                    and_(
                        m.messages.c.ack_due.is_not(None),
                        m.messages.c.ack_due <= now,
                        m.messages.c.overdue.is_(False),
                    )
                )
            ).all()
            if not rows:
                return 0
            # Only the acknowledgements of the overdue messages, not the whole table.
            overdue = [row.envelope_id for row in rows]
            acks: set[tuple[str, str]] = set()
            for start in range(0, len(overdue), 500):
                acks.update(
                    (a.envelope_id, a.party)
                    for a in conn.execute(
                        select(m.acks.c.envelope_id, m.acks.c.party).where(
                            m.acks.c.envelope_id.in_(overdue[start : start + 500])
                        )
                    )
                )
        for row in rows:
            if row.direction == "out":
                waiting = [p for p in row.recipients.split(",") if (row.envelope_id, p) not in acks]
                if waiting:
                    self.alarms.raise_alarm(
                        "ack_overdue",
                        "warning",
                        row.envelope_id,
                        f"{row.precedence} message {row.envelope_id} is not acknowledged by "
                        f"{', '.join(waiting)} within its deadline",
                    )
                    raised += 1
            elif row.acked_at is None:
                self.alarms.raise_alarm(
                    "ack_reminder",
                    "info",
                    row.envelope_id,
                    f"{row.precedence} message {row.envelope_id} from {row.sender} awaits "
                    "acknowledgement: its deadline has passed",
                )
                raised += 1
            with self.kernel.engine.begin() as conn:
                conn.execute(
                    update(m.messages)
                    .where(m.messages.c.envelope_id == row.envelope_id)
                    .values(overdue=True)
                )
        return raised
