"""The peer listener's API (``/v1``), served over mutual TLS to pinned peers only.

Every handler reads the raw body (bounded), hands the bytes to the core,
which verifies signatures before it trusts any field, and only then stores
anything. A rejected request gets a 4xx with a machine-readable ``error``
code, is recorded as a security event, and leaves nothing else behind. A
delivery beyond the peer's quota (``parley.service.quotas``, charged by the
application layer) is answered ``429`` with ``Retry-After``; one security
event is recorded per incident, not per refused request.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from parley.core.encoding import b64encode
from parley.errors import (
    BodyTooLarge,
    CheckpointRejected,
    NotARecipient,
    ParleyError,
    QuotaExceeded,
    RemoteError,
    ReplayedEnvelope,
    RolledBack,
    SchemaViolation,
    UnknownPeer,
    UnknownSender,
    VerificationError,
    error_body,
)
from parley.service.terminal import Terminal

__all__ = [
    "FRAMES",
    "LEAVES",
    "MAX_LEAVES_PAGE",
    "MAX_LEAVES_WITH_RECEIPTS",
    "MIRROR_HEADER",
    "STATUS_FOR",
    "create_peer_app",
    "error_response",
    "frame",
    "split_frames",
]

API_VERSION = "v1"
JSON = "application/json"

STATUS_FOR: list[tuple[type[ParleyError], int]] = [
    (BodyTooLarge, 413),
    (UnknownSender, 403),
    (UnknownPeer, 403),
    (NotARecipient, 403),
    (ReplayedEnvelope, 409),
    (CheckpointRejected, 409),
    (RolledBack, 503),
    (QuotaExceeded, 429),
]

ERROR_SCHEMA = {
    "description": "The request was refused; nothing was stored but a security event.",
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string", "description": "machine-readable error code"},
                    "message": {"type": "string"},
                },
            }
        }
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: ERROR_SCHEMA,
    403: ERROR_SCHEMA,
    409: ERROR_SCHEMA,
    413: ERROR_SCHEMA,
    429: {
        **ERROR_SCHEMA,
        "description": "The peer sent more than its quota (quota_exceeded): nothing was "
        "stored; send it again after Retry-After seconds.",
    },
    503: {
        **ERROR_SCHEMA,
        "description": "This terminal serves as many peer requests as it can at once "
        "(busy; never for POST /v1/envelopes), or signs nothing until it is recovered "
        "(rolled_back): nothing was done; send it again after Retry-After seconds.",
    },
}


FRAMES = "application/x-parley-frames"
#: Leaf hashes of a log: fixed 32-byte frames, back to back.
LEAVES = "application/x-parley-leaves"
#: Leaf hashes in one page of ``GET /v1/log/leaves`` at most (256 KiB).
MAX_LEAVES_PAGE = 8192
#: The sender's mirror of our log (how many leaf hashes it holds), on a batch request.
MIRROR_HEADER = "x-parley-mirror"
#: Leaf hashes a batch answer carries at most (the witness round fetches the rest).
MAX_LEAVES_WITH_RECEIPTS = 4096
#: A checkpoint request: a checkpoint note (``seen``) and a few fields.
MAX_WITNESS_REQUEST = 16 * 1024
MAX_BATCH_ENVELOPES = 256
MAX_BATCH_BYTES = 16 * 1024 * 1024


def frame(items: list[bytes]) -> bytes:
    """Envelopes for the batch endpoint: each preceded by its length (4 bytes, big-endian)."""
    return b"".join(len(item).to_bytes(4, "big") + item for item in items)


def split_frames(data: bytes, item_limit: int) -> list[bytes]:
    """Split a framed batch; refuse bad framing, too many items or an oversized one."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise SchemaViolation("the batch ends inside a length prefix")
        size = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if size > item_limit:
            raise BodyTooLarge(f"an envelope of {size} bytes exceeds the {item_limit}-byte limit")
        if size > len(data) - offset:
            raise SchemaViolation("the batch ends inside an envelope")
        items.append(data[offset : offset + size])
        offset += size
        if len(items) > MAX_BATCH_ENVELOPES:
            raise SchemaViolation(f"a batch holds at most {MAX_BATCH_ENVELOPES} envelopes")
    if not items:
        raise SchemaViolation("the batch is empty")
    return items


