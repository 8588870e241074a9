"""The network half of rollback detection and recovery (docs/recovery.md, sections 2 and 3).

``LogGuard`` asks every peer what it has seen of this terminal's own log
(``GET /v1/recovery/status``): on start, after a restore, and while frozen.
A checkpoint this terminal signed that is beyond its log, or off it, freezes
the terminal (it signs nothing new) and raises one critical alarm naming the
peers and the sizes. ``recover`` then collects the witnesses' leaf hashes and
the peers' candidate entries and hands them to ``Terminal.apply_recovery``,
which checks every entry; the terminal thaws when its log is at least as
large as, and consistent with, everything its peers saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool

from parley.core.checkpoint import Checkpoint
from parley.core.encoding import b64decode
from parley.core.recovery import Hole
from parley.errors import ParleyError
from parley.service.recovery import PAGE, Candidate, RecoveryReport
from parley.service.terminal import Terminal

__all__ = ["CHECK_EVERY", "Fetch", "LogGuard", "PeerView"]

log = structlog.get_logger("parley.recovery")

#: Seconds between checks while frozen (a peer that was away may answer now).
CHECK_EVERY = 10.0

#: Peers asked at once: a network that starts together (57 terminals asking 56
#: peers each) does not open every connection in the same instant.
ASK_AT_ONCE = 4

#: ``fetch(peer, method, path, params=...)``: the answer's body, or an exception.
Fetch = Callable[..., Awaitable[bytes]]


@dataclass(slots=True)
class PeerView:
    """What one peer told us of our own log."""

    peer: str
    answered: bool
    error: str | None = None
    seen: Checkpoint | None = None
    witnessed: Checkpoint | None = None
    mirror: int = 0


@dataclass(slots=True)
class CheckResult:
    views: dict[str, PeerView] = field(default_factory=dict)
    #: peer -> size of a checkpoint of our log it saw that our log does not bear out
    beyond: dict[str, int] = field(default_factory=dict)

    @property
    def everyone_answered(self) -> bool:
        return all(v.answered for v in self.views.values())


def _unordered(start: int, end: int) -> tuple[Hole, ...]:
    """Indexes a peer saw but whose order no witness holds."""
    return tuple(
        Hole(i, b"", "no witness holds the leaf hashes of this part of the log")
        for i in range(start, end)
    )


class LogGuard:
    """Compare our log with what peers saw of it; freeze, recover and thaw."""

    def __init__(self, terminal: Terminal, fetch: Fetch, *, auto_recover: bool = True) -> None:
        self.terminal = terminal
        self.fetch = fetch
        self.auto_recover = auto_recover
        self.last_report: RecoveryReport | None = None
        self._running = asyncio.Lock()

    # Asking the peers ---------------------------------------------------------

    async def _view(self, peer: str) -> PeerView:
        try:
            data = await self.fetch(peer, "GET", "/v1/recovery/status")
            obj = json.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return PeerView(peer, answered=False, error=str(exc)[:300] or type(exc).__name__)
        view = PeerView(peer, answered=True)
        recovery = self.terminal.recovery
        for name in ("seen", "witnessed"):
            note = obj.get(name)
            if not isinstance(note, str):
                continue
            try:
                checkpoint = recovery.own_checkpoint(note)
            except ParleyError as exc:
                view.error = f"{name}: not a checkpoint this terminal signed ({exc})"
                continue
            setattr(view, name, checkpoint)
        mirror = obj.get("mirror")
        view.mirror = mirror if isinstance(mirror, int) and not isinstance(mirror, bool) else 0
        return view

    async def check(self) -> CheckResult:
        """Ask every peer (``ASK_AT_ONCE`` at a time); freeze on a rollback; thaw a
        terminal its peers all confirm."""
        peers = sorted(self.terminal.party.peers)
        at_once = asyncio.Semaphore(ASK_AT_ONCE)

        async def ask(peer: str) -> PeerView:
            async with at_once:
                return await self._view(peer)

        views = await asyncio.gather(*(ask(p) for p in peers))
        result = CheckResult({v.peer: v for v in views})
        recovery = self.terminal.recovery
        for view in views:
            if view.seen is not None and recovery.needs(view.seen):
                result.beyond[view.peer] = view.seen.size
        if result.beyond:
            await run_in_threadpool(self._frozen_by, result.beyond)
        elif self.terminal.frozen is not None and result.everyone_answered:
            await run_in_threadpool(self._thaw)
        return result

    def _frozen_by(self, beyond: dict[str, int]) -> None:
        reason = ""
        for peer, size in sorted(beyond.items()):
            reason = self.terminal.kernel.note_rollback(peer, size)
        self.terminal.raise_alarm("rolled_back", "critical", self.terminal.me, reason, once=True)
        log.error("rolled_back", size=self.terminal.party.transcript.size, beyond=beyond)

    def _thaw(self) -> None:
        self.terminal.thaw()
        self.terminal.clear_alarms("rolled_back", self.terminal.me)
        log.info("log_confirmed_by_peers", size=self.terminal.party.transcript.size)

    async def run(self) -> None:
        """On start, then every CHECK_EVERY seconds while frozen: check, and recover."""
        while True:
            try:
                result = await self.check()
                if result.beyond and self.auto_recover:
                    await self.recover(result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("log_check_failed")
            if self.terminal.frozen is None:
                return
            await asyncio.sleep(CHECK_EVERY)

    # Recovering ---------------------------------------------------------------

    async def recover(self, result: CheckResult | None = None) -> RecoveryReport:
        """Rebuild the missing tail of our log from the peers; thaw when nothing is missing."""
        async with self._running:
            if result is None:
                result = await self.check()
            report = await self._recover(result)
            self.last_report = report
            return report

    async def _recover(self, result: CheckResult) -> RecoveryReport:
        size = self.terminal.party.transcript.size
        peers = {
            v.peer: "answered" if v.answered and not v.error else (v.error or "no answer")
            for v in result.views.values()
        }
        largest = max((v.seen.size for v in result.views.values() if v.seen is not None), default=0)
        if not result.beyond:
            return RecoveryReport(size, largest, size, peers=peers, complete=True)
        # The order: the largest checkpoint a witness holds every leaf hash of.
        witnessed = [
            v
            for v in result.views.values()
            if v.witnessed is not None and v.mirror >= v.witnessed.size
        ]
        witnessed.sort(key=lambda v: v.witnessed.size if v.witnessed else 0, reverse=True)
        if not witnessed or witnessed[0].witnessed is None:
            holes = _unordered(size, largest)
            return RecoveryReport(size, largest, size, holes=holes, peers=peers)
        source = witnessed[0]
        target = source.witnessed
        assert target is not None
        mirror = await self._mirror(source.peer, size, target.size)
        candidates = await self._candidates(result)
        report = await run_in_threadpool(
            self.terminal.apply_recovery,
            target.note,
            mirror,
            candidates,
            mirror_from=source.peer,
            peers=peers,
        )
        if report.complete and report.after < largest:
            report.complete = False
            report.holes = (*report.holes, *_unordered(report.after, largest))
        if report.complete:
            after = await self.check()
            report.complete = not after.beyond
        return report

    async def _mirror(self, peer: str, start: int, end: int) -> list[bytes]:
        leaves: list[bytes] = []
        while start + len(leaves) < end:
            data = await self.fetch(
                peer,
                "GET",
                "/v1/recovery/leaves",
                params={
                    "start": start + len(leaves),
                    "limit": min(PAGE, end - start - len(leaves)),
                },
            )
            page = [b64decode(h, "leaf hash") for h in json.loads(data)["leaves"]]
            if not page:
                break
            leaves.extend(page)
        return leaves[: end - start]

    async def _candidates(self, result: CheckResult) -> list[Candidate]:
        found: list[Candidate] = []
        for view in result.views.values():
            if not view.answered:
                continue
            after = -1
            try:
                while True:
                    data = await self.fetch(
                        view.peer,
                        "GET",
                        "/v1/recovery/entries",
                        params={"after": after, "limit": PAGE},
                    )
                    obj = json.loads(data)
                    for item in obj["items"]:
                        content = item.get("content")
                        found.append(
                            Candidate(
                                b64decode(item["entry"], "entry"),
                                b64decode(content, "content") if content else None,
                            )
                        )
                    if not obj.get("more") or int(obj["next"]) <= after:
                        break
                    after = int(obj["next"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recovery_candidates_failed", peer=view.peer, error=str(exc)[:300])
        return found

    def as_status(self) -> dict[str, Any]:
        return {
            "frozen": self.terminal.frozen,
            "last_recovery": self.last_report.as_dict() if self.last_report else None,
        }
