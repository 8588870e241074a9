"""One operator-client interface for the CLI, with an HTTP and a local implementation.

Each command of ``parley`` acts through an ``OperatorClient``: ``HttpClient``
when the terminal runs (its operator API, as ``parley serve`` serves it), or
``LocalClient`` on the database directly when it does not. Both give the same
shapes (the operator API's JSON), act for one operator, and are checked by the
terminal's one policy.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

import httpx

from parley.config import DataDir
from parley.service.operations import Operations
from parley.service.policy import Actor
from parley.service.reads import Records
from parley.service.terminal import CardBundle, Terminal

__all__ = [
    "Failure",
    "HttpClient",
    "LocalClient",
    "OperatorClient",
    "api_error",
    "fail",
]


class Failure(Exception):
    """What a command could not do, as an ``error_body``; ``parley.cli.main`` reports it."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["message"])
        self.body = body


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop with one line on stderr and exit ``code`` (2: a mistake in the command)."""
    raise Failure(
        {
            "error": "usage_error" if code == 2 else "failed",
            "culprit": "us",
            "usage": code == 2,
            "message": message,
        }
    )


def api_error(response: httpx.Response) -> dict[str, Any]:
    """The ``error_body`` in an error answer of the operator API (or one made up for it)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), dict):
        body = body["detail"]  # an HTTPException of an older terminal
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return {
            "error": str(body.get("error", "failed")),
            "culprit": str(body.get("culprit", "us")),
            "usage": bool(body.get("usage", False)),
            "message": body["message"],
        }
    return {
        "error": f"http_{response.status_code}",
        "culprit": "us",
        "usage": False,
        "message": f"the running terminal answered HTTP {response.status_code}",
    }


class OperatorClient(Protocol):
    """What an operator does on a terminal, running or not (the operator API's shapes)."""

    # Messages
    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one message (a ``POST /messages`` request): ``{"id"}``, or ``{"held": N}``."""
        ...

    def inbox(self, *, all_kinds: bool) -> list[dict[str, Any]]:
        """Messages received (with ``all_kinds``: acks, link tests, key announcements too)."""
        ...

    def show(self, envelope_id: str) -> dict[str, Any]:
        """One message, its receipts and its acknowledgement status."""
        ...

    def machine_translation(self, item: dict[str, Any], lang: str) -> dict[str, Any]:
        """``{"machine_translation", "untranslated"}`` for a free-text message into ``lang``."""
        ...

    def acknowledge(self, envelope_id: str) -> dict[str, Any]:
        """Acknowledge a received message: ``{"id"}`` of the acknowledgement."""
        ...

    # Links, status, recovery, alarms
    def links(self) -> list[dict[str, Any]]: ...

    def test_links(self) -> dict[str, Any]:
        """Test every link now (the running terminal only): ``{"queued": N}``."""
        ...

    def status(self) -> dict[str, Any]: ...

    def recover(self) -> dict[str, Any]:
        """Rebuild the log's missing tail from the peers (the running terminal only)."""
        ...

    def alarms(self) -> list[dict[str, Any]]: ...

    def clear_alarm(self, alarm_id: int) -> None: ...

    # Channels
    def channels(self) -> list[dict[str, Any]]: ...

    def create_channel(self, name: str, members: list[str]) -> dict[str, Any]: ...

    def agree_channel(self, name: str) -> None: ...

    # Peers and keys
    def peers(self) -> list[dict[str, Any]]: ...

    def add_peer(
        self, bundle: CardBundle, raw: bytes, fingerprint: str, links: list[tuple[str, str]]
    ) -> None: ...

    def import_revocation(self, raw: bytes) -> dict[str, Any]: ...

    def keys_status(self) -> dict[str, Any]: ...

    def rotate_keys(self, *, validity_days: int | None) -> dict[str, Any]: ...

    def revoke_keys(
        self,
        *,
        reason: str,
        version: int | None,
        certificate: str | None,
        compromised_at: datetime | None,
    ) -> dict[str, Any]: ...

    # Certified translations
    def certify_translation(self, envelope_id: str, *, lang: str, text: str) -> dict[str, Any]: ...

    def countersign_translation(self, digest: str) -> None: ...

    # Exchanges
    def exchanges(self) -> list[dict[str, Any]]: ...

    def exchange(self, exchange_id: str) -> dict[str, Any] | None:
        """One exchange's view, or None if this terminal holds no such exchange."""
        ...

    # Operator accounts
    def users(self) -> list[dict[str, Any]]: ...

    def add_user(self, name: str, role: str, password: str) -> None: ...

    def unlock_user(self, name: str) -> None: ...

    # Held FLASH
    def held(self) -> list[dict[str, Any]]: ...

    def release_held(self, held_id: int) -> dict[str, Any]: ...

    def reject_held(self, held_id: int) -> None: ...

    # Evidence
    def export_evidence(self, out_file: Path) -> None:
        """Write the evidence bundle to ``out_file`` (only once the export is allowed).

        Raises ``OSError`` when the file cannot be written.
        """
        ...


