"""Console pages for the rest of the watch: channels, links, transcript, exchanges,
alarms and the shift handover.

Every page reads through ``run_in_threadpool`` (the database is never read on
the event loop); every change goes through the operations layer
(``page.ops``: the terminal's one policy decides, and the action is logged
in the same transaction) and is answered with a redirect back to its page
(post/redirect/get), or the page again with the error when the terminal
refused it.

The round-trip-time chart is drawn here as inline SVG (no chart library, no
inline style: the classes come from ``console.css``), over the last 24 hours or
the last hour (``?span=``), its time axis starting at the oldest sample there is.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from parley.core.checkpoint import parse_note
from parley.core.exchange import EXCHANGE_FORMS, STATUS_FORM, UNRESOLVED
from parley.errors import NotPermitted, ParleyError, UsageError
from parley.forms import default_registry
from parley.forms.render import format_date, transliterate_name
from parley.service.audit import AuditReport
from parley.service.evidence import evidence_bundle
from parley.service.exchanges import exchange_summaries, exchange_view
from parley.service.handover import open_items, recorded_handovers
from parley.service.terminal import Terminal

from . import texts
from .pages_messages import summary
from .web import CurrentPage, Page, not_found_page, render, when
from .web import iso_utc as _iso

__all__ = [
    "RttChart",
    "evidence_bundle",
    "router",
    "rtt_chart",
]

log = structlog.get_logger("parley.console")

router = APIRouter()

#: Who may clear an alarm by hand (the alarm stays in the record, marked cleared).

#: How far back the links page may chart round-trip times: ``?span=`` -> the period.
CHART_SPANS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
CHART_SPAN = CHART_SPANS["24h"]
#: The shortest period a chart covers: a link tested for a minute still gets a readable axis.
CHART_SHORTEST = timedelta(minutes=10)
#: Samples are averaged per bucket, this many across the period (a day: 12 minutes each).
CHART_BUCKETS = 120
#: Steps between the time axis' ticks; the first that gives at most 8 ticks is used.
_TICK_STEPS = tuple(
    timedelta(minutes=n) for n in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
)
#: A handover note is read by the next watch, not archived prose.
NOTE_MAX = 4000


# Formatting ------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _page(page: Page, template: str, *, http_status: int = 200, **context: Any) -> HTMLResponse:
    response = render(page, page.request, template, when=when, **context)
    response.status_code = http_status
    return response


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# Channels --------------------------------------------------------------------------


def _channels_context(terminal: Terminal) -> dict[str, Any]:
    channels = terminal.channels()
    for channel in channels:
        channel["waiting"] = sorted(set(channel["members"]) - set(channel["agreed"]))
    peers = sorted(p["party"] for p in terminal.peers())
    return {"channels": channels, "peers": peers, "me": terminal.me}


@router.get("/channels", response_class=HTMLResponse)
async def channels_page(page: CurrentPage) -> HTMLResponse:
    context = await run_in_threadpool(_channels_context, page.terminal)
    return _page(page, "channels.html", active="channels", error=None, problem=None, **context)


async def _channels_refused(
    page: Page, error: ParleyError | None, problem: str | None
) -> HTMLResponse:
    """The channels page again, with the terminal's refusal (``error``) or ours (``problem``)."""
    context = await run_in_threadpool(_channels_context, page.terminal)
    return _page(
        page,
        "channels.html",
        http_status=400,
        active="channels",
        error=texts.error_words(error, page.lang) if error is not None else None,
        error_detail=f"{error.code}: {error}" if error is not None else None,
        problem=problem,
        **context,
    )


@router.post("/channels", response_model=None)
async def propose_channel(
    page: CurrentPage,
    name: Annotated[str, Form(max_length=63)] = "",
    members: Annotated[list[str] | None, Form()] = None,
) -> Response:
    page.require("channels")
    chosen = sorted(
        {p.strip() for value in members or [] for p in value.split(",") if p.strip()}
        - {page.terminal.me}
    )
    name = name.strip()
    if not name or not chosen:
        return await _channels_refused(page, None, "no_name" if not name else "no_members")
    ops = page.ops
    try:
        await run_in_threadpool(lambda: ops.create_channel(name, chosen))
    except NotPermitted:
        raise
    except ParleyError as exc:
        return await _channels_refused(page, exc, None)
    return _back("/channels")


@router.post("/channels/{name}/agree", response_model=None)
async def agree_channel(page: CurrentPage, name: str) -> Response:
    page.require("channels")
    try:
        await run_in_threadpool(page.ops.agree_channel, name)
    except NotPermitted:
        raise
    except ParleyError as exc:
        return await _channels_refused(page, exc, None)
    return _back("/channels")


