"""The console listener's JSON operator API (``/api/v1``), used by the CLI.

Plain HTTP on a loopback address, or HTTPS (``console.tls``, required
anywhere else: ``parley.config.check_console_listen``);
``parley.service.console_guard`` refuses other ``Host`` names and cross-site
changes before any route runs, and adds HSTS over TLS.

Every request names who makes it, in one of two ways:

* an operator account (HTTP ``Basic``: name and password; Argon2id, locked
  after repeated failures), acting in the account's role;
* the console token kept in ``DIR/console.token`` (``Bearer``): the **local
  administrator**, whoever can read the data directory, equal to root. Its
  name for the action log travels in ``X-Parley-Operator``.

``GET /metrics`` (Prometheus) is the exception: it takes the console token or
a scrape token (``parley metrics token``) only, never an operator account
(``parley.service.metrics``).

The CLI adds ``X-Parley-Via: cli`` so the action log names the front end used.

Every route goes through the operations layer (``parley.service.operations``):
the terminal's one policy decides (a refusal is ``403``; a duty officer's
FLASH is answered ``202`` and held for a supervisor) and every change is
logged with the operator's name, role and ``via: api`` in its own transaction.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from parley.config import check_console_listen, console_hosts
from parley.console.web import api_error, http_error_page
from parley.core.forms import LANGS
from parley.errors import ParleyError, UsageError
from parley.forms.translate import machine_translation_of, translator_for
from parley.service.console_guard import ConsoleGuard
from parley.service.metrics import exposition, metrics_actor, registry_for
from parley.service.operations import Operations, build_body
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.terminal import CardBundle, Draft, Terminal
from parley.service.users import AuthenticationFailed, authenticate

__all__ = ["build_body", "create_console_app"]


#: The most messages one batch request may carry (one transaction on disk).
MAX_BATCH = 5000


class SendRequest(BaseModel):
    to: list[str] = Field(min_length=1)
    channel: str | None = None
    precedence: Literal["FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE"] = "ROUTINE"
    exercise: bool = False
    text: str | None = None
    form: str | None = None
    data: dict[str, Any] | None = None
    form_version: int | None = None
    lang: str = "en"


class TranslationRequest(BaseModel):
    lang: str = Field(min_length=2, max_length=35)
    text: str = Field(min_length=1, max_length=256 * 1024)


class BatchRequest(BaseModel):
    messages: list[SendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class PeerRequest(BaseModel):
    card: dict[str, Any]
    fingerprint: str
    links: list[tuple[str, str]] = Field(default_factory=list)


class RotateRequest(BaseModel):
    validity_days: int | None = Field(default=None, ge=1)


class RevokeRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)
    compromised_at: datetime | None = None
    version: int | None = Field(default=None, ge=1)
    #: The revocation certificate from the safe (one line), to revoke the card in use.
    certificate: str | None = Field(default=None, max_length=4096)


class RevocationRequest(BaseModel):
    revocation: dict[str, Any]


class ChannelRequest(BaseModel):
    name: str
    members: list[str] = Field(min_length=1)


class UserRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str
    password: str = Field(min_length=1, max_length=1024)


def validation_message(errors: Sequence[Any]) -> str:
    """A request body's validation errors in one sentence: ``precedence: Input should be …``."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "the request"
        given = f" (not {error['input']!r})" if isinstance(error.get("input"), str) else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{given}")
    return "; ".join(parts) or "the request is not valid"


def _actor(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_parley_operator: Annotated[str | None, Header()] = None,
    x_parley_via: Annotated[str | None, Header()] = None,
) -> Operations:
    """Authenticate the caller: an operator account (``Basic``) or the local
    administrator (``Bearer`` console token); their operations on this terminal."""
    terminal: Terminal = request.app.state.terminal
    via = "cli" if x_parley_via == "cli" else "api"  # the action log's front end
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            name, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            account = authenticate(terminal.engine, name, password, now=terminal.clock())
        except (ValueError, UnicodeDecodeError, AuthenticationFailed) as exc:
            structlog.get_logger("parley.console").warning("login_failed", reason=str(exc))
            raise HTTPException(
                401, {"error": "unauthorized", "message": "wrong name or password, or locked"}
            ) from None
        return Operations(terminal, Actor(account.name, account.role, via))
    token: str = request.app.state.token
    supplied = credentials.strip() if scheme.lower() == "bearer" else ""
    if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
        raise HTTPException(401, {"error": "unauthorized", "message": "bad or missing token"})
    return Operations(terminal, Actor((x_parley_operator or "operator")[:64], LOCAL_ADMIN, via))


