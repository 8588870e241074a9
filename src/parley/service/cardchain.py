"""Card chains in the database: every card of each party, and the revocations.

The newest card of a peer is in ``peers.card`` (of this terminal: in the key
file); ``card_chain`` keeps every card since the first pin, each with how it
came: ``pin`` (its fingerprint was read aloud) or ``rotation`` (the card
before it signed it, ``parley.core.keychain.check_successor``).
``load_chain`` rebuilds a party's chain and checks it again link by link,
then applies the stored revocations, so an insider who edits these tables
gets a refusal, not a trusted key. Every reader of cards (the protocol state,
the read model, ``parley verify``) uses ``load_chain``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Connection, insert, select

from parley.core.identity import IdentityCard
from parley.core.keychain import Revocation, apply_revocation, check_successor, read_revocation
from parley.errors import InvalidCard, UsageError
from parley.store import models as m

__all__ = ["load_chain", "load_peer_chains", "record_card", "record_revocation"]


def load_chain(conn: Connection, current: IdentityCard) -> IdentityCard:
    """``current`` (a party's newest card, already trusted) with its checked history."""
    rows = conn.execute(
        select(m.card_chain)
        .where(m.card_chain.c.party == current.party)
        .order_by(m.card_chain.c.version)
    ).all()
    chain: IdentityCard | None = None
    for row in rows:
        card = IdentityCard.from_bytes(bytes(row.card))
        if card.party != current.party:
            raise InvalidCard(f"a card of {card.party} is stored in the chain of {current.party}")
        if chain is None or row.via == "pin":
            card = card.pinned(row.fingerprint)
            history = (
                () if chain is None else (dataclasses.replace(chain, history=()), *chain.history)
            )
            chain = dataclasses.replace(card, history=history)
        else:
            chain = check_successor(chain, card)
    if chain is None:
        chain = current
    elif chain.key_id != current.key_id:
        raise InvalidCard(
            f"the stored chain of {current.party} ends in version {chain.version}, not in the "
            f"card in use (version {current.version})"
        )
    for row in conn.execute(
        select(m.revocations.c.statement)
        .where(m.revocations.c.party == current.party)
        .order_by(m.revocations.c.received_at)
    ):
        chain = apply_revocation(chain, read_revocation(bytes(row.statement), chain))
    return chain


def load_peer_chains(conn: Connection) -> dict[str, tuple[IdentityCard, bytes]]:
    """Every pinned peer's chain and the TLS certificates to trust for it (PEM, joined)."""
    result: dict[str, tuple[IdentityCard, bytes]] = {}
    for row in conn.execute(select(m.peers)):
        current = IdentityCard.from_bytes(bytes(row.card)).pinned(row.fingerprint)
        if current.party != row.party:
            raise InvalidCard(f"the card stored for {row.party} belongs to {current.party}")
        certificates = [bytes(row.tls_certificate)]
        for cert in conn.execute(
            select(m.card_chain.c.tls_certificate)
            .where(m.card_chain.c.party == row.party)
            .order_by(m.card_chain.c.version)
        ).scalars():
            if cert is not None and bytes(cert) not in certificates:
                certificates.append(bytes(cert))
        result[row.party] = (load_chain(conn, current), b"".join(certificates))
    return result


def record_card(
    conn: Connection,
    card: IdentityCard,
    *,
    via: str,
    tls_certificate: bytes | None,
    now: datetime,
    base: IdentityCard | None = None,
    base_tls_certificate: bytes | None = None,
) -> None:
    """Keep one card of a chain (and ``base``, the card it follows, if not kept yet)."""
    if via not in ("pin", "rotation"):
        raise UsageError(f"a card comes by pin or rotation, not {via!r}")
    known = set(
        conn.execute(
            select(m.card_chain.c.key_id).where(m.card_chain.c.party == card.party)
        ).scalars()
    )
    if base is not None and base.key_id not in known and not known:
        conn.execute(
            insert(m.card_chain).values(
                party=base.party,
                version=base.version,
                key_id=base.key_id,
                card=base.signed_bytes,
                fingerprint=base.fingerprint,
                via="pin",
                tls_certificate=base_tls_certificate,
                added_at=now,
            )
        )
    if card.key_id in known:
        return
    conn.execute(
        insert(m.card_chain).values(
            party=card.party,
            version=card.version,
            key_id=card.key_id,
            card=card.signed_bytes,
            fingerprint=card.fingerprint,
            via=via,
            tls_certificate=tls_certificate,
            added_at=now,
        )
    )


def record_revocation(conn: Connection, revocation: Revocation, now: datetime) -> bool:
    """Keep a verified revocation once; True if it is new."""
    if conn.execute(
        select(m.revocations.c.key_id).where(m.revocations.c.key_id == revocation.key_id)
    ).first():
        return False
    conn.execute(
        insert(m.revocations).values(
            key_id=revocation.key_id,
            party=revocation.party,
            statement=revocation.signed_bytes,
            compromised_at=revocation.compromised_at,
            received_at=now,
        )
    )
    return True