class HttpClient:
    """The running terminal's operator API, as an operator account or the local administrator."""

    def __init__(
        self, url: str, headers: dict[str, str], *, certificate: str | None = None
    ) -> None:
        # Over TLS the certificate the running terminal presents (in serve.json) is the
        # one trusted, and no other.
        verify: Any = True
        if certificate is not None:
            from parley.service.console_tls import client_context

            verify = client_context(certificate.encode())
        self.client = httpx.Client(
            base_url=url, headers={**headers, "x-parley-via": "cli"}, timeout=60, verify=verify
        )

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.client.request(method, "/api/v1" + path, json=body)
        except httpx.HTTPError as exc:
            fail(f"the running terminal did not answer: {exc}")
        if response.status_code >= 400:
            raise Failure(api_error(response))
        return response.json()

    def object(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """``call`` whose answer is one JSON object."""
        answer: dict[str, Any] = self.call(method, path, body)
        return answer

    def rows(self, method: str, path: str, body: Any = None) -> list[dict[str, Any]]:
        """``call`` whose answer is a JSON array of objects."""
        answer: list[dict[str, Any]] = self.call(method, path, body)
        return answer

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.object("POST", "/messages", request)

    def inbox(self, *, all_kinds: bool) -> list[dict[str, Any]]:
        return self.rows("GET", f"/inbox?all={str(all_kinds).lower()}")

    def show(self, envelope_id: str) -> dict[str, Any]:
        return self.object("GET", f"/messages/{envelope_id}")

    def machine_translation(self, item: dict[str, Any], lang: str) -> dict[str, Any]:
        return self.object("GET", f"/messages/{item['id']}/machine-translation?lang={lang}")

    def acknowledge(self, envelope_id: str) -> dict[str, Any]:
        return self.object("POST", f"/messages/{envelope_id}/ack")

    def links(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/links")

    def test_links(self) -> dict[str, Any]:
        return self.object("POST", "/links/test")

    def status(self) -> dict[str, Any]:
        return self.object("GET", "/status")

    def recover(self) -> dict[str, Any]:
        return self.object("POST", "/recover")

    def alarms(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/alarms")

    def clear_alarm(self, alarm_id: int) -> None:
        self.call("POST", f"/alarms/{alarm_id}/clear")

    def channels(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/channels")

    def create_channel(self, name: str, members: list[str]) -> dict[str, Any]:
        return self.object("POST", "/channels", {"name": name, "members": members})

    def agree_channel(self, name: str) -> None:
        self.call("POST", f"/channels/{name}/agree")

    def peers(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/peers")

    def add_peer(
        self, bundle: CardBundle, raw: bytes, fingerprint: str, links: list[tuple[str, str]]
    ) -> None:
        self.call(
            "POST", "/peers", {"card": json.loads(raw), "fingerprint": fingerprint, "links": links}
        )

    def import_revocation(self, raw: bytes) -> dict[str, Any]:
        return self.object("POST", "/peers/revocations", {"revocation": json.loads(raw)})

    def keys_status(self) -> dict[str, Any]:
        return self.object("GET", "/keys")

    def rotate_keys(self, *, validity_days: int | None) -> dict[str, Any]:
        return self.object("POST", "/keys/rotate", {"validity_days": validity_days})

    def revoke_keys(
        self,
        *,
        reason: str,
        version: int | None,
        certificate: str | None,
        compromised_at: datetime | None,
    ) -> dict[str, Any]:
        return self.object(
            "POST",
            "/keys/revoke",
            {
                "reason": reason,
                "version": version,
                "certificate": certificate,
                "compromised_at": compromised_at.isoformat() if compromised_at else None,
            },
        )

    def certify_translation(self, envelope_id: str, *, lang: str, text: str) -> dict[str, Any]:
        return self.object(
            "POST", f"/messages/{envelope_id}/translations", {"lang": lang, "text": text}
        )

    def countersign_translation(self, digest: str) -> None:
        self.call("POST", f"/translations/{digest}/countersign")

    def exchanges(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/exchanges")

    def exchange(self, exchange_id: str) -> dict[str, Any] | None:
        if exchange_id not in {e["exchange_id"] for e in self.exchanges()}:
            return None
        return self.object("GET", f"/exchanges/{exchange_id}")

    def users(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/users")

    def add_user(self, name: str, role: str, password: str) -> None:
        self.call("POST", "/users", {"name": name, "role": role, "password": password})

    def unlock_user(self, name: str) -> None:
        self.call("POST", f"/users/{name}/unlock")

    def held(self) -> list[dict[str, Any]]:
        return self.rows("GET", "/held")

    def release_held(self, held_id: int) -> dict[str, Any]:
        return self.object("POST", f"/held/{held_id}/release")

    def reject_held(self, held_id: int) -> None:
        self.call("POST", f"/held/{held_id}/reject")

    def export_evidence(self, out_file: Path) -> None:
        with self.client.stream("GET", "/api/v1/evidence") as response:
            if response.status_code >= 400:
                response.read()
                raise Failure(api_error(response))
            with out_file.open("wb") as sink:  # only once the export is allowed
                for chunk in response.iter_bytes():
                    sink.write(chunk)


class LocalClient:
    """The terminal's database directly, for one authenticated operator.

    ``records`` is the read side alone, or the whole ``Terminal`` (with its
    keys) for what signs, sends or changes anything.
    """

    def __init__(self, data: DataDir, records: Records, actor: Actor) -> None:
        self.data = data
        self.records = records
        self.actor = actor

    def close(self) -> None:
        """Nothing to close: whoever opened the records disposes of their engine."""

    def _ops(self) -> Operations:
        """The operations of the operator on the terminal (opened with its keys)."""
        assert isinstance(self.records, Terminal)
        return Operations(self.records, self.actor)

    def _terminal(self) -> Terminal:
        assert isinstance(self.records, Terminal)
        return self.records

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._ops().send_request(request)

    def inbox(self, *, all_kinds: bool) -> list[dict[str, Any]]:
        return self.records.messages("in", all_kinds=all_kinds)

    def show(self, envelope_id: str) -> dict[str, Any]:
        return self.records.show(envelope_id)

    def machine_translation(self, item: dict[str, Any], lang: str) -> dict[str, Any]:
        from parley.forms.translate import machine_translation_of, translator_for

        return machine_translation_of(translator_for(self.data.load_config()), item, lang)

    def acknowledge(self, envelope_id: str) -> dict[str, Any]:
        return self._ops().acknowledge(envelope_id)

    def links(self) -> list[dict[str, Any]]:
        return self.records.links()

    def test_links(self) -> dict[str, Any]:
        fail("links are tested by the running terminal: start it with `parley serve`")

    def status(self) -> dict[str, Any]:
        return self._terminal().status()

    def recover(self) -> dict[str, Any]:
        fail("recovery asks the peers over the links: start the terminal with `parley serve`")

    def alarms(self) -> list[dict[str, Any]]:
        return self.records.alarms()

    def clear_alarm(self, alarm_id: int) -> None:
        if self._ops().clear_alarm(alarm_id) is None:
            fail(f"there is no uncleared alarm {alarm_id}")

    def channels(self) -> list[dict[str, Any]]:
        return self.records.channels()

    def create_channel(self, name: str, members: list[str]) -> dict[str, Any]:
        return self._ops().create_channel(name, members)

    def agree_channel(self, name: str) -> None:
        self._ops().agree_channel(name)

    def peers(self) -> list[dict[str, Any]]:
        return self.records.peers()

    def add_peer(
        self, bundle: CardBundle, raw: bytes, fingerprint: str, links: list[tuple[str, str]]
    ) -> None:
        self._ops().add_peer(bundle, fingerprint, links)

    def import_revocation(self, raw: bytes) -> dict[str, Any]:
        return self._ops().import_revocation(raw)

    def keys_status(self) -> dict[str, Any]:
        return self.records.keys_status()

    def rotate_keys(self, *, validity_days: int | None) -> dict[str, Any]:
        return self._ops().rotate_keys(validity_days=validity_days)

    def revoke_keys(
        self,
        *,
        reason: str,
        version: int | None,
        certificate: str | None,
        compromised_at: datetime | None,
    ) -> dict[str, Any]:
        return self._ops().revoke_keys(
            reason=reason, compromised_at=compromised_at, version=version, certificate=certificate
        )

    def certify_translation(self, envelope_id: str, *, lang: str, text: str) -> dict[str, Any]:
        return self._ops().certify_translation(envelope_id, lang=lang, text=text)

    def countersign_translation(self, digest: str) -> None:
        self._ops().countersign_translation(digest)

    def exchanges(self) -> list[dict[str, Any]]:
        from parley.service.exchanges import exchange_summaries

        return exchange_summaries(self.records)

    def exchange(self, exchange_id: str) -> dict[str, Any] | None:
        from parley.service.exchanges import exchange_view

        if exchange_id not in {e["exchange_id"] for e in self.exchanges()}:
            return None
        return exchange_view(self.records, exchange_id)

    def users(self) -> list[dict[str, Any]]:
        from parley.service.policy import require
        from parley.service.terminal import utc_now
        from parley.service.users import list_users

        require(self.actor, "manage_operators")
        return list_users(self.records.engine, now=utc_now())

    def add_user(self, name: str, role: str, password: str) -> None:
        self._ops().add_user(name, role, password)

    def unlock_user(self, name: str) -> None:
        self._ops().unlock_user(name)

    def held(self) -> list[dict[str, Any]]:
        return self._ops().held_messages()

    def release_held(self, held_id: int) -> dict[str, Any]:
        return self._ops().release(held_id)

    def reject_held(self, held_id: int) -> None:
        self._ops().reject(held_id)

    def export_evidence(self, out_file: Path) -> None:
        from parley.service.evidence import evidence_bundle

        operations = self._ops()
        operations.require("export_evidence")
        terminal = operations.terminal
        size, chunks = evidence_bundle(
            terminal.engine,
            terminal.identity.card.signed_bytes,
            party=terminal.me,
            operator=operations.actor.name,
            now=terminal.clock(),
        )
        with out_file.open("wb") as sink:
            for chunk in chunks:
                sink.write(chunk)
        operations.note_export(size)
