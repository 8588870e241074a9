"""Peers: pinning a peer's card (with its TLS certificate) and its links.

A ``CardBundle`` is what a terminal gives its peers; its fingerprint is read
aloud before it is pinned.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import Connection, and_, insert, select, update

from parley.core.canonical import canonical_bytes
from parley.core.encoding import check_party_id
from parley.core.identity import IdentityCard, check_card_window
from parley.core.party import bilateral_channel
from parley.errors import InvalidCard, ParleyError, UsageError
from parley.service import tls
from parley.service.cardchain import load_peer_chains, record_card
from parley.service.kernel import Kernel
from parley.store import models as m
from parley.store.db import reading

__all__ = ["CardBundle", "Peers"]

log = structlog.get_logger("parley.terminal")


@dataclass(frozen=True, slots=True)
class CardBundle:
    """What a terminal gives its peers: the signed card and its TLS certificate.

    The certificate is for the card's own Ed25519 key, so the fingerprint of
    the card vouches for both.
    """

    card: IdentityCard
    tls_certificate: bytes  # PEM

    def to_json(self) -> bytes:
        card = json.loads(self.card.signed_bytes)
        return canonical_bytes(
            {"card": card, "tls_certificate": self.tls_certificate.decode("ascii")}
        )

    @classmethod
    def from_json(cls, data: bytes) -> CardBundle:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidCard(f"the card file is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidCard("the card file is nested too deeply to be a card") from None
        if not isinstance(obj, dict) or set(obj) != {"card", "tls_certificate"}:
            raise InvalidCard(
                "a card file holds exactly 'card' and 'tls_certificate' (as `parley card` prints)"
            )
        try:
            card_bytes = canonical_bytes(obj["card"])
        except ParleyError as exc:
            raise InvalidCard(f"the card in the card file cannot be a card: {exc}") from None
        except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
            # rfc8785 refuses lone surrogates and other non-JSON values this way.
            raise InvalidCard(f"the card in the card file is not canonical JSON: {exc}") from None
        card = IdentityCard.from_bytes(card_bytes)
        pem = obj["tls_certificate"]
        if not isinstance(pem, str):
            raise InvalidCard("the card file's tls_certificate must be a PEM string")
        return cls(card, tls.check_certificate(pem.encode("ascii", "replace"), card))


class Peers:
    """Pin peers' cards and their links."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def card_bundle(self) -> CardBundle:
        return CardBundle(self.kernel.identity.card, self.kernel.tls_certificate)

    def add_peer(
        self, bundle: CardBundle, fingerprint: str, links: Sequence[tuple[str, str]]
    ) -> IdentityCard:
        """Pin a peer's card (after its fingerprint was read aloud) with its links.

        A new card must also pass the terminal's card policy: a validity no
        longer than ``max_card_validity_days``, begun (within ``max_clock_skew``)
        and not over. Re-pointing the links of a card already pinned does not
        check it again.
        """
        for name, url in links:
            check_party_id(name.upper(), "link name")
            if not url.startswith("https://"):
                raise UsageError(f"link {name} must be an https:// URL, not {url!r}")
        with self.kernel.lock:
            card = bundle.card.pinned(fingerprint)
            if card.party == self.kernel.me:
                raise UsageError("a terminal cannot pin its own card as a peer")
            replacing: IdentityCard | None = None
            if card.party in self.kernel.party.peers:
                known = self.kernel.party.peers[card.party]
                if known.revoked is not None and card.version > known.version:
                    # Its card in use was revoked: the next one is pinned again, by the
                    # fingerprint read aloud (no key of the old chain can vouch for it).
                    replacing = known
                elif card.key_id != known.key_id:
                    if known.for_key(card.key_id) is not None:
                        raise UsageError(
                            f"this is {card.party}'s card version {card.version}, which its "
                            f"version {known.version} replaced: ask for its card in use"
                        )
                    raise UsageError(
                        f"{card.party} is already pinned with another card (fingerprint "
                        f"{known.fingerprint}); a new card is accepted only as a rotation "
                        "signed by the pinned one, or after the pinned one was revoked"
                    )
            now = self.kernel.clock()
            if card.party not in self.kernel.party.peers or replacing is not None:
                config = self.kernel.config
                check_card_window(
                    card,
                    now=now,
                    max_validity=timedelta(days=config.max_card_validity_days),
                    clock_skew=timedelta(seconds=config.max_clock_skew),
                )

            def work(conn: Connection) -> None:
                if replacing is not None:
                    old_pem = conn.execute(
                        select(m.peers.c.tls_certificate).where(m.peers.c.party == card.party)
                    ).scalar_one()
                    record_card(
                        conn,
                        card,
                        via="pin",
                        tls_certificate=bundle.tls_certificate,
                        now=now,
                        base=dataclasses.replace(replacing, history=()),
                        base_tls_certificate=bytes(old_pem),
                    )
                    conn.execute(
                        update(m.peers)
                        .where(m.peers.c.party == card.party)
                        .values(
                            card=card.signed_bytes,
                            fingerprint=card.fingerprint,
                            tls_certificate=bundle.tls_certificate,
                        )
                    )
                if card.party not in self.kernel.party.peers:
                    conn.execute(
                        insert(m.peers).values(
                            party=card.party,
                            card=card.signed_bytes,
                            fingerprint=card.fingerprint,
                            tls_certificate=bundle.tls_certificate,
                            added_at=now,
                        )
                    )
                existing = {
                    r.name
                    for r in conn.execute(
                        select(m.links.c.name).where(m.links.c.peer == card.party)
                    )
                }
                for name, url in links:
                    if name in existing:
                        conn.execute(
                            update(m.links)
                            .where(and_(m.links.c.peer == card.party, m.links.c.name == name))
                            .values(url=url)
                        )
                    else:
                        conn.execute(
                            insert(m.links).values(
                                peer=card.party, name=name, url=url, state="unknown", failures=0
                            )
                        )
                channel = bilateral_channel(self.kernel.me, card.party)
                if (
                    conn.execute(
                        select(m.channels.c.name).where(m.channels.c.name == channel)
                    ).first()
                    is None
                ):
                    conn.execute(
                        insert(m.channels).values(
                            name=channel,
                            members=",".join(sorted({self.kernel.me, card.party})),
                            kind="bilateral",
                            proposed_by=None,
                            created_at=now,
                        )
                    )

            self.kernel.commit(work)
            if replacing is not None:
                with reading(self.kernel.engine) as conn:
                    chain, pems = load_peer_chains(conn)[card.party]
                self.kernel.party.set_peer_chain(chain)
                self.kernel.peer_certificates[card.party] = pems
                self.kernel.chains_changed()
                self.kernel.on_card_rotated(card.party)
            else:
                self.kernel.party.add_peer(card, fingerprint)
                self.kernel.peer_certificates[card.party] = bundle.tls_certificate
        log.info("peer_pinned", peer=card.party, fingerprint=card.fingerprint, links=len(links))
        return card
