"""Every state-changing operator action, for every front end.

``Operations(terminal, actor)`` is what the console, the operator API and
the CLI call to change anything: it asks the policy (``policy.require``),
takes the action and writes the ``operator_actions`` row (operator, role,
front end) **in the same database transaction** as the action, so the log
never misses an action that happened nor records one that did not.

The FLASH hold lives here: a duty officer's FLASH, from any front end, is
kept in ``held_messages`` until a supervisor releases it; releasing it
sends the message, marks the held row released and logs the release in one
transaction, so a crash in between releases it once or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, and_, insert, select, update

from parley.core.canonical import JSONValue
from parley.errors import AlreadyDecided, UsageError
from parley.service import policy
from parley.service.audit import AuditReport
from parley.service.policy import Actor, Decision
from parley.service.terminal import CardBundle, Draft, Terminal
from parley.service.users import add_user_in, unlock_user_in
from parley.store import models as m
from parley.store.db import reading

__all__ = ["Actor", "Operations", "build_body"]

log = structlog.get_logger("parley.operations")


def between_release_steps(held_id: int) -> None:
    """Called between the steps of a release (inside its transaction), with the held id.

    A fault-injection point: a test replaces it to kill the process there.
    """


def build_body(
    text: str | None,
    form: str | None,
    data: dict[str, Any] | None,
    version: int | None = None,
) -> tuple[str, dict[str, JSONValue]]:
    """The envelope kind and content body for free text or a form.

    A form is validated here, against the definition the receiver will use
    (the latest version unless one is named).
    """
    from parley.core.forms import FormRejected, InvalidFormData
    from parley.forms import default_registry

    if (text is None) == (form is None):
        raise UsageError("give either a text or a form (with its data), not both")
    if text is not None:
        if not text.strip():
            raise UsageError("the message text is empty")
        return "text", {"text": text}
    if data is None:
        raise UsageError(f"form {form} needs its data")
    try:
        return "form", {"form": default_registry().body(str(form), data, version)}
    except FormRejected as exc:
        raise InvalidFormData(exc.code, f"the form is not valid: {exc.reason}") from None


class Operations:
    """The actions one operator takes on one terminal, through one front end."""

    def __init__(self, terminal: Terminal, actor: Actor) -> None:
        self.terminal = terminal
        self.actor = actor

    # The policy and the action log --------------------------------------------

    def decide(self, action: str, **context: Any) -> Decision:
        return policy.decide(self.actor, action, **context)

    def require(self, action: str, **context: Any) -> Decision:
        """Refuse (``NotPermitted``) unless the policy allows ``action`` (or holds it)."""
        return policy.require(self.actor, action, **context)

    def may(self, action: str, **context: Any) -> bool:
        return self.decide(action, **context).allowed

    def _log(self, conn: Connection, action: str, subject: str, detail: Any = None) -> None:
        conn.execute(
            insert(m.operator_actions).values(
                at=self.terminal.clock(),
                operator=self.actor.name,
                role=self.actor.role,
                via=self.actor.via,
                action=action,
                subject=subject[:500],
                detail=None if detail is None else json.dumps(detail, ensure_ascii=False),
            )
        )
        log.info(
            "operator_action",
            operator=self.actor.name,
            role=self.actor.role,
            via=self.actor.via,
            action=action,
            subject=subject,
        )

    def note(self, action: str, subject: str, detail: Any = None) -> None:
        """Log an action that changes nothing else (a login, a verification, an export)."""
        with self.terminal.engine.begin() as conn:
            self._log(conn, action, subject, detail)

    # Sending --------------------------------------------------------------------

    def send(
        self,
        to: Sequence[str],
        *,
        kind: str,
        body: dict[str, JSONValue],
        channel: str | None = None,
        precedence: str = "ROUTINE",
        exercise: bool = False,
        lang: str = "en",
    ) -> dict[str, Any]:
        """Send a message, or hold a duty officer's FLASH for a supervisor.

        Returns the send's result (``id``, ``channel``, ``seq``, ``log_index``),
        or ``{"held": N}`` for a held FLASH.
        """
        draft = Draft(
            tuple(to),
            kind=kind,
            body=body,
            operator=self.actor.name,
            channel=channel,
            precedence=precedence,
            exercise=exercise,
            lang=lang,
        )
        return self.send_many([draft])[0]

    def send_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one ``POST /api/v1/messages`` request (text or form)."""
        kind, body = build_body(
            request.get("text"),
            request.get("form"),
            request.get("data"),
            request.get("form_version"),
        )
        return self.send(
            list(request["to"]),
            kind=kind,
            body=body,
            channel=request.get("channel"),
            precedence=str(request.get("precedence", "ROUTINE")).upper(),
            exercise=bool(request.get("exercise", False)),
            lang=str(request.get("lang", "en")),
        )

    def send_many(self, drafts: Sequence[Draft]) -> list[dict[str, Any]]:
        """Send several messages in one transaction (all or none); a duty
        officer's FLASH among them is held, in the same transaction."""
        verdicts = [self.require("send", precedence=d.precedence) for d in drafts]
        terminal = self.terminal
        to_send = [
            (n, Draft(**{**_fields(d), "operator": self.actor.name}))
            for n, (d, v) in enumerate(zip(drafts, verdicts, strict=True))
            if v.allowed
        ]
        to_hold = [(n, d) for n, (d, v) in enumerate(zip(drafts, verdicts, strict=True)) if v.held]
        results: list[dict[str, Any]] = [{} for _ in drafts]
        held_ids: list[int] = []

        def hold_and_log(conn: Connection) -> None:
            for n, draft in to_hold:
                key = conn.execute(
                    insert(m.held_messages).values(
                        created_at=terminal.clock(),
                        operator=self.actor.name,
                        request=json.dumps(_held_request(draft), ensure_ascii=False),
                        state="held",
                    )
                ).inserted_primary_key
                assert key is not None
                held = int(key[0])
                held_ids.append(held)
                results[n] = {"held": held, "state": "held", "precedence": "FLASH"}
                self._log(
                    conn,
                    "hold",
                    f"held:{held}",
                    {"to": sorted(set(draft.to)), "kind": draft.kind, "precedence": "FLASH"},
                )

        if not to_send:
            with terminal.engine.begin() as conn:
                hold_and_log(conn)
            return results

        def log_sent(conn: Connection) -> None:
            hold_and_log(conn)
            rows = _last_sent(conn, len(to_send))
            for (_, draft), row in zip(to_send, rows, strict=True):
                self._log(
                    conn,
                    "send",
                    row.envelope_id,
                    {
                        "to": sorted(set(draft.to)),
                        "kind": draft.kind,
                        "precedence": draft.precedence,
                        "channel": row.channel,
                    },
                )

        with terminal.joined(log_sent):
            sent = terminal.send_many([d for _, d in to_send])
        for (n, _), result in zip(to_send, sent, strict=True):
            results[n] = result
        return results

    # Held FLASH -----------------------------------------------------------------

    def held(self, held_id: int) -> Any:
        self.require("read")
        with reading(self.terminal.engine) as conn:
            row = conn.execute(
                select(m.held_messages).where(m.held_messages.c.id == held_id)
            ).first()
        if row is None:
            raise UsageError(f"no held message {held_id}")
        return row

    def held_messages(self) -> list[dict[str, Any]]:
        """FLASH messages waiting for a supervisor, oldest first."""
        self.require("read")
        with reading(self.terminal.engine) as conn:
            rows = conn.execute(
                select(m.held_messages)
                .where(m.held_messages.c.state == "held")
                .order_by(m.held_messages.c.id)
            ).all()
        result = []
        for r in rows:
            request = json.loads(r.request)
            result.append(
                {
                    "id": r.id,
                    "operator": r.operator,
                    "created_at": r.created_at.isoformat() if r.created_at else None,
                    "to": request.get("to", []),
                    "channel": request.get("channel"),
                    "kind": request.get("kind"),
                    "body": request.get("body"),
                    "precedence": request.get("precedence"),
                    "exercise": bool(request.get("exercise")),
                }
            )
        return result

    def release(self, held_id: int) -> dict[str, Any]:
        """Send a held FLASH: the message, the held row and the log in one transaction."""
        self.require("release_flash")
        terminal = self.terminal
        with terminal.lock:  # two supervisors releasing at once: one sends, one is refused
            row = self.held(held_id)
            if row.state != "held":
                raise AlreadyDecided(
                    f"held message {held_id} is already {row.state}",
                    held=str(held_id),
                    state=row.state,
                )
            request = json.loads(row.request)

            def released(conn: Connection) -> None:
                between_release_steps(held_id)
                (message,) = _last_sent(conn, 1)
                done = conn.execute(
                    update(m.held_messages)
                    .where(and_(m.held_messages.c.id == held_id, m.held_messages.c.state == "held"))
                    .values(
                        state="released",
                        decided_by=self.actor.name,
                        decided_at=terminal.clock(),
                        envelope_id=message.envelope_id,
                    )
                ).rowcount
                if not done:
                    raise AlreadyDecided(
                        f"held message {held_id} was decided by someone else",
                        held=str(held_id),
                        state="decided",
                    )
                self._log(
                    conn,
                    "release",
                    message.envelope_id,
                    {"held": held_id, "channel": message.channel, "author": row.operator},
                )

            draft = Draft(
                tuple(request["to"]),
                kind=request["kind"],
                body=request["body"],
                operator=row.operator,
                channel=request["channel"],
                precedence=request["precedence"],
                exercise=request["exercise"],
                lang=request["lang"],
            )
            with terminal.joined(released):
                (result,) = terminal.send_many([draft])
        return result

    def reject(self, held_id: int) -> dict[str, Any]:
        """Withdraw a held FLASH (a supervisor, or the officer who wrote it)."""
        row = self.held(held_id)
        self.require("reject_flash", author=row.operator)
        with self.terminal.engine.begin() as conn:
            done = conn.execute(
                update(m.held_messages)
                .where(and_(m.held_messages.c.id == held_id, m.held_messages.c.state == "held"))
                .values(
                    state="cancelled", decided_by=self.actor.name, decided_at=self.terminal.clock()
                )
            ).rowcount
            if not done:
                raise AlreadyDecided(
                    f"held message {held_id} was decided by someone else",
                    held=str(held_id),
                    state="decided",
                )
            self._log(conn, "cancel", f"held:{held_id}", {"author": row.operator})
        return {"held": held_id, "state": "cancelled"}

    # Messages -------------------------------------------------------------------

    def acknowledge(self, envelope_id: str) -> dict[str, Any]:
        self.require("acknowledge")

        def logged(conn: Connection) -> None:
            (ack,) = _last_sent(conn, 1)
            self._log(conn, "ack", envelope_id, {"ack": ack.envelope_id})

        with self.terminal.joined(logged):
            return self.terminal.acknowledge(envelope_id, operator=self.actor.name)

    def certify_translation(self, envelope_id: str, *, lang: str, text: str) -> dict[str, Any]:
        self.require("certify_translation")
        with self.terminal.joined(
            lambda conn: self._log(conn, "translation_certify", envelope_id, {"lang": lang})
        ):
            return self.terminal.certify_translation(
                envelope_id, target_lang=lang, text=text, operator=self.actor.name
            )

    def countersign_translation(self, digest: str) -> dict[str, Any]:
        self.require("countersign_translation")
        with self.terminal.joined(lambda conn: self._log(conn, "translation_countersign", digest)):
            return self.terminal.countersign_translation(digest, operator=self.actor.name)

    # Channels -------------------------------------------------------------------

    def create_channel(self, name: str, members: Sequence[str]) -> dict[str, Any]:
        self.require("create_channel")
        with self.terminal.joined(
            lambda conn: self._log(
                conn, "channel_propose", name, {"members": sorted({*members, self.terminal.me})}
            )
        ):
            return self.terminal.create_channel(name, members, operator=self.actor.name)

    def agree_channel(self, name: str) -> dict[str, Any]:
        self.require("agree_channel")
        with self.terminal.joined(lambda conn: self._log(conn, "channel_agree", name)):
            return self.terminal.agree_channel(name, operator=self.actor.name)

    # Peers and links ------------------------------------------------------------

    def add_peer(
        self, bundle: CardBundle, fingerprint: str, links: Sequence[tuple[str, str]]
    ) -> Any:
        """Pin a peer (``pin_peer``), or point a pinned peer's links elsewhere
        (``repoint_link``)."""
        party = bundle.card.party
        known = party in self.terminal.party.peers
        self.require("repoint_link" if known else "pin_peer")
        action = "links_set" if known else "peer_pin"
        with self.terminal.joined(
            lambda conn: self._log(
                conn,
                action,
                party,
                {"fingerprint": bundle.card.fingerprint, "links": [list(li) for li in links]},
            )
        ):
            return self.terminal.add_peer(bundle, fingerprint, links)

    # Keys -------------------------------------------------------------------------

    def rotate_keys(self, *, validity_days: int | None = None) -> dict[str, Any]:
        """Replace the terminal's signature keys by a new card (``rotate_keys``)."""
        self.require("rotate_keys")
        version = self.terminal.identity.card.version
        with self.terminal.joined(
            lambda conn: self._log(conn, "keys_rotate", self.terminal.me, {"from": version})
        ):
            return self.terminal.rotate_keys(validity_days=validity_days)

    def revoke_keys(
        self,
        *,
        reason: str,
        compromised_at: datetime | None = None,
        version: int | None = None,
        certificate: str | None = None,
    ) -> dict[str, Any]:
        """Revoke one of the terminal's own cards (``revoke_keys``)."""
        self.require("revoke_keys")
        with self.terminal.joined(
            lambda conn: self._log(
                conn,
                "keys_revoke",
                self.terminal.me,
                {"version": version, "reason": reason, "offline": certificate is not None},
            )
        ):
            return self.terminal.revoke_keys(
                reason=reason,
                compromised_at=compromised_at,
                version=version,
                certificate=certificate,
            )

    def import_revocation(self, statement: bytes) -> dict[str, Any]:
        """Take in a revocation a peer handed over (``revoke_keys``)."""
        self.require("revoke_keys")
        result: dict[str, Any] = self.terminal.import_revocation(statement)
        self.note("revocation_import", str(result["party"]), result)
        return result

    def note_links_test(self) -> None:
        """Log a link test the front end started (``test_links``)."""
        self.require("test_links")
        self.note("links_test", self.terminal.me)

    def note_recovery(self, report: dict[str, Any]) -> None:
        """Log a recovery of the log from the peers the front end started (``recover``)."""
        self.require("recover")
        self.note(
            "recover",
            self.terminal.me,
            {k: report.get(k) for k in ("before", "target", "after", "complete")},
        )

    # Operators ------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> dict[str, Any]:
        self.require("manage_operators")
        with self.terminal.engine.begin() as conn:
            account = add_user_in(conn, name, role, password, now=self.terminal.clock())
            self._log(conn, "user_add", name, {"role": role})
        return {"name": account.name, "role": account.role}

    def unlock_user(self, name: str) -> dict[str, Any]:
        self.require("manage_operators")
        with self.terminal.engine.begin() as conn:
            unlock_user_in(conn, name)
            self._log(conn, "user_unlock", name)
        return {"name": name, "unlocked": True}

    def set_language(self, lang: str) -> None:
        """An operator's own console language (every operator may choose theirs)."""
        self.require("read")
        with self.terminal.engine.begin() as conn:
            conn.execute(update(m.users).where(m.users.c.name == self.actor.name).values(lang=lang))
            self._log(conn, "language", lang)

    # Alarms ---------------------------------------------------------------------

    def clear_alarm(self, alarm_id: int) -> dict[str, Any] | None:
        """Clear one uncleared alarm; None if there is no such uncleared alarm."""
        self.require("clear_alarm")
        cols = m.alarms.c
        with self.terminal.engine.begin() as conn:
            row = conn.execute(select(m.alarms).where(cols.id == alarm_id)).first()
            if row is None or row.cleared_at is not None:
                return None
            done = conn.execute(
                update(m.alarms)
                .where(and_(cols.id == alarm_id, cols.cleared_at.is_(None)))
                .values(cleared_at=self.terminal.clock())
            )
            if not done.rowcount:
                return None
            cleared = {
                "id": row.id,
                "kind": row.kind,
                "subject": row.subject,
                "severity": row.severity,
            }
            self._log(conn, "alarm_clear", str(alarm_id), cleared)
        return cleared

    # Evidence and verification --------------------------------------------------

    def verify(self) -> AuditReport:
        """Audit the whole record (``parley verify``) and log that it was done."""
        from parley.service.audit import audit

        self.require("verify")
        report = audit(self.terminal.engine, self.terminal.identity.card)
        summary = report.summary()
        detail = {k: v for k, v in summary.items() if k != "failures"}
        self.note("verify", self.terminal.me, {**detail, "failures": len(report.failures)})
        return report

    def note_export(self, log_size: int) -> None:
        """Log an evidence export (``export_evidence``, checked before it was made)."""
        self.require("export_evidence")
        self.note("export", self.terminal.me, {"log_size": log_size})

    # Shift handover -------------------------------------------------------------

    def sign_off(self, note: str) -> int:
        """Sign off the watch with what is open now (``open_items``); returns the
        handover's id."""
        from parley.service.handover import open_items

        self.require("handover")
        items = open_items(self.terminal)
        with self.terminal.engine.begin() as conn:
            key = conn.execute(
                m.handovers.insert().values(
                    signed_off_by=self.actor.name,
                    signed_off_at=self.terminal.clock(),
                    open_items=json.dumps(items, ensure_ascii=False, sort_keys=True),
                    note=note,
                )
            ).inserted_primary_key
            assert key is not None
            handover_id = int(key[0])
            self._log(
                conn,
                "handover_sign_off",
                str(handover_id),
                {"open": {k: len(v) for k, v in items.items()}},
            )
        return handover_id

    def accept_handover(self, handover_id: int) -> str | None:
        """Accept a handover; None, or why it was refused (no_handover,
        already_accepted, own_handover)."""
        self.require("handover")
        cols = m.handovers.c
        operator = self.actor.name
        with self.terminal.engine.begin() as conn:
            row = conn.execute(select(m.handovers).where(cols.id == handover_id)).first()
            if row is None:
                return "no_handover"
            if row.accepted_by is not None:
                return "already_accepted"
            if row.signed_off_by == operator:
                return "own_handover"
            done = conn.execute(
                update(m.handovers)
                .where(
                    and_(
                        cols.id == handover_id,
                        cols.accepted_by.is_(None),
                        cols.signed_off_by != operator,
                    )
                )
                .values(accepted_by=operator, accepted_at=self.terminal.clock())
            )
            if not done.rowcount:
                return "already_accepted"
            self._log(conn, "handover_accept", str(handover_id))
        return None


def _last_sent(conn: Connection, n: int) -> list[Any]:
    """The last ``n`` messages this terminal sent, oldest first. Read inside the
    transaction storing them, under the terminal's lock: they are the ones just sealed."""
    cols = m.messages.c
    rows = conn.execute(
        select(cols.envelope_id, cols.channel)
        .where(cols.direction == "out")
        .order_by(cols.log_index.desc())
        .limit(n)
    ).all()
    return list(reversed(rows))


def _fields(draft: Draft) -> dict[str, Any]:
    return {
        "to": draft.to,
        "kind": draft.kind,
        "body": draft.body,
        "operator": draft.operator,
        "channel": draft.channel,
        "precedence": draft.precedence,
        "exercise": draft.exercise,
        "lang": draft.lang,
        "via": draft.via,
    }


def _held_request(draft: Draft) -> dict[str, Any]:
    return {
        "to": sorted(set(draft.to)),
        "channel": draft.channel,
        "precedence": draft.precedence,
        "exercise": draft.exercise,
        "kind": draft.kind,
        "body": draft.body,
        "lang": draft.lang,
    }
