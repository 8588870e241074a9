"""Certified translations of free-text messages, and their countersignatures."""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from sqlalchemy import and_, insert, select

from parley.core.transcript import split_entry
from parley.core.translation import (
    certify_translation,
    countersign_translation,
    read_certified_translation,
    read_countersignature,
)
from parley.errors import UsageError
from parley.service.kernel import Kernel
from parley.store import models as m
from parley.store.db import reading

__all__ = ["Translations"]

log = structlog.get_logger("parley.terminal")


class Translations:
    """Keep operators' certified translations, signed for them, and second operators' checks."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def certify_translation(
        self, envelope_id: str, *, target_lang: str, text: str, operator: str
    ) -> dict[str, Any]:
        """Keep an operator's certified translation of a free-text message, signed for them.

        It is this terminal's statement, never the sender's words; a second
        operator countersigns it (``countersign_translation``).
        """
        with reading(self.kernel.engine) as conn:
            row = conn.execute(
                select(m.messages.c.kind, m.messages.c.lang, m.log_entries.c.entry)
                .join(m.log_entries, m.log_entries.c.idx == m.messages.c.log_index)
                .where(m.messages.c.envelope_id == envelope_id)
            ).first()
        if row is None:
            raise UsageError(f"no message {envelope_id} on this terminal")
        if row.kind != "text":
            raise UsageError(
                f"message {envelope_id} is a {row.kind} message: only free text is translated "
                "(a form is shown in every reader's language)"
            )
        _, raw = split_entry(bytes(row.entry))
        statement = certify_translation(
            self.kernel.identity,
            envelope_id=envelope_id,
            envelope_digest=hashlib.sha256(raw).hexdigest(),
            source_lang=row.lang,
            target_lang=target_lang,
            text=text,
            operator=operator,
            now=self.kernel.clock(),
        )
        translation = read_certified_translation(statement, self.kernel.party.card_of)
        with self.kernel.transaction() as conn:
            conn.execute(
                insert(m.translations).values(
                    digest=translation.digest,
                    envelope_id=envelope_id,
                    target_lang=target_lang,
                    operator=operator,
                    statement=statement,
                    created_at=translation.translated_at,
                )
            )
        log.info("translation_certified", id=envelope_id, lang=target_lang, operator=operator)
        return {"digest": translation.digest, "envelope_id": envelope_id}

    def countersign_translation(self, digest: str, *, operator: str) -> dict[str, Any]:
        """A second operator's check of a certified translation (not its author)."""
        with reading(self.kernel.engine) as conn:
            row = conn.execute(
                select(m.translations).where(m.translations.c.digest == digest)
            ).first()
        if row is None:
            raise UsageError(f"no certified translation {digest} on this terminal")
        statement = countersign_translation(
            self.kernel.identity, bytes(row.statement), operator=operator, now=self.kernel.clock()
        )
        translation = read_certified_translation(bytes(row.statement), self.kernel.party.card_of)
        countersigned = read_countersignature(statement, translation, self.kernel.party.card_of)
        with self.kernel.transaction() as conn:
            if conn.execute(
                select(m.translation_countersignatures.c.operator).where(
                    and_(
                        m.translation_countersignatures.c.translation == digest,
                        m.translation_countersignatures.c.operator == operator,
                    )
                )
            ).first():
                raise UsageError(f"{operator} has already countersigned translation {digest}")
            conn.execute(
                insert(m.translation_countersignatures).values(
                    translation=digest,
                    operator=operator,
                    statement=statement,
                    created_at=countersigned.countersigned_at,
                )
            )
        log.info("translation_countersigned", translation=digest, operator=operator)
        return {"digest": digest, "countersigned_by": operator}
