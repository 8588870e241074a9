"""Channels: named channels proposed to their members and usable once all agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from parley.core.encoding import check_party_id
from parley.errors import ChannelNotAgreed, UsageError
from parley.service.kernel import Kernel
from parley.store import models as m
from parley.store.db import reading

if TYPE_CHECKING:
    from parley.service.messaging import Messaging

__all__ = ["Channels", "apply_service", "require_active_channel"]


def require_active_channel(engine: Engine, channel: str, recipients: Sequence[str]) -> None:
    """Refuse a message on a named channel that not every member has agreed to yet."""
    with reading(engine) as conn:
        row = conn.execute(select(m.channels).where(m.channels.c.name == channel)).first()
        if row is None or row.kind == "bilateral":
            return
        members = row.members.split(",")
        agreed = {
            r.party
            for r in conn.execute(
                select(m.channel_agreements.c.party).where(
                    m.channel_agreements.c.channel == channel
                )
            )
        }
    missing = sorted(set(members) - agreed)
    if missing:
        raise ChannelNotAgreed(
            f"channel {channel} is not agreed yet: waiting for {', '.join(missing)}",
            channel=channel,
            waiting=", ".join(missing),
        )


def apply_service(
    conn: Connection,
    channel: str,
    sender: str,
    body: Mapping[str, Any],
    now: datetime,
) -> None:
    """Note a channel proposal or agreement received in a service message."""
    service = body.get("service")
    if not isinstance(service, dict):
        return
    proposal = service.get("channel_proposal")
    if isinstance(proposal, dict):
        conn.execute(
            update(m.channels)
            .where(m.channels.c.name == channel)
            .values(kind="named", proposed_by=sender)
        )
    if isinstance(proposal, dict) or isinstance(service.get("channel_agreement"), dict):
        exists = conn.execute(
            select(m.channel_agreements.c.party).where(
                and_(
                    m.channel_agreements.c.channel == channel,
                    m.channel_agreements.c.party == sender,
                )
            )
        ).first()
        if exists is None:
            conn.execute(insert(m.channel_agreements).values(channel=channel, party=sender, at=now))


class Channels:
    """Propose named channels and agree to them (by service messages on the channel)."""

    def __init__(self, kernel: Kernel, messaging: Messaging) -> None:
        self.kernel = kernel
        self.messaging = messaging

    def create_channel(self, name: str, members: Sequence[str], *, operator: str) -> dict[str, Any]:
        """Propose a named channel to its members; it is usable once every member agrees."""
        check_party_id(name, "channel name")
        members = sorted({*members, self.kernel.me})
        if len(members) < 2:
            raise UsageError("a channel needs at least two members")
        if "." in name and name == ".".join(members):
            raise UsageError("that name is reserved for the bilateral channel")
        with reading(self.kernel.engine) as conn:
            if conn.execute(select(m.channels.c.name).where(m.channels.c.name == name)).first():
                raise UsageError(f"channel {name} already exists")
        others = [p for p in members if p != self.kernel.me]

        def proposed(conn: Connection) -> None:
            conn.execute(
                update(m.channels)
                .where(m.channels.c.name == name)
                .values(kind="named", proposed_by=self.kernel.me)
            )
            conn.execute(
                insert(m.channel_agreements).values(
                    channel=name, party=self.kernel.me, at=self.kernel.clock()
                )
            )

        with self.kernel.joined(proposed):  # one transaction: the proposal and the channel's state
            result = self.messaging.send(
                others,
                kind="service",
                body={"service": {"channel_proposal": {"members": list(members), "name": name}}},
                operator=operator,
                channel=name,
                precedence="PRIORITY",
            )
        return {"channel": name, "members": members, "proposal": result["id"]}

    def agree_channel(self, name: str, *, operator: str) -> dict[str, Any]:
        with reading(self.kernel.engine) as conn:
            row = conn.execute(select(m.channels).where(m.channels.c.name == name)).first()
            if row is None or row.kind != "named":
                raise UsageError(f"no proposed channel {name}")
            done = conn.execute(
                select(m.channel_agreements.c.party).where(
                    and_(
                        m.channel_agreements.c.channel == name,
                        m.channel_agreements.c.party == self.kernel.me,
                    )
                )
            ).first()
        if done:
            raise UsageError(f"this terminal already agreed to channel {name}")
        others = [p for p in row.members.split(",") if p != self.kernel.me]

        def agreed(conn: Connection) -> None:
            conn.execute(
                insert(m.channel_agreements).values(
                    channel=name, party=self.kernel.me, at=self.kernel.clock()
                )
            )

        with self.kernel.joined(agreed):  # one transaction: the agreement and its record
            result = self.messaging.send(
                others,
                kind="service",
                body={"service": {"channel_agreement": {"name": name}}},
                operator=operator,
                channel=name,
                precedence="PRIORITY",
            )
        return {"channel": name, "agreement": result["id"]}