#: Peer requests served at once before more are answered ``503 busy`` (with
#: ``Retry-After``): a terminal under more load than it can serve refuses what
#: it cannot do in time at once and cheaply, instead of letting each request
#: time out at its sender, who would send it again while this one still works
#: on it (congestion collapse). An urgent delivery (``POST /v1/envelopes``, the
#: FLASH and IMMEDIATE lane) and ``/v1/health`` are never refused.
MAX_PEER_WORK = 4
#: ``Retry-After`` of a busy answer: seconds, drawn at random from this range so
#: that the refused senders do not all come back in the same second.
BUSY_RETRY = (2, 10)
BUSY = "busy"


class WorkGate:
    """Counts the peer requests in progress; says whether one more may start."""

    def __init__(self, limit: int = MAX_PEER_WORK, rng: random.Random | None = None) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def busy_response(self) -> JSONResponse:
        self.refused += 1
        retry = self.rng.randint(*BUSY_RETRY)
        return JSONResponse(
            {
                "error": BUSY,
                "message": f"this terminal is serving {self.active} peer requests; "
                f"send it again after {retry} s",
                "retry_after": retry,
            },
            status_code=503,
            headers={"Retry-After": str(retry)},
        )


def _remote(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def error_response(exc: ParleyError) -> JSONResponse:
    status = 400
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            status = code
            break
    if isinstance(exc, QuotaExceeded):
        retry = max(1, round(exc.retry_after))
        return JSONResponse(
            {**error_body(exc), "retry_after": retry},
            status_code=status,
            headers={"Retry-After": str(retry)},
        )
    return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"the request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_peer_app(
    terminal: Terminal,
    tls_party_of: Callable[[Request], str | None] = lambda r: None,
    *,
    max_work: int = MAX_PEER_WORK,
) -> FastAPI:
    """The ASGI application of the peer listener.

    ``tls_party_of`` names the pinned peer whose client certificate the TLS
    connection presented (the server supplies it). ``max_work``: peer requests
    served at once before more are answered ``503 busy`` (``WorkGate``).
    """
    app = FastAPI(
        title=f"Parley peer API ({terminal.me})",
        version=API_VERSION,
        description=(
            "Terminal-to-terminal API. Reached only over TLS 1.3 with a client "
            "certificate pinned by this terminal. Bodies are Parley's canonical JSON "
            "objects (envelopes, receipts, checkpoint notes), verified before they are "
            "parsed."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=f"/{API_VERSION}/openapi.json",
    )
    limit = terminal.limits.max_body_bytes + 64 * 1024
    gate = WorkGate(max_work)
    app.state.gate = gate

    async def guarded(
        request: Request,
        endpoint: str,
        work: Callable[[str | None], Awaitable[Response]],
        *,
        urgent: bool = False,
    ) -> Response:
        party = tls_party_of(request)
        remote = _remote(request)
        if not urgent and gate.active >= gate.limit:
            return gate.busy_response()
        gate.active += 1
        try:
            return await work(party)
        except ClientDisconnect:
            # The peer went away mid-request: nothing was read in full, nothing stored.
            return Response(status_code=400)
        except RolledBack as exc:
            # Not the peer's fault: this terminal signs nothing until it is recovered.
            # The peer keeps its traffic in its outbox and retries.
            return error_response(exc)
        except QuotaExceeded as exc:
            # One security event per incident (the application layer says which refusal
            # opens one), not one per refused request of a flood.
            if exc.new_incident:
                await run_in_threadpool(
                    terminal.record_security_event,
                    endpoint=endpoint,
                    remote=remote,
                    tls_party=party,
                    error=exc,
                )
            return error_response(exc)
        except (RemoteError, VerificationError, UnknownPeer) as exc:
            await run_in_threadpool(
                terminal.record_security_event,
                endpoint=endpoint,
                remote=remote,
                tls_party=party,
                error=exc,
            )
            return error_response(exc)
        finally:
            gate.active -= 1

    @app.post(
        f"/{API_VERSION}/envelopes",
        summary="Deliver one envelope; the answer is the receiver's signed receipt",
        response_class=Response,
        responses={
            200: {"description": "signed receipt (canonical JSON)", "content": {JSON: {}}},
            **ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"type": "object"}}},
                "description": "a signed, encrypted envelope (DSSE, canonical JSON)",
            }
        },
    )
    async def post_envelope(request: Request) -> Response:
        async def work(party: str | None) -> Response:
            raw = await read_body(request, limit)
            receipt = await run_in_threadpool(terminal.receive_envelope, raw, tls_party=party)
            return Response(receipt, media_type=JSON)

        return await guarded(request, "envelopes", work, urgent=True)

    @app.post(
        f"/{API_VERSION}/envelopes/batch",
        summary="Deliver several envelopes; one signed receipt (or error) per envelope",
        responses={
            200: {
                "description": "per envelope, in order: {receipt: base64} or {error, message}",
                "content": {JSON: {}},
            },
            **ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {FRAMES: {"schema": {"type": "string", "format": "binary"}}},
                "description": "envelopes, each preceded by its length (4 bytes, big-endian)",
            }
        },
    )
    async def post_batch(request: Request) -> Response:
        async def work(party: str | None) -> Response:
            raw = await read_body(request, MAX_BATCH_BYTES)
            envelopes = split_frames(raw, limit)
            answers = await run_in_threadpool(terminal.receive_batch, envelopes, tls_party=party)
            results: list[dict[str, str]] = []
            mirror = request.headers.get(MIRROR_HEADER, "")
            leaves: dict[str, Any] | None = None
            if mirror.isdigit() and len(mirror) < 16:
                # Our leaf hashes from the sender's mirror on (at most a few thousand):
                # what we sign in these receipts can be put back in order should we
                # lose our log. The sender takes only those its receipts' checkpoint covers.
                hashes = await run_in_threadpool(
                    terminal.log_leaves, int(mirror), MAX_LEAVES_WITH_RECEIPTS
                )
                if hashes:
                    leaves = {"start": int(mirror), "hashes": b64encode(b"".join(hashes))}
            for answer in answers:
                if isinstance(answer, ParleyError):
                    await run_in_threadpool(
                        terminal.record_security_event,
                        endpoint="envelopes/batch",
                        remote=_remote(request),
                        tls_party=party,
                        error=answer,
                    )
                    results.append({"error": answer.code, "message": str(answer)})
                else:
                    results.append({"receipt": b64encode(answer)})
            body: dict[str, Any] = {"results": results}
            if leaves is not None:
                body["leaves"] = leaves
            return JSONResponse(body)

        return await guarded(request, "envelopes/batch", work)

    @app.get(
        f"/{API_VERSION}/catch-up",
        summary="Envelopes this terminal sent on a channel after a sequence number, with proofs",
        response_class=Response,
        responses={200: {"description": "catch-up answer", "content": {JSON: {}}}, **ERRORS},
    )
    async def catch_up(
        request: Request,
        channel: Annotated[str, Query(max_length=63, pattern=r"^[A-Z0-9][A-Z0-9._-]{0,62}$")],
        after: Annotated[int, Query(ge=0, le=2**53)],
    ) -> Response:
        async def work(party: str | None) -> Response:
            if party is None:
                raise UnknownSender("catch-up needs the caller's pinned client certificate")
            data = await run_in_threadpool(terminal.catch_up, channel, after, for_party=party)
            return Response(data, media_type=JSON)

        return await guarded(request, "catch-up", work)

    @app.post(
        f"/{API_VERSION}/checkpoint-offers",
        summary="Ask for a fresh checkpoint with consistency proofs (the witness's request)",
        response_class=Response,
        responses={200: {"description": "checkpoint offer", "content": {JSON: {}}}, **ERRORS},
        openapi_extra={
            "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}}
        },
    )
    async def checkpoint_offer(request: Request) -> Response:
        async def work(party: str | None) -> Response:
            raw = await read_body(request, MAX_WITNESS_REQUEST)
            if party is None:
                raise UnknownSender("a checkpoint request needs the caller's pinned certificate")
            offer = await run_in_threadpool(terminal.offer_checkpoint, raw, tls_party=party)
            return Response(offer, media_type=JSON)

        return await guarded(request, "checkpoint-offers", work)

    @app.get(
        f"/{API_VERSION}/log/leaves",
        summary="Leaf hashes of this terminal's log from start, for a witness's mirror",
        response_class=Response,
        responses={
            200: {
                "description": "up to limit leaf hashes, 32 bytes each, back to back "
                "(fewer at the end of the log, none beyond it)",
                "content": {LEAVES: {}},
            },
            **ERRORS,
        },
    )
    async def log_leaves(
        request: Request,
        start: Annotated[int, Query(ge=0, le=2**53)],
        limit: Annotated[int, Query(ge=1, le=MAX_LEAVES_PAGE)] = MAX_LEAVES_PAGE,
    ) -> Response:
        async def work(party: str | None) -> Response:
            if party is None:
                raise UnknownSender("the log's leaves need the caller's pinned certificate")
            leaves = await run_in_threadpool(terminal.log_leaves, start, limit)
            return Response(b"".join(leaves), media_type=LEAVES)

        return await guarded(request, "log/leaves", work)

    @app.post(
        f"/{API_VERSION}/cosignatures",
        summary="Hand over a cosignature on one of this terminal's checkpoints",
        responses={200: {"description": "accepted"}, **ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def cosignature(request: Request) -> Response:
        async def work(party: str | None) -> Response:
            raw = await read_body(request, 65536)
            result = await run_in_threadpool(terminal.accept_cosignature, raw, tls_party=party)
            return JSONResponse(result)

        return await guarded(request, "cosignatures", work)

    # Recovery (docs/recovery.md): what this terminal holds of the caller's log.

    def caller(party: str | None, what: str) -> str:
        if party is None:
            raise UnknownSender(f"{what} needs the caller's pinned client certificate")
        return party

    @app.get(
        f"/{API_VERSION}/recovery/status",
        summary="The largest checkpoint of the caller's log this terminal saw, and its mirror",
        responses={200: {"description": "status", "content": {JSON: {}}}, **ERRORS},
    )
    async def recovery_status(request: Request) -> Response:
        async def work(party: str | None) -> Response:
            who = caller(party, "recovery")
            return JSONResponse(await run_in_threadpool(terminal.recovery_status, who))

        return await guarded(request, "recovery/status", work)

    @app.get(
        f"/{API_VERSION}/recovery/leaves",
        summary="The leaf hashes of the caller's log this terminal witnessed, from start",
        responses={200: {"description": "leaf hashes (base64)", "content": {JSON: {}}}, **ERRORS},
    )
    async def recovery_leaves(
        request: Request,
        start: Annotated[int, Query(ge=0, le=2**53)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> Response:
        async def work(party: str | None) -> Response:
            who = caller(party, "recovery")
            leaves = await run_in_threadpool(terminal.recovery_leaves, who, start, limit)
            return JSONResponse({"start": start, "leaves": [b64encode(h) for h in leaves]})

        return await guarded(request, "recovery/leaves", work)

    @app.get(
        f"/{API_VERSION}/recovery/entries",
        summary="Entries this terminal holds that may belong to the caller's log, paged",
        responses={200: {"description": "candidate entries", "content": {JSON: {}}}, **ERRORS},
    )
    async def recovery_entries(
        request: Request,
        after: Annotated[int, Query(ge=-1, le=2**53)] = -1,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> Response:
        async def work(party: str | None) -> Response:
            who = caller(party, "recovery")
            answer = await run_in_threadpool(terminal.recovery_entries, who, after, limit)
            return JSONResponse(answer)

        return await guarded(request, "recovery/entries", work)

    @app.get(f"/{API_VERSION}/health", summary="Liveness: the terminal's party id")
    async def health(request: Request) -> dict[str, str]:
        return {"party": terminal.me, "status": "up"}

    @app.exception_handler(SchemaViolation)
    async def schema_violation(request: Request, exc: SchemaViolation) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> Response:
        """A malformed query is bad input like any other: a coded refusal, recorded."""
        details = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '?')}"
            for error in exc.errors()
        )
        refusal = SchemaViolation(f"the request's parameters are malformed ({details[:300]})")

        async def work(party: str | None) -> Response:
            raise refusal

        return await guarded(request, request.url.path.removeprefix(f"/{API_VERSION}/"), work)

    return app
