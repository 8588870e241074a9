"""Resuming a terminal: the counters and leaves its protocol state starts from.

The protocol core's ``Party`` resumes from a ``ResumeState``; here it is read
from the message index and the stored log (``Kernel.reload``).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, select

from parley.core.party import ResumeState
from parley.service.reads import checked_leaves
from parley.store import models as m
from parley.store.db import reading

__all__ = ["resume_state", "witness_state"]


def resume_state(conn: Connection, engine: Engine, me: str) -> ResumeState:
    """The counters a Party resumes from, read from the message index."""
    msg = m.messages.c
    last_sent = {
        r.channel: r.seq
        for r in conn.execute(
            select(msg.channel, func.max(msg.seq).label("seq"))
            .where(msg.direction == "out")
            .group_by(msg.channel)
        )
    }
    inbound: dict[tuple[str, str], list[tuple[int, int]]] = {}
    streams = conn.execute(
        select(msg.channel, msg.sender, func.count().label("n"), func.max(msg.seq).label("top"))
        .where(msg.direction == "in")
        .group_by(msg.channel, msg.sender)
    ).all()
    gapped: set[tuple[str, str]] = set()
    for s in streams:
        if s.n == s.top:  # 1..top, no gap: the usual case
            inbound[(s.channel, s.sender)] = [(1, s.top)]
        else:
            gapped.add((s.channel, s.sender))
    if gapped:
        # The ranges held ("gaps and islands"): within a run of consecutive numbers,
        # seq minus its rank is constant. One row per range, however wide.
        rank = func.row_number().over(partition_by=(msg.channel, msg.sender), order_by=msg.seq)
        numbered = (
            select(msg.channel, msg.sender, msg.seq, (msg.seq - rank).label("island"))
            .where(msg.direction == "in")
            .subquery()
        )
        n = numbered.c
        for r in conn.execute(
            select(n.channel, n.sender, func.min(n.seq).label("lo"), func.max(n.seq).label("hi"))
            .group_by(n.channel, n.sender, n.island)
            .order_by(n.channel, n.sender, "lo")
        ):
            if (r.channel, r.sender) in gapped:
                inbound.setdefault((r.channel, r.sender), []).append((r.lo, r.hi))
    receipted = {
        (r.channel, r.receiver): r.through
        for r in conn.execute(
            select(
                msg.channel,
                m.receipts.c.receiver,
                func.max(m.receipts.c.through_seq).label("through"),
            )
            .join(m.messages, msg.envelope_id == m.receipts.c.envelope_id)
            .where(msg.direction == "out")
            .group_by(msg.channel, m.receipts.c.receiver)
        )
    }
    channels = {
        r.name: r.members.split(",")
        for r in conn.execute(select(m.channels.c.name, m.channels.c.members))
    }
    latest = conn.execute(
        select(m.checkpoints.c.note).order_by(m.checkpoints.c.size.desc()).limit(1)
    ).scalar()
    return ResumeState(
        leaves=checked_leaves(engine),
        latest_checkpoint=latest,
        channels=channels,
        last_sent=last_sent,
        inbound=inbound,
        receipted_through=receipted,
    )


def witness_state(engine: Engine, peer: str) -> tuple[list[str], list[bytes]]:
    """What this terminal stored of ``peer``'s log: the checkpoints observed, the mirror."""
    with reading(engine) as conn:
        notes = list(
            conn.execute(
                select(m.observed_checkpoints.c.note)
                .where(m.observed_checkpoints.c.party == peer)
                .order_by(m.observed_checkpoints.c.size)
            ).scalars()
        )
        leaves: list[bytes] = []
        for row in conn.execute(
            select(m.witnessed_leaves.c.idx, m.witnessed_leaves.c.leaf)
            .where(m.witnessed_leaves.c.party == peer)
            .order_by(m.witnessed_leaves.c.idx)
        ):
            if row.idx != len(leaves):
                break  # the mirror is contiguous: what follows a gap is not used
            leaves.append(bytes(row.leaf))
    return notes, leaves
