"""Rotating this terminal's keys and revoking cards: the use cases behind
``parley keys rotate``, ``parley keys revoke``, ``parley peer revocation`` and
the operator API (``Operations`` checks the roles and logs the action).

Rotation (``rotate``): a new card, version n+1, signed by the new keys and the
old (``Identity.successor``); one service message per peer, the old keys'
last signature, carries it with its TLS certificate; the new keys sign
everything after. The new key file is written beside the old one first
(``keys.next``), the database commits, then the new file replaces the old:
a crash in between leaves either the old keys or the new ones, never a
mismatch (``finish_pending_rotation`` at start-up). The TLS certificate a
running ``parley serve`` presents stays the one it started with; the next
start presents the new card's (peers trust both).

A peer's rotation message arrives as any envelope; the core checks that the
card chains (``parley.core.keychain``) and ``on_card_rotated`` keeps the new
card, its TLS certificate and an info alarm showing the new fingerprint, for
an optional confirmation read aloud.

Revocation (``revoke``): signed by a later card of our chain (revoking an
earlier one) or by the offline revocation keys printed at ``parley init``
(revoking the card in use, whose keys may be in other hands). It is written
to ``revocation.json`` in the data directory to hand to the peers, and sent
to them in a service message when the keys signing that message are not the
revoked ones. A peer applies it (``accept_revocation``): nothing signed by
the revoked card dated after the compromise is accepted, a ``key_revoked``
alarm is raised, and if it was the party's card in use, the next card must be
pinned again by its fingerprint (``peer add``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from sqlalchemy import Connection, update

from parley.core.canonical import JSONValue
from parley.core.encoding import format_time
from parley.core.identity import Identity, IdentityCard
from parley.core.keychain import Revocation, RevocationKeys, issue_revocation
from parley.core.party import REVOCATION, CardRotated
from parley.errors import UsageError
from parley.keyfile import load_identity, save_identity
from parley.service import tls
from parley.service.cardchain import record_card, record_revocation
from parley.service.peers import CardBundle
from parley.store import models as m

if TYPE_CHECKING:
    from parley.service.alarms import Alarms
    from parley.service.kernel import Kernel
    from parley.service.messaging import Messaging

__all__ = ["CARD_ROTATED", "KEY_REVOKED", "REVOCATION", "SUPERSEDED_KEY", "KeyRotation"]

log = structlog.get_logger("parley.terminal")

CARD_ROTATED: Final = "card_rotated"
KEY_REVOKED: Final = "key_revoked"
SUPERSEDED_KEY: Final = "superseded_key"
DEFAULT_VALIDITY: Final = timedelta(days=730)


def _pending_key_file(kernel: Kernel) -> Path:
    return kernel.data.key_file.with_name(kernel.data.key_file.name + ".next")


def _scrypt_cost(kernel: Kernel) -> int:
    try:
        return int(json.loads(kernel.data.key_file.read_bytes())["kdf"]["n"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the scrypt cost of {kernel.data.key_file}: {exc}") from None


class KeyRotation:
    """Rotate this terminal's keys; revoke cards; keep peers' rotations and revocations."""

    def __init__(self, kernel: Kernel, alarms: Alarms, messaging: Messaging) -> None:
        self.kernel = kernel
        self.alarms = alarms
        self.messaging = messaging

    # Our own keys ---------------------------------------------------------------

    def rotate(self, *, validity_days: int | None = None) -> dict[str, Any]:
        """Replace this terminal's signature keys by new ones (card version n+1)."""
        from parley.service.messaging import Draft

        kernel = self.kernel
        passphrase = kernel.passphrase
        if passphrase is None:
            raise UsageError("the key file's passphrase is needed to rotate the keys")
        days = validity_days or min(
            int(DEFAULT_VALIDITY / timedelta(days=1)), kernel.config.max_card_validity_days
        )
        if not 1 <= days <= kernel.config.max_card_validity_days:
            raise UsageError(
                f"a card may be valid 1 to {kernel.config.max_card_validity_days} days "
                "(max_card_validity_days), as the peers accept"
            )
        with kernel.lock:
            old = kernel.identity
            now = kernel.clock()
            start = kernel.party.transcript.size
            revoked = old.card.revoked is not None
            if revoked:
                # No revoked key vouches for the next card: it is made fresh, and the
                # peers pin it by its fingerprint read aloud (``peer add``).
                new = old.replacement(now=now, validity=timedelta(days=days))
            else:
                new = old.successor(now=now, validity=timedelta(days=days), log_size=start)
            new_certificate = tls.certificate_for(new)
            announcement: dict[str, JSONValue] = {
                "card": json.loads(new.card.signed_bytes),
                "tls_certificate": new_certificate.decode("ascii"),
            }
            pending = _pending_key_file(kernel)
            save_identity(new, pending, passphrase, scrypt_n=_scrypt_cost(kernel))
            try:
                if revoked:
                    kernel.party.replace_revoked_identity(new)
                    sent = []
                else:
                    sent = kernel.party.rotate(new, announcement)
            except BaseException:
                os.unlink(pending)
                raise
            drafts = [
                (
                    Draft(
                        out.recipients,
                        kind="service",
                        body={"service": {"card_rotation": announcement}},
                        operator="terminal",
                        precedence=out.precedence,
                    ),
                    out,
                )
                for out in sent
            ]

            def work(conn: Connection) -> None:
                kernel.log_new_entries(conn, start)
                if drafts:
                    self.messaging.store_sealed(conn, drafts)
                record_card(
                    conn,
                    new.card,
                    via="pin" if revoked else "rotation",
                    tls_certificate=new_certificate,
                    now=now,
                    base=old.card,
                    base_tls_certificate=kernel.tls_certificate,
                )

            try:
                kernel.commit(work)
            except BaseException:
                os.unlink(pending)
                kernel.reload()
                raise
            os.replace(pending, kernel.data.key_file)
            kernel.identity = kernel.party.identity
            kernel.data.card_file.write_bytes(
                CardBundle(new.card, new_certificate).to_json() + b"\n"
            )
        kernel.chains_changed()
        kernel.outbox_changed()
        log.info("keys_rotated", version=new.card.version, peers=len(sent))
        return {
            "party": kernel.me,
            "version": new.card.version,
            "fingerprint": new.card.fingerprint,
            "previous_version": old.card.version,
            "valid_from": format_time(new.card.valid_from),
            "valid_until": format_time(new.card.valid_until),
            "announced_to": sorted(p for out in sent for p in out.recipients),
            # After a revocation of the card in use: hand card.json to the peers, who pin
            # it with `peer add` after reading its fingerprint aloud.
            "pin_again": revoked,
        }

    def revoke(
        self,
        *,
        reason: str,
        compromised_at: datetime | None = None,
        version: int | None = None,
        certificate: str | None = None,
    ) -> dict[str, Any]:
        """Revoke one of this terminal's cards; returns the revocation and where it is.

        With ``certificate`` (the offline revocation keys printed at ``parley
        init``) the card in use is revoked by default; without, only an
        earlier card (``version``), signed by the keys in use.
        """
        kernel = self.kernel
        now = kernel.clock()
        chain = kernel.identity.card
        at = compromised_at or now
        signer: Identity | RevocationKeys
        if certificate is not None:
            party, signer = RevocationKeys.from_text(certificate)
            if party != kernel.me:
                raise UsageError(f"the revocation certificate is {party}'s, not {kernel.me}'s")
            target = chain if version is None else _card_version(chain, version)
        else:
            if version is None or version >= chain.version:
                raise UsageError(
                    "the keys in use revoke only an earlier card (--version N); to revoke the "
                    "card in use, give the revocation certificate from the safe (--certificate)"
                )
            signer = kernel.identity
            target = _card_version(chain, version)
        statement = issue_revocation(signer, target, compromised_at=at, reason=reason, now=now)
        revocation, _ = self._apply(statement)
        path = kernel.data.path / "revocation.json"
        path.write_bytes(statement + b"\n")
        sent_to: list[str] = []
        if target.key_id != chain.key_id:
            # The keys in use are sound: they carry the revocation to every peer.
            for peer in sorted(kernel.party.peers):
                self.messaging.send(
                    [peer],
                    kind="service",
                    body={"service": {REVOCATION: json.loads(statement)}},
                    operator="terminal",
                    precedence="FLASH",
                )
                sent_to.append(peer)
        return {
            "party": revocation.party,
            "version": revocation.version,
            "compromised_at": format_time(revocation.compromised_at),
            "reason": revocation.reason,
            "signer": revocation.signer,
            "file": str(path),
            "sent_to": sent_to,
        }

    def import_revocation(self, statement: bytes) -> dict[str, Any]:
        """A revocation handed over by a peer (the file ``parley keys revoke`` wrote)."""
        revocation, chain = self._apply(statement.strip())
        return {
            "party": revocation.party,
            "version": revocation.version,
            "compromised_at": format_time(revocation.compromised_at),
            "reason": revocation.reason,
            "card_in_use_revoked": chain.revoked is not None,
        }

    def _apply(self, statement: bytes) -> tuple[Revocation, IdentityCard]:
        kernel = self.kernel
        with kernel.lock:
            revocation, chain = kernel.party.accept_revocation(statement)
            now = kernel.clock()
            new = kernel.commit(lambda conn: record_revocation(conn, revocation, now))
            if revocation.party == kernel.me:
                kernel.identity = kernel.party.identity
        kernel.chains_changed()
        if new:
            self._revocation_alarm(revocation, chain)
        return revocation, chain

    def _revocation_alarm(self, revocation: Revocation, chain: IdentityCard) -> None:
        in_use = chain.key_id == revocation.key_id
        whose = "this terminal's" if revocation.party == self.kernel.me else f"{revocation.party}'s"
        then = (
            f"; {revocation.party}'s next card must be pinned again by its fingerprint read "
            "aloud (peer add)"
            if in_use and revocation.party != self.kernel.me
            else ""
        )
        self.alarms.raise_alarm(
            KEY_REVOKED,
            "critical",
            f"{revocation.party} v{revocation.version}",
            f"{whose} card version {revocation.version} was revoked ({revocation.reason}): "
            f"nothing it signed after {format_time(revocation.compromised_at)} is accepted{then}",
            once=True,
        )

    # Peers' cards ---------------------------------------------------------------

    def on_card_rotated(self, conn: Connection, event: CardRotated, now: datetime) -> None:
        """Keep a peer's new card (in the transaction that logs its rotation message)."""
        pem = str(event.announcement["tls_certificate"]).encode("ascii", "replace")
        certificate = tls.check_certificate(pem, event.card)
        previous = event.card.history[0]
        old_pem = (
            conn.execute(m.peers.select().where(m.peers.c.party == event.party))
            .one()
            .tls_certificate
        )
        record_card(
            conn,
            event.card,
            via="rotation",
            tls_certificate=certificate,
            now=now,
            base=previous,
            base_tls_certificate=bytes(old_pem),
        )
        conn.execute(
            update(m.peers)
            .where(m.peers.c.party == event.party)
            .values(
                card=event.card.signed_bytes,
                fingerprint=event.card.fingerprint,
                tls_certificate=certificate,
            )
        )

    def after_card_rotated(self, event: CardRotated) -> None:
        """After the commit: trust the new TLS certificate too, and tell the operators."""
        card = event.card
        pems = self.kernel.peer_certificates.get(event.party, b"")
        new_pem = str(event.announcement["tls_certificate"]).encode("ascii", "replace")
        if new_pem not in pems:
            self.kernel.peer_certificates[event.party] = pems + new_pem
        self.kernel.chains_changed()
        self.kernel.on_card_rotated(event.party)
        self.alarms.raise_alarm(
            CARD_ROTATED,
            "info",
            f"{card.party} v{card.version}",
            f"{card.party} replaced its card version {card.version - 1} by version "
            f"{card.version}, signed by the card pinned (accepted by itself). New fingerprint, "
            f"to confirm aloud if wished: {card.fingerprint}",
            once=True,
        )
        log.info("peer_card_rotated", peer=card.party, version=card.version)

    def superseded_key_used(self, card: str, revoked: bool, sender: str, error: str) -> None:
        """One alarm per card whose rotated-out or revoked keys still sign."""
        self.alarms.raise_alarm(
            SUPERSEDED_KEY,
            "critical" if revoked else "warning",
            card,
            f"a message from {sender} was refused: {error}. Its keys may be in other hands.",
            once=True,
        )


def _card_version(chain: IdentityCard, version: int) -> IdentityCard:
    for card in chain.chain:
        if card.version == version:
            return card
    raise UsageError(
        f"no card version {version} in this terminal's chain "
        f"(versions {', '.join(str(c.version) for c in chain.chain)})"
    )


def finish_pending_rotation(key_file: Path, passphrase: str, stored: set[str]) -> None:
    """At start-up: a ``keys.next`` left by a rotation cut short is kept only if the
    database recorded its card (``stored``: the key ids of our card chain)."""
    pending = key_file.with_name(key_file.name + ".next")
    if not pending.exists():
        return
    identity = load_identity(pending, passphrase)
    if identity.card.key_id in stored:
        os.replace(pending, key_file)
    else:
        pending.unlink()