# Links -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RttChart:
    """The geometry of one link's round-trip-time chart, ready for the template."""

    peer: str
    link: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    lines: tuple[str, ...]  # "x,y x,y …" for each <polyline class="line">
    failures: tuple[tuple[float, float], ...]  # centres of <circle class="fail">
    x_ticks: tuple[tuple[float, str], ...]  # (x, "HH:00")
    y_ticks: tuple[tuple[float, str], ...]  # (y, "N ms")
    samples: int
    failed: int
    slowest: float | None  # the highest bucket average, in ms
    start: datetime
    end: datetime

    @property
    def empty(self) -> bool:
        return self.samples == 0


def _nice_ceiling(value: float) -> float:
    """The next of 1, 2, 5 × 10^k at or above ``value`` (for the y axis)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value:.0f}"


def rtt_chart(
    peer: str,
    link: str,
    samples: Sequence[tuple[datetime, bool, float | None]],
    *,
    end: datetime,
    span: timedelta = CHART_SPAN,
    width: int = 720,
    height: int = 170,
) -> RttChart:
    """Lay out ``(at, ok, rtt_ms)`` samples of at most ``span`` up to ``end``.

    The time axis covers what there is: from the oldest sample within ``span``
    (at least ``CHART_SHORTEST``), so a link met a few minutes ago fills the
    chart instead of sitting at the right edge of an empty day. Successful
    samples are averaged per bucket (``CHART_BUCKETS`` across the axis) and
    joined by a line (links are tested hourly when idle, so quiet hours are
    bridged); the line breaks where a bucket holds only failures, and every
    bucket with a failure gets a red dot on the time axis. No sample: ``empty``.
    """
    within = [
        (at, ok, rtt)
        for at, ok, rtt in ((_utc(at) or at, ok, rtt) for at, ok, rtt in samples)
        if end - span <= at <= end
    ]
    oldest = min((at for at, _, _ in within), default=end)
    start = end - min(span, max(CHART_SHORTEST, end - oldest))
    window = end - start
    left, right, top, bottom = 52.0, width - 12.0, 10.0, height - 24.0
    plot_w, plot_h = right - left, bottom - top
    count = CHART_BUCKETS
    bucket = window / count
    ok_sum = [0.0] * count
    ok_n = [0] * count
    failed_in = [0] * count
    total = failed = 0
    for at, ok, rtt in within:
        slot = min(count - 1, int((at - start) / bucket))
        total += 1
        if ok and rtt is not None:
            ok_sum[slot] += rtt
            ok_n[slot] += 1
        elif not ok:
            failed_in[slot] += 1
            failed += 1
    averages = [ok_sum[i] / ok_n[i] if ok_n[i] else None for i in range(count)]
    present = [a for a in averages if a is not None]
    slowest = max(present) if present else None
    ceiling = _nice_ceiling(slowest if slowest is not None else 1.0)

    def x_of(slot: int) -> float:
        return round(left + (slot + 0.5) / count * plot_w, 1)

    def y_of(rtt: float) -> float:
        return round(bottom - min(rtt, ceiling) / ceiling * plot_h, 1)

    lines: list[str] = []
    run: list[tuple[float, float]] = []

    def close() -> None:
        if len(run) == 1:  # a lone sample: a short dash, so that it shows
            x, y = run[0]
            run[:] = [(round(x - 1.5, 1), y), (round(x + 1.5, 1), y)]
        if run:
            lines.append(" ".join(f"{x},{y}" for x, y in run))
        run.clear()

    for slot, average in enumerate(averages):
        if average is not None:
            run.append((x_of(slot), y_of(average)))
        elif failed_in[slot]:
            close()
    close()
    failures = tuple((x_of(slot), bottom) for slot in range(count) if failed_in[slot])

    step = next((s for s in _TICK_STEPS if window / s <= 8), _TICK_STEPS[-1])
    midnight = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tick = midnight + math.ceil((start - midnight) / step) * step
    x_ticks: list[tuple[float, str]] = []
    while tick <= end:
        x = round(left + (tick - start) / window * plot_w, 1)
        x_ticks.append((x, tick.astimezone(UTC).strftime("%H:%M")))
        tick += step
    y_ticks = tuple(
        (round(bottom - fraction * plot_h, 1), f"{_number(ceiling * fraction)} ms")
        for fraction in (0.0, 0.5, 1.0)
    )
    return RttChart(
        peer=peer,
        link=link,
        width=width,
        height=height,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        lines=tuple(lines),
        failures=failures,
        x_ticks=tuple(x_ticks),
        y_ticks=y_ticks,
        samples=total,
        failed=failed,
        slowest=slowest,
        start=start,
        end=end,
    )


def _link_rows(terminal: Terminal) -> list[dict[str, Any]]:
    return terminal.links()


def _links_context(terminal: Terminal, span: str = "24h") -> dict[str, Any]:
    links = terminal.links()
    end = terminal.clock()
    period = CHART_SPANS.get(span, CHART_SPAN)
    start = end - period
    charts = [
        rtt_chart(
            item["peer"],
            item["name"],
            terminal.link_samples(item["peer"], item["name"], since=start),
            end=end,
            span=period,
        )
        for item in links
    ]
    chosen = span if span in CHART_SPANS else "24h"
    return {"links": links, "charts": charts, "span": chosen, "spans": tuple(CHART_SPANS)}


@router.get("/links", response_class=HTMLResponse)
async def links_page(page: CurrentPage, done: str | None = None, span: str = "24h") -> HTMLResponse:
    context = await run_in_threadpool(_links_context, page.terminal, span)
    notice = "tested" if done == "test" else None
    return _page(page, "links.html", active="links", notice=notice, error=None, **context)


@router.get("/links/state", response_class=HTMLResponse)
async def links_state(page: CurrentPage) -> HTMLResponse:
    """The state table alone, which the links page refreshes every 5 seconds."""
    links = await run_in_threadpool(_link_rows, page.terminal)
    return _page(page, "fragments/admin_links.html", links=links)


@router.post("/links/test", response_model=None)
async def test_links(page: CurrentPage) -> Response:
    page.require("links")
    worker = getattr(page.request.app.state, "worker", None)
    if worker is None:
        context = await run_in_threadpool(_links_context, page.terminal)
        return _page(
            page,
            "links.html",
            http_status=409,
            active="links",
            notice=None,
            error="not_serving",
            **context,
        )
    await worker.test_links()
    await run_in_threadpool(page.ops.note_links_test)
    return _back("/links?done=test")


# Transcript ------------------------------------------------------------------------


def _note_facts(note: str) -> dict[str, Any]:
    """Size and root (hex) named by a signed note, and how many signed it."""
    try:
        body, signatures = parse_note(note)
    except ParleyError:
        return {"root": None, "signers": 0}
    lines = body.split("\n")
    root = None
    if len(lines) >= 3:
        try:
            root = base64.b64decode(lines[2], validate=True).hex()
        except ValueError:
            root = None
    return {"root": root, "signers": len(signatures)}


#: Rows of each transcript table on one page.
TRANSCRIPT_PAGE = 10


@dataclass(frozen=True, slots=True)
class Pager:
    """Where one page of a table is in the whole (pages counted from 1)."""

    number: int
    pages: int
    total: int
    per_page: int

    @classmethod
    def at(cls, asked: int, total: int, per_page: int) -> Pager:
        pages = max(1, math.ceil(total / per_page))
        return cls(min(max(asked, 1), pages), pages, total, per_page)

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


def _transcript_context(terminal: Terminal, cp: int = 1, co: int = 1) -> dict[str, Any]:
    """The transcript page: the log's state, then a page (``cp``, ``co``) of each of the
    checkpoints and the cosignatures, newest first."""
    status = terminal.status()
    checkpoint_count, _ = terminal.checkpoints(limit=0)
    checkpoints_pager = Pager.at(cp, checkpoint_count, TRANSCRIPT_PAGE)
    _, checkpoint_rows = terminal.checkpoints(
        offset=checkpoints_pager.offset, limit=TRANSCRIPT_PAGE
    )
    checkpoints = [
        {"size": r["size"], "issued_at": r["issued_at"], **_note_facts(r["note"])}
        for r in checkpoint_rows
    ]
    cosignature_count, _ = terminal.cosignatures(limit=0)
    cosignatures_pager = Pager.at(co, cosignature_count, TRANSCRIPT_PAGE)
    _, cosignature_rows = terminal.cosignatures(
        offset=cosignatures_pager.offset, limit=TRANSCRIPT_PAGE
    )
    recent = [
        {k: r[k] for k in ("direction", "party", "size", "at")} | _note_facts(r["note"])
        for r in cosignature_rows
    ]
    latest = terminal.latest_cosignatures()
    peers = []
    for peer in status["peers"]:
        of_us = latest.get(("of-us", peer))
        by_us = latest.get(("by-us", peer))
        peers.append(
            {
                "party": peer,
                "of_us_size": of_us["size"] if of_us else None,
                "of_us_at": of_us["at"] if of_us else None,
                "of_us_count": of_us["count"] if of_us else 0,
                "behind": status["log_size"] - of_us["size"] if of_us else status["log_size"],
                "by_us_size": by_us["size"] if by_us else None,
                "by_us_at": by_us["at"] if by_us else None,
                "by_us_count": by_us["count"] if by_us else 0,
            }
        )
    return {
        "status": status,
        "checkpoint_count": checkpoint_count,
        "checkpoints": checkpoints,
        "checkpoints_pager": checkpoints_pager,
        "peers": peers,
        "cosignatures": recent,
        "cosignatures_pager": cosignatures_pager,
        "checkpoints_href": lambda n: (
            f"/transcript?cp={n}&co={cosignatures_pager.number}#checkpoints"
        ),
        "cosignatures_href": lambda n: (
            f"/transcript?cp={checkpoints_pager.number}&co={n}#cosignatures"
        ),
    }


@router.get("/transcript", response_class=HTMLResponse)
async def transcript_page(page: CurrentPage, cp: int = 1, co: int = 1) -> HTMLResponse:
    context = await run_in_threadpool(_transcript_context, page.terminal, cp, co)
    return _page(page, "transcript.html", active="transcript", report=None, **context)


@router.post("/transcript/verify", response_class=HTMLResponse)
async def verify_now(page: CurrentPage) -> HTMLResponse:
    """Audit the whole record now (``parley verify``), in a worker thread."""
    page.require("verify")
    terminal = page.terminal
    started = terminal.clock()
    report: AuditReport = await run_in_threadpool(page.ops.verify)
    summary = report.summary()
    log.info("console_verify", operator=page.operator, ok=report.ok, entries=report.entries)
    result = {"summary": summary, "at": _iso(started)}
    if _htmx(page.request):
        return _page(page, "fragments/admin_verify.html", report=result)
    context = await run_in_threadpool(_transcript_context, terminal)
    return _page(page, "transcript.html", active="transcript", report=result, **context)


@router.get("/transcript/export", response_model=None)
async def export_bundle(page: CurrentPage) -> Response:
    page.require("export")
    terminal = page.terminal
    now = terminal.clock()
    size, chunks = await run_in_threadpool(
        lambda: evidence_bundle(
            terminal.engine,
            terminal.identity.card.signed_bytes,
            party=terminal.me,
            operator=page.operator,
            now=now,
        )
    )
    await run_in_threadpool(page.ops.note_export, size)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"parley-evidence-{terminal.me}-{stamp}.json"
    return StreamingResponse(
        chunks,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# Exchanges -------------------------------------------------------------------------


def _enum_labels(form: str, path: Sequence[str], lang: str) -> dict[str, str]:
    """Value -> label in ``lang`` of an enum in a form definition (empty if not found)."""
    definition = default_registry().latest(form)
    if definition is None:
        return {}
    node: Any = definition.schema
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    labels = node.get("x-enum") if isinstance(node, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}
    return {
        str(value): str(names.get(lang) or names.get("en") or value)
        for value, names in labels.items()
        if isinstance(names, Mapping)
    }


_PERSON_STATUS = ("properties", "persons", "items", "properties", "status")
_UPDATE_STATUS = ("properties", "updates", "items", "properties", "status")


def _person_row(
    person: Mapping[str, Any], categories: Mapping[str, str], lang: str
) -> dict[str, Any]:
    name = person.get("name")
    full_name = name.get("full_name") if isinstance(name, Mapping) else None
    script = name.get("script") if isinstance(name, Mapping) else None
    latin = (
        transliterate_name(full_name, script)
        if isinstance(full_name, str) and isinstance(script, str)
        else None
    )
    born = person.get("date_of_birth")
    if isinstance(born, str):
        with contextlib.suppress(ValueError, UsageError):
            born = format_date(born, lang)
    status = person.get("status")
    return {
        "ref": str(person.get("ref", "")),
        "name": full_name if isinstance(full_name, str) else None,
        "latin": latin,
        "born": born if isinstance(born, str) else None,
        "rank": person.get("rank") if isinstance(person.get("rank"), str) else None,
        "unit": person.get("unit") if isinstance(person.get("unit"), str) else None,
        "status": categories.get(str(status), str(status)) if status is not None else None,
        "script": script if script in ("en", "ru", "uk") else None,
    }


def _exchange_context(terminal: Terminal, exchange_id: str, lang: str) -> dict[str, Any]:
    view = exchange_view(terminal, exchange_id)
    form = next((f for f, kind in EXCHANGE_FORMS.items() if kind == view["kind"]), None)
    categories = _enum_labels(form, _PERSON_STATUS, lang) if form else {}
    outcomes = _enum_labels(STATUS_FORM, _UPDATE_STATUS, lang)
    lists = [
        {
            "party": party,
            "revision": item["revision"],
            "envelope_id": item["envelope_id"],
            "created_at": item["created_at"],
            "persons": [_person_row(p, categories, lang) for p in item["persons"]],
        }
        for party, item in view["lists"].items()
    ]
    manifest = view["manifest"]
    signatures = []
    for member in view["members"]:
        named = view["agreements"].get(member)
        state = "none" if named is None else ("current" if named == manifest else "stale")
        signatures.append({"party": member, "manifest": named, "state": state})
    return {
        "view": view,
        "lists": lists,
        "signatures": signatures,
        "outcomes": outcomes,
    }


@router.get("/exchanges", response_class=HTMLResponse)
async def exchanges_page(page: CurrentPage) -> HTMLResponse:
    summaries = await run_in_threadpool(exchange_summaries, page.terminal)
    summaries.sort(key=lambda s: s["exchange_id"])
    return _page(page, "exchanges.html", active="exchanges", exchanges=summaries)


@router.get("/exchanges/{exchange_id}", response_class=HTMLResponse)
async def exchange_page(page: CurrentPage, exchange_id: str) -> HTMLResponse:
    try:
        context = await run_in_threadpool(_exchange_context, page.terminal, exchange_id, page.lang)
    except UsageError as exc:
        return not_found_page(page, "no_exchange", str(exc))
    return _page(
        page,
        "exchange.html",
        active="exchanges",
        unresolved=UNRESOLVED,
        **context,
    )


# Alarms ----------------------------------------------------------------------------


def _alarms_context(terminal: Terminal) -> dict[str, Any]:
    return {"alarms": terminal.alarms(), "events": terminal.security_events(limit=200)}


@router.get("/alarms", response_class=HTMLResponse)
async def alarms_page(page: CurrentPage) -> HTMLResponse:
    context = await run_in_threadpool(_alarms_context, page.terminal)
    return _page(
        page,
        "alarms.html",
        active="alarms",
        may_clear=page.may("clear_alarms"),
        **context,
    )


@router.post("/alarms/{alarm_id}/clear", response_model=None)
async def clear_alarm_page(page: CurrentPage, alarm_id: int) -> Response:
    page.require("clear_alarms")
    cleared = await run_in_threadpool(page.ops.clear_alarm, alarm_id)
    if cleared is None:
        return not_found_page(page, "no_such_alarm", f"there is no uncleared alarm {alarm_id}")
    return _back("/alarms")


# Shift handover --------------------------------------------------------------------


def _handover_context(terminal: Terminal, lang: str) -> dict[str, Any]:
    """What is open now, each message with its subject in ``lang``, and the handovers."""
    items = open_items(terminal, content=True)
    for group in ("unacknowledged", "held_flash", "pending_delivery"):
        for item in items[group]:
            body = item.pop("body", None)
            kind = item.pop("kind", None) if group == "held_flash" else item.get("kind")
            item["subject"] = (
                summary(terminal.forms, str(kind), body, lang) if isinstance(body, dict) else ""
            )
    return {"items": items, "handovers": recorded_handovers(terminal.engine)}


@router.get("/handover", response_class=HTMLResponse)
async def handover_page(page: CurrentPage) -> HTMLResponse:
    context = await run_in_threadpool(_handover_context, page.terminal, page.lang)
    return _page(page, "handover.html", active="handover", error=None, **context)


@router.post("/handover/sign-off", response_model=None)
async def sign_off(
    page: CurrentPage, note: Annotated[str, Form(max_length=NOTE_MAX)] = ""
) -> Response:
    page.require("handover")
    ops = page.ops
    await run_in_threadpool(ops.sign_off, note.strip())
    return _back("/handover")


#: Why an acceptance was refused -> the status answered (the page says why).
_ACCEPT_REFUSALS = {"no_handover": 404, "already_accepted": 409, "own_handover": 403}


@router.post("/handover/{handover_id}/accept", response_model=None)
async def accept_handover(page: CurrentPage, handover_id: int) -> Response:
    page.require("handover")
    refusal = await run_in_threadpool(page.ops.accept_handover, handover_id)
    if refusal is not None:
        context = await run_in_threadpool(_handover_context, page.terminal, page.lang)
        return _page(
            page,
            "handover.html",
            http_status=_ACCEPT_REFUSALS[refusal],
            active="handover",
            error=refusal,
            **context,
        )
    return _back("/handover")