Ops = Annotated[Operations, Depends(_actor)]


async def _read(ops: Operations) -> None:
    await run_in_threadpool(ops.require, "read")


def create_console_app(
    terminal: Terminal,
    token: str,
    *,
    hosts: Collection[str] | None = None,
    tls: bool | None = None,
) -> FastAPI:
    """The operator API and the console, answering only as one of ``hosts``.

    ``hosts`` are the ``Host`` headers accepted (``127.0.0.1:7080``…); by
    default those of the configured ``console.listen`` address and
    ``console.names``. ``tls`` (by default ``console.tls``): the listener
    speaks HTTPS, so every answer carries HSTS and the session cookie is a
    ``__Host-`` cookie.
    """
    config = terminal.config
    if tls is None:
        tls = config.console_tls
    if hosts is None:
        host, port = check_console_listen(
            config.console_listen, tls=tls, names=config.console_names
        )
        hosts = console_hosts(host, port, config.console_names)
    app = FastAPI(
        title=f"Parley operator API ({terminal.me})",
        version="v1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )

    app.state.token = token
    app.state.terminal = terminal
    app.state.tls = tls
    app.add_middleware(ConsoleGuard, hosts=hosts, tls=tls)

    @app.exception_handler(ParleyError)
    async def parley_error(request: Request, exc: ParleyError) -> JSONResponse:
        return api_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if not request.url.path.startswith("/api/"):
            return http_error_page(request, 400, validation_message(exc.errors()))
        return JSONResponse(
            {
                "error": "invalid_request",
                "culprit": "us",
                "usage": True,
                "message": validation_message(exc.errors()),
            },
            status_code=400,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not request.url.path.startswith("/api/"):
            return http_error_page(request, exc.status_code, exc.detail, exc.headers)
        detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
        return JSONResponse(
            {
                "error": str(detail.get("error", f"http_{exc.status_code}")),
                "culprit": "us",
                "usage": False,
                "message": str(detail.get("message", exc.detail)),
            },
            status_code=exc.status_code,
            headers=exc.headers,
        )

    metrics_registry = registry_for(terminal)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """The terminal's figures for Prometheus, read from its records now."""
        actor = metrics_actor(terminal.data, request.app.state.token, authorization)
        if actor is None:
            structlog.get_logger("parley.console").warning("metrics_refused")
            return Response(
                "a scrape token or the console token is needed (Bearer)\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="parley metrics"'},
            )
        body, content_type = await run_in_threadpool(
            exposition, metrics_registry, actor, request.headers.get("accept")
        )
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/status")
    async def status(ops: Ops) -> dict[str, Any]:
        await _read(ops)
        return await run_in_threadpool(terminal.status)

    @app.post("/api/v1/messages")
    async def send(ops: Ops, req: SendRequest, response: Response) -> dict[str, Any]:
        """Send a message; a duty officer's FLASH is held (``202``, ``{"held": N}``)."""
        result = await run_in_threadpool(ops.send_request, req.model_dump())
        if "held" in result:
            response.status_code = 202
        return result

    @app.post("/api/v1/messages/batch")
    async def send_batch(ops: Ops, req: BatchRequest) -> dict[str, Any]:
        """Queue several messages in one transaction: all are accepted, or none
        (a duty officer's FLASH among them is held, in the same transaction)."""
        drafts = []
        for n, item in enumerate(req.messages):
            try:
                kind, body = build_body(item.text, item.form, item.data, item.form_version)
            except UsageError as exc:
                raise UsageError(f"message {n + 1} of {len(req.messages)}: {exc}") from exc
            drafts.append(
                Draft(
                    tuple(item.to),
                    kind=kind,
                    body=body,
                    operator=ops.actor.name,
                    channel=item.channel,
                    precedence=item.precedence,
                    exercise=item.exercise,
                    lang=item.lang,
                )
            )
        results = await run_in_threadpool(ops.send_many, drafts)
        return {"messages": results}

    @app.get("/api/v1/inbox")
    async def inbox(ops: Ops, all: bool = False) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(lambda: terminal.messages("in", all_kinds=all))

    @app.get("/api/v1/outbox")
    async def outbox(ops: Ops, all: bool = False) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(lambda: terminal.messages("out", all_kinds=all))

    @app.get("/api/v1/messages/{envelope_id}")
    async def show(ops: Ops, envelope_id: str) -> dict[str, Any]:
        await _read(ops)
        return await run_in_threadpool(terminal.show, envelope_id)

    @app.get("/api/v1/messages/{envelope_id}/machine-translation")
    async def machine_translation(ops: Ops, envelope_id: str, lang: str) -> dict[str, Any]:
        """A free-text message machine-translated into ``lang``: a reading aid, labelled
        as such, never signed or stored (``parley.forms.translate``)."""
        await _read(ops)
        if lang not in LANGS:
            raise UsageError(f"lang must be one of {', '.join(LANGS)}, not {lang!r}")

        def translate() -> dict[str, Any]:
            return machine_translation_of(
                translator_for(terminal.config), terminal.show(envelope_id), lang
            )

        return await run_in_threadpool(translate)

    @app.post("/api/v1/messages/{envelope_id}/ack")
    async def ack(ops: Ops, envelope_id: str) -> dict[str, Any]:
        return await run_in_threadpool(ops.acknowledge, envelope_id)

    @app.post("/api/v1/messages/{envelope_id}/translations")
    async def certify(ops: Ops, envelope_id: str, req: TranslationRequest) -> dict[str, Any]:
        """Attach a certified translation, signed for this operator."""
        return await run_in_threadpool(
            lambda: ops.certify_translation(envelope_id, lang=req.lang, text=req.text)
        )

    @app.post("/api/v1/translations/{digest}/countersign")
    async def countersign(ops: Ops, digest: str) -> dict[str, Any]:
        """A second operator's check of a certified translation."""
        return await run_in_threadpool(ops.countersign_translation, digest)

    @app.get("/api/v1/held")
    async def held(ops: Ops) -> list[dict[str, Any]]:
        """FLASH messages held for a supervisor's release, oldest first."""
        return await run_in_threadpool(ops.held_messages)

    @app.post("/api/v1/held/{held_id}/release")
    async def release(ops: Ops, held_id: int) -> dict[str, Any]:
        """Send a held FLASH (a supervisor): sent, marked and logged in one transaction."""
        return await run_in_threadpool(ops.release, held_id)

    @app.post("/api/v1/held/{held_id}/reject")
    async def reject(ops: Ops, held_id: int) -> dict[str, Any]:
        """Withdraw a held FLASH (a supervisor, or the officer who wrote it)."""
        return await run_in_threadpool(ops.reject, held_id)

    @app.get("/api/v1/links")
    async def links(ops: Ops) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(terminal.links)

    @app.post("/api/v1/links/test")
    async def test_links(ops: Ops, request: Request) -> dict[str, Any]:
        await run_in_threadpool(ops.require, "test_links")
        worker = getattr(request.app.state, "worker", None)
        if worker is None:
            raise HTTPException(409, {"error": "not_serving", "message": "no delivery worker"})
        await worker.test_links()
        await run_in_threadpool(ops.note_links_test)
        return {"queued": len(await run_in_threadpool(terminal.links))}

    @app.post("/api/v1/recover")
    async def recover(ops: Ops, request: Request) -> dict[str, Any]:
        """Rebuild the missing tail of the log from the peers (docs/recovery.md)."""
        await run_in_threadpool(ops.require, "recover")
        worker = getattr(request.app.state, "worker", None)
        if worker is None:
            raise HTTPException(409, {"error": "not_serving", "message": "no delivery worker"})
        report: dict[str, Any] = (await worker.recover()).as_dict()
        await run_in_threadpool(ops.note_recovery, report)
        return report

    @app.get("/api/v1/alarms")
    async def alarms(ops: Ops) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(terminal.alarms)

    @app.post("/api/v1/alarms/{alarm_id}/clear")
    async def clear_alarm(ops: Ops, alarm_id: int) -> dict[str, Any]:
        cleared = await run_in_threadpool(ops.clear_alarm, alarm_id)
        if cleared is None:
            raise UsageError(f"there is no uncleared alarm {alarm_id}")
        return cleared

    @app.get("/api/v1/security-events")
    async def security_events(ops: Ops) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(terminal.security_events)

    @app.get("/api/v1/peers")
    async def peers(ops: Ops) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(terminal.peers)

    @app.get("/api/v1/keys")
    async def keys(ops: Ops) -> dict[str, Any]:
        """This terminal's card and keys, and every pinned peer's card (``parley keys status``)."""
        await _read(ops)
        return await run_in_threadpool(terminal.keys_status)

    @app.post("/api/v1/keys/rotate")
    async def rotate_keys(ops: Ops, req: RotateRequest) -> dict[str, Any]:
        """Replace the terminal's signature keys (an administrator): card version n+1."""
        return await run_in_threadpool(lambda: ops.rotate_keys(validity_days=req.validity_days))

    @app.post("/api/v1/keys/revoke")
    async def revoke_keys(ops: Ops, req: RevokeRequest) -> dict[str, Any]:
        """Revoke one of the terminal's cards (an administrator)."""
        return await run_in_threadpool(
            lambda: ops.revoke_keys(
                reason=req.reason,
                compromised_at=req.compromised_at,
                version=req.version,
                certificate=req.certificate,
            )
        )

    @app.post("/api/v1/peers/revocations")
    async def import_revocation(ops: Ops, req: RevocationRequest) -> dict[str, Any]:
        """Take in a revocation a peer handed over (an administrator)."""
        from parley.core.canonical import canonical_bytes

        return await run_in_threadpool(
            lambda: ops.import_revocation(canonical_bytes(req.revocation))
        )

    @app.post("/api/v1/peers")
    async def add_peer(ops: Ops, req: PeerRequest, request: Request) -> dict[str, Any]:
        """Pin a peer (an administrator), or point a pinned peer's links elsewhere."""
        import json

        bundle = CardBundle.from_json(json.dumps(req.card).encode())
        card = await run_in_threadpool(lambda: ops.add_peer(bundle, req.fingerprint, req.links))
        hook = getattr(request.app.state, "on_peer_added", None)
        if hook is not None:
            hook(card.party)
        return {"party": card.party, "fingerprint": card.fingerprint}

    @app.get("/api/v1/channels")
    async def channels(ops: Ops) -> list[dict[str, Any]]:
        await _read(ops)
        return await run_in_threadpool(terminal.channels)

    @app.post("/api/v1/channels")
    async def create_channel(ops: Ops, req: ChannelRequest) -> dict[str, Any]:
        return await run_in_threadpool(lambda: ops.create_channel(req.name, req.members))

    @app.post("/api/v1/channels/{name}/agree")
    async def agree_channel(ops: Ops, name: str) -> dict[str, Any]:
        return await run_in_threadpool(ops.agree_channel, name)

    @app.get("/api/v1/exchanges")
    async def exchanges(ops: Ops) -> list[dict[str, Any]]:
        from parley.service.exchanges import exchange_summaries

        await _read(ops)
        return await run_in_threadpool(exchange_summaries, terminal)

    @app.get("/api/v1/exchanges/{exchange_id}")
    async def exchange(ops: Ops, exchange_id: str) -> dict[str, Any]:
        from parley.service.exchanges import exchange_view

        await _read(ops)
        return await run_in_threadpool(exchange_view, terminal, exchange_id)

    @app.get("/api/v1/users")
    async def users(ops: Ops) -> list[dict[str, object]]:
        from parley.service.users import list_users

        await run_in_threadpool(ops.require, "manage_operators")
        return await run_in_threadpool(lambda: list_users(terminal.engine, now=terminal.clock()))

    @app.post("/api/v1/users")
    async def add_user(ops: Ops, req: UserRequest) -> dict[str, Any]:
        return await run_in_threadpool(lambda: ops.add_user(req.name, req.role, req.password))

    @app.post("/api/v1/users/{name}/unlock")
    async def unlock_user(ops: Ops, name: str) -> dict[str, Any]:
        return await run_in_threadpool(ops.unlock_user, name)

    @app.get("/api/v1/evidence", response_model=None)
    async def evidence(ops: Ops) -> StreamingResponse:
        """The evidence bundle (as the console's export): a supervisor's or an auditor's."""
        from parley.service.evidence import evidence_bundle

        await run_in_threadpool(ops.require, "export_evidence")
        size, chunks = await run_in_threadpool(
            lambda: evidence_bundle(
                terminal.engine,
                terminal.identity.card.signed_bytes,
                party=terminal.me,
                operator=ops.actor.name,
                now=terminal.clock(),
            )
        )
        await run_in_threadpool(ops.note_export, size)
        return StreamingResponse(chunks, media_type="application/json")

    @app.post("/api/v1/verify")
    async def verify(ops: Ops) -> dict[str, Any]:
        report = await run_in_threadpool(ops.verify)
        return report.summary()

    from parley.console.web import install_console

    install_console(app, terminal)
    return app
