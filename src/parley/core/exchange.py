"""The prisoner and remains exchange workflow, as a pure state machine (no I/O, no clock).

Everything travels as ordinary signed form messages on one channel whose
members are the sides and, usually, a mediator. An ``Exchange`` is fed those
messages in transcript order (``apply``) and answers what has been agreed and
what has happened. It never raises on the content of a message: whatever it
cannot apply is recorded as a ``Problem`` that says who did what.

The workflow:

1. Each side sends the persons it holds and will hand over, as
   ``PRISONER_EXCHANGE_LIST`` (or ``REMAINS_REPATRIATION``) data
   ``{"exchange_id", "revision", "persons": [{"ref", ...}], "note"?}``.
2. A side amends by sending the full new list with ``revision`` one above
   its previous accepted one. Another revision number, a list from outside
   the channel or from the mediator, or a list of the other kind (remains in
   a prisoner exchange) is not applied.
3. The manifest is ``{"exchange_id", "kind", "lists": {party: {"envelope_id",
   "revision", "persons"}}}`` over the latest list of every side; its hash is
   the SHA-256 (hex) of its canonical JSON (RFC 8785). Every member sends
   ``EXCHANGE_AGREEMENT`` naming that hash and summarising the lists; the
   manifest is agreed when every member's most recent agreement names the
   current hash with a matching summary. An amendment changes the hash, so
   it undoes every earlier agreement.
4. Once agreed, any member reports what happened to each person with
   ``EXCHANGE_STATUS`` (``handed_over``, ``received``, ``not_present``,
   ``declined_to_return``); a later report from the same member about the
   same person replaces its earlier one.
5. ``report()`` reconciles the views: the holding side, the receiving side
   (every member except the holder and the mediator) and the mediator.

A person's outcome, used for the counts (each listed ref has exactly one):

* ``received``: a receiving side reported it received, and no report
  contradicts that;
* ``handed_over``: someone reported the handover but no receiving side has
  confirmed receipt (also a discrepancy);
* ``not_present`` / ``declined_to_return``: every report says so;
* ``unresolved``: no report at all, or reports that contradict each other
  (``handed_over`` and ``received`` agree; anything else must be unanimous).

Persons are identified by (list owner, ``ref``). ``listed`` counts distinct
refs: a ref named twice in one list is one person for the status reports and
is reported as a discrepancy.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeGuard

from parley.core.canonical import canonical_bytes
from parley.errors import ParleyError, UsageError

__all__ = [
    "AGREEMENT_FORM",
    "DECLINED_TO_RETURN",
    "EXCHANGE_FORMS",
    "HANDED_OVER",
    "NOT_PRESENT",
    "RECEIVED",
    "STATUSES",
    "STATUS_FORM",
    "UNRESOLVED",
    "Discrepancy",
    "Exchange",
    "FormMessage",
    "ListVersion",
    "PersonOutcome",
    "Problem",
    "Report",
    "SideCounts",
    "StatusReport",
    "StatusUpdate",
    "exchanges_from",
    "next_revision",
    "status_data",
]

#: List form name -> exchange kind.
EXCHANGE_FORMS: Final[Mapping[str, str]] = MappingProxyType(
    {"PRISONER_EXCHANGE_LIST": "prisoners", "REMAINS_REPATRIATION": "remains"}
)
AGREEMENT_FORM: Final = "EXCHANGE_AGREEMENT"
STATUS_FORM: Final = "EXCHANGE_STATUS"

HANDED_OVER: Final = "handed_over"
RECEIVED: Final = "received"
NOT_PRESENT: Final = "not_present"
DECLINED_TO_RETURN: Final = "declined_to_return"
STATUSES: Final = (HANDED_OVER, RECEIVED, NOT_PRESENT, DECLINED_TO_RETURN)
UNRESOLVED: Final = "unresolved"

_ALL_FORMS: Final = frozenset({*EXCHANGE_FORMS, AGREEMENT_FORM, STATUS_FORM})
_MOVED: Final = frozenset({HANDED_OVER, RECEIVED})

#: (party, envelope_id, revision, count) per list, sorted: what an agreement summarises.
_Summary = tuple[tuple[str, str, int, int], ...]


# Messages in, records out -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormMessage:
    """One verified form message from the channel's transcript."""

    envelope_id: str
    sender: str
    created_at: str  # RFC 3339
    form: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ListVersion:
    """One accepted revision of a side's list (``persons`` is a private copy: do not mutate)."""

    party: str
    envelope_id: str
    revision: int
    persons: tuple[Mapping[str, Any], ...]
    created_at: str

    @property
    def refs(self) -> tuple[str, ...]:
        """The distinct refs, in list order."""
        return tuple(dict.fromkeys(str(p["ref"]) for p in self.persons))


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What one member last reported about one person."""

    reporter: str
    status: str
    note: str | None
    envelope_id: str
    created_at: str


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One update to put in an ``EXCHANGE_STATUS`` message (see ``status_data``)."""

    party: str  # whose list
    ref: str
    status: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """A message, or part of one, that was not applied (or an agreement that does not count).

    Codes: ``duplicate_envelope``, ``not_a_member``, ``malformed``,
    ``wrong_exchange``, ``not_an_exchange_form``, ``mediator_list``,
    ``kind_mismatch``, ``revision_out_of_order``, ``stale_agreement``,
    ``unknown_manifest``, ``summary_mismatch``, ``status_before_agreement``,
    ``status_wrong_manifest``, ``unknown_person``, ``own_list_received``.
    """

    envelope_id: str
    sender: str
    code: str
    what: str


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """Something about one person that the views do not reconcile.

    Codes: ``no_status``, ``not_received``, ``conflicting_reports``,
    ``duplicate_ref``, ``reported_not_listed``.
    """

    party: str  # whose list
    ref: str
    code: str
    what: str


@dataclass(frozen=True, slots=True)
class SideCounts:
    """The outcome counts of one side's list; all but ``listed`` sum to ``listed``."""

    listed: int
    handed_over: int
    received: int
    not_present: int
    declined_to_return: int
    unresolved: int


@dataclass(frozen=True, slots=True)
class PersonOutcome:
    """One listed person: the outcome and every member's latest report (reporter -> status)."""

    party: str
    ref: str
    outcome: str
    reports: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Report:
    """The reconciliation of one exchange."""

    exchange_id: str
    kind: str | None
    manifest: str | None  # the current manifest hash
    agreed: bool
    agreements: Mapping[str, str]  # member -> hash named by its latest agreement
    per_side: Mapping[str, SideCounts]
    persons: tuple[PersonOutcome, ...]
    discrepancies: tuple[Discrepancy, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class _Agreement:
    index: int
    envelope_id: str
    sender: str
    manifest: str
    summary: _Summary
    #: the named hash was a manifest before this agreement arrived
    known_on_arrival: bool


class _Invalid(Exception):
    """Internal: a message's data is not what the form requires (the text says why)."""


# The state machine ------------------------------------------------------------


class Exchange:
    """The state of one exchange (one ``exchange_id``), fed in transcript order."""

    def __init__(
        self, exchange_id: str, members: frozenset[str], *, mediator: str | None = None
    ) -> None:
        if not isinstance(exchange_id, str) or not exchange_id:
            raise UsageError("an exchange needs a non-empty exchange_id")
        members = frozenset(members)
        if len(members) < 2:
            raise UsageError(f"exchange {exchange_id} needs at least two channel members")
        if mediator is not None and mediator not in members:
            raise UsageError(f"the mediator {mediator} is not a member of the channel")
        self.exchange_id = exchange_id
        self.members = members
        self.mediator = mediator
        self._kind: str | None = None
        self._lists: dict[str, ListVersion] = {}
        self._refs: dict[str, frozenset[str]] = {}
        self._history: list[ListVersion] = []
        self._manifest_raw: bytes | None = None
        self._manifest_hash: str | None = None
        self._manifests: dict[str, _Summary] = {}  # every manifest ever current
        self._agreement_log: list[_Agreement] = []
        self._latest_agreement: dict[str, _Agreement] = {}
        self._statuses: dict[tuple[str, str], dict[str, StatusReport]] = {}
        self._problems: list[tuple[int, Problem]] = []
        self._seen: set[str] = set()
        self._count = 0

    # Reading the state ----------------------------------------------------------

    @property
    def kind(self) -> str | None:
        """``prisoners`` or ``remains``, set by the first accepted list."""
        return self._kind

    @property
    def lists(self) -> dict[str, ListVersion]:
        """Side -> its latest accepted list."""
        return dict(self._lists)

    @property
    def history(self) -> tuple[ListVersion, ...]:
        """Every accepted list revision, in the order applied."""
        return tuple(self._history)

    @property
    def manifest_hash(self) -> str | None:
        return self._manifest_hash

    @property
    def manifest(self) -> dict[str, Any] | None:
        """A fresh copy of the current manifest (``None`` before the first list)."""
        if self._manifest_raw is None:
            return None
        value: dict[str, Any] = json.loads(self._manifest_raw)
        return value

    @property
    def agreements(self) -> dict[str, str]:
        """Member -> the manifest hash its latest well-formed agreement names."""
        return {party: a.manifest for party, a in sorted(self._latest_agreement.items())}

    @property
    def agreed(self) -> bool:
        """Every member's latest agreement names the current manifest, with its summary."""
        current = self._manifest_hash
        if current is None:
            return False
        summary = self._manifests[current]
        for member in self.members:
            latest = self._latest_agreement.get(member)
            if latest is None or latest.manifest != current or latest.summary != summary:
                return False
        return True

    @property
    def statuses(self) -> dict[tuple[str, str], dict[str, StatusReport]]:
        """(list owner, ref) -> reporter -> that reporter's latest report."""
        return {key: dict(reports) for key, reports in self._statuses.items()}

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Everything not applied or not counted, in transcript order."""
        found = list(self._problems)
        for agreement in self._agreement_log:
            if agreement.known_on_arrival:
                continue  # checked when it arrived
            summary = self._manifests.get(agreement.manifest)
            if summary is None:
                found.append(
                    (
                        agreement.index,
                        Problem(
                            agreement.envelope_id,
                            agreement.sender,
                            "unknown_manifest",
                            f"{agreement.sender} agreed to manifest {agreement.manifest[:16]}, "
                            f"which never was the manifest of {self.exchange_id}; "
                            f"it does not count",
                        ),
                    )
                )
            elif summary != agreement.summary:
                found.append((agreement.index, self._summary_problem(agreement, summary)))
        found.sort(key=lambda item: item[0])
        return tuple(problem for _, problem in found)

    def receivers_of(self, party: str) -> tuple[str, ...]:
        """The receiving side(s) of ``party``'s list: every member but it and the mediator."""
        return tuple(sorted(self.members - {party} - self._mediators))

    def agreement_data(self) -> dict[str, Any]:
        """The ``EXCHANGE_AGREEMENT`` data for the current manifest."""
        if self._manifest_hash is None:
            raise UsageError(f"exchange {self.exchange_id} has no list yet: nothing to agree")
        return {
            "exchange_id": self.exchange_id,
            "manifest": self._manifest_hash,
            "lists": [
                {"party": party, "envelope_id": eid, "revision": revision, "count": count}
                for party, eid, revision, count in self._manifests[self._manifest_hash]
            ],
        }

    # Applying messages ----------------------------------------------------------

    def apply(self, msg: FormMessage) -> None:
        """Apply one message; anything that cannot be applied is recorded as a problem."""
        index = self._count
        self._count += 1
        if msg.envelope_id in self._seen:
            self._problem(
                index,
                msg,
                "duplicate_envelope",
                f"{msg.sender}'s message {msg.envelope_id} was applied before; "
                f"the second copy is ignored",
            )
            return
        self._seen.add(msg.envelope_id)
        if msg.sender not in self.members:
            self._problem(
                index,
                msg,
                "not_a_member",
                f"{msg.sender}, who is not a member of the channel "
                f"({', '.join(sorted(self.members))}), sent {msg.form} for "
                f"{self.exchange_id}; it is not applied",
            )
            return
        try:
            data = msg.data
            if not isinstance(data, Mapping):
                raise _Invalid("its data is not an object")
            exchange_id = data.get("exchange_id")
            if exchange_id != self.exchange_id:
                self._problem(
                    index,
                    msg,
                    "wrong_exchange",
                    f"{msg.sender} sent {msg.form} for exchange {_show(exchange_id)}, "
                    f"not {self.exchange_id}; it is not applied here",
                )
                return
            if msg.form in EXCHANGE_FORMS:
                self._apply_list(index, msg, data, EXCHANGE_FORMS[msg.form])
            elif msg.form == AGREEMENT_FORM:
                self._apply_agreement(index, msg, data)
            elif msg.form == STATUS_FORM:
                self._apply_status(index, msg, data)
            else:
                self._problem(
                    index,
                    msg,
                    "not_an_exchange_form",
                    f"{msg.sender} sent {msg.form}, which is not an exchange form",
                )
        except _Invalid as exc:
            self._problem(
                index,
                msg,
                "malformed",
                f"{msg.sender} sent {msg.form} for {self.exchange_id} that cannot be "
                f"applied: {exc}",
            )

    def _apply_list(self, index: int, msg: FormMessage, data: Mapping[str, Any], kind: str) -> None:
        sender = msg.sender
        revision = data.get("revision")
        if not _is_int(revision) or revision < 1:
            raise _Invalid(f"its revision {_show(revision)} is not a positive integer")
        persons = data.get("persons")
        if not isinstance(persons, list):
            raise _Invalid("its persons is not a list")
        for number, person in enumerate(persons, 1):
            error = _person_error(person, kind)
            if error is not None:
                raise _Invalid(f"person {number} {error}")
        copied = _json_copy(persons)
        if copied is None:
            raise _Invalid("its persons are not canonical JSON (floats, huge integers?)")
        if sender == self.mediator:
            self._problem(
                index,
                msg,
                "mediator_list",
                f"{sender}, the mediator, sent revision {revision} of a list for "
                f"{self.exchange_id}; a mediator hands over no one, so it is not applied",
            )
            return
        if self._kind is not None and kind != self._kind:
            self._problem(
                index,
                msg,
                "kind_mismatch",
                f"{sender} sent a {msg.form} list ({kind}) for {self.exchange_id}, "
                f"which is a {self._kind} exchange; it is not applied",
            )
            return
        previous = self._lists.get(sender)
        expected = previous.revision + 1 if previous else 1
        if revision != expected:
            if previous is None:
                what = (
                    f"{sender} sent revision {revision} as its first list for "
                    f"{self.exchange_id}; a first list is revision 1, so it is not applied"
                )
            else:
                what = (
                    f"{sender} sent revision {revision} of its list after revision "
                    f"{previous.revision}; only revision {expected} can follow, "
                    f"so it is not applied"
                )
            self._problem(index, msg, "revision_out_of_order", what)
            return
        version = ListVersion(sender, msg.envelope_id, revision, tuple(copied), msg.created_at)
        self._kind = kind
        self._lists[sender] = version
        self._refs[sender] = frozenset(version.refs)
        self._history.append(version)
        self._rebuild_manifest()

    def _rebuild_manifest(self) -> None:
        manifest = {
            "exchange_id": self.exchange_id,
            "kind": self._kind,
            "lists": {
                party: {
                    "envelope_id": version.envelope_id,
                    "revision": version.revision,
                    "persons": list(version.persons),
                }
                for party, version in self._lists.items()
            },
        }
        raw = canonical_bytes(manifest)
        digest = hashlib.sha256(raw).hexdigest()
        self._manifest_raw = raw
        self._manifest_hash = digest
        self._manifests.setdefault(
            digest,
            tuple(
                (party, v.envelope_id, v.revision, len(v.persons))
                for party, v in sorted(self._lists.items())
            ),
        )

    def _apply_agreement(self, index: int, msg: FormMessage, data: Mapping[str, Any]) -> None:
        manifest = data.get("manifest")
        if not isinstance(manifest, str) or not manifest:
            raise _Invalid("its manifest is not a hash")
        lists = data.get("lists")
        if not isinstance(lists, list):
            raise _Invalid("its lists is not a list")
        summary: list[tuple[str, str, int, int]] = []
        for number, item in enumerate(lists, 1):
            if not isinstance(item, Mapping):
                raise _Invalid(f"its lists item {number} is not an object")
            party, eid = item.get("party"), item.get("envelope_id")
            revision, count = item.get("revision"), item.get("count")
            if not (
                isinstance(party, str)
                and isinstance(eid, str)
                and _is_int(revision)
                and _is_int(count)
            ):
                raise _Invalid(
                    f"its lists item {number} lacks a party, envelope_id, revision or count"
                )
            summary.append((party, eid, revision, count))
        known = self._manifests.get(manifest)
        agreement = _Agreement(
            index, msg.envelope_id, msg.sender, manifest, tuple(sorted(summary)), known is not None
        )
        self._agreement_log.append(agreement)
        self._latest_agreement[msg.sender] = agreement
        if known is None:
            return  # judged in ``problems``: its list may still be on its way
        if manifest != self._manifest_hash:
            self._problem(
                index,
                msg,
                "stale_agreement",
                f"{msg.sender} agreed to manifest {manifest[:16]} ({_describe(known)}), "
                f"which an amendment has replaced (now {_short(self._manifest_hash)}); "
                f"it does not count",
            )
        elif known != agreement.summary:
            self._problems.append((index, self._summary_problem(agreement, known)))

    def _summary_problem(self, agreement: _Agreement, summary: _Summary) -> Problem:
        return Problem(
            agreement.envelope_id,
            agreement.sender,
            "summary_mismatch",
            f"{agreement.sender} agreed to manifest {agreement.manifest[:16]} but summarised "
            f"its lists as {_describe(agreement.summary)} where that manifest holds "
            f"{_describe(summary)}; the agreement does not count",
        )

    def _apply_status(self, index: int, msg: FormMessage, data: Mapping[str, Any]) -> None:
        sender = msg.sender
        manifest = data.get("manifest")
        updates = data.get("updates")
        if not isinstance(manifest, str):
            raise _Invalid("its manifest is not a hash")
        if not isinstance(updates, list):
            raise _Invalid("its updates is not a list")
        if not self.agreed:
            self._problem(
                index,
                msg,
                "status_before_agreement",
                f"{sender} sent {len(updates)} status update(s) for {self.exchange_id} "
                f"while the manifest is not agreed by every member; they are not applied",
            )
            return
        if manifest != self._manifest_hash:
            self._problem(
                index,
                msg,
                "status_wrong_manifest",
                f"{sender} sent status updates for manifest {manifest[:16]}, not the agreed "
                f"manifest {_short(self._manifest_hash)}; they are not applied",
            )
            return
        for number, update in enumerate(updates, 1):
            error = _update_error(update)
            if error is not None:
                self._problem(
                    index,
                    msg,
                    "malformed",
                    f"{sender}'s status update {number} for {self.exchange_id} {error}; "
                    f"it is not applied",
                )
                continue
            party, ref, status = update["party"], update["ref"], update["status"]
            if ref not in self._refs.get(party, frozenset()):
                self._problem(
                    index,
                    msg,
                    "unknown_person",
                    f"{sender} reported {ref} on {party}'s list as {status}, but that list "
                    f"has no such person; the update is not applied",
                )
                continue
            if status == RECEIVED and sender == party:
                self._problem(
                    index,
                    msg,
                    "own_list_received",
                    f"{sender} reported {ref} on its own list as received; a side cannot "
                    f"receive the persons it hands over, so the update is not applied",
                )
                continue
            self._statuses.setdefault((party, ref), {})[sender] = StatusReport(
                sender, status, update.get("note"), msg.envelope_id, msg.created_at
            )

    def _problem(self, index: int, msg: FormMessage, code: str, what: str) -> None:
        self._problems.append((index, Problem(msg.envelope_id, msg.sender, code, what)))

    @property
    def _mediators(self) -> frozenset[str]:
        return frozenset() if self.mediator is None else frozenset({self.mediator})

    # Reconciliation -------------------------------------------------------------

    def report(self) -> Report:
        """Counts per side, every person's outcome, discrepancies and problems."""
        per_side: dict[str, SideCounts] = {}
        persons: list[PersonOutcome] = []
        discrepancies: list[Discrepancy] = []
        for party, version in sorted(self._lists.items()):
            occurrences = Counter(str(p["ref"]) for p in version.persons)
            outcomes: Counter[str] = Counter()
            for ref, times in occurrences.items():
                if times > 1:
                    discrepancies.append(
                        Discrepancy(
                            party,
                            ref,
                            "duplicate_ref",
                            f"{party}'s list (revision {version.revision}) names {ref} "
                            f"{times} times; status reports cannot tell them apart",
                        )
                    )
                outcome, discrepancy = self._outcome(party, ref)
                outcomes[outcome] += 1
                reports = self._statuses.get((party, ref), {})
                persons.append(
                    PersonOutcome(
                        party,
                        ref,
                        outcome,
                        MappingProxyType(
                            {r: reports[r].status for r in self._role_order(party, reports)}
                        ),
                    )
                )
                if discrepancy is not None:
                    discrepancies.append(discrepancy)
            per_side[party] = SideCounts(
                listed=len(occurrences),
                handed_over=outcomes[HANDED_OVER],
                received=outcomes[RECEIVED],
                not_present=outcomes[NOT_PRESENT],
                declined_to_return=outcomes[DECLINED_TO_RETURN],
                unresolved=outcomes[UNRESOLVED],
            )
            for (owner, ref), reports in self._statuses.items():
                if owner == party and ref not in occurrences:
                    discrepancies.append(
                        Discrepancy(
                            party,
                            ref,
                            "reported_not_listed",
                            f"revision {version.revision} of {party}'s list no longer "
                            f"names {ref}, who has status reports: "
                            f"{_views(self._role_order(party, reports), reports)}",
                        )
                    )
        return Report(
            exchange_id=self.exchange_id,
            kind=self._kind,
            manifest=self._manifest_hash,
            agreed=self.agreed,
            agreements=MappingProxyType(self.agreements),
            per_side=MappingProxyType(per_side),
            persons=tuple(persons),
            discrepancies=tuple(discrepancies),
            problems=self.problems,
        )

    def _role_order(self, party: str, reports: Mapping[str, StatusReport]) -> list[str]:
        """Reporters in reading order: the holder, the receiving sides, the mediator."""

        def rank(reporter: str) -> tuple[int, str]:
            if reporter == party:
                return (0, reporter)
            return (2 if reporter == self.mediator else 1, reporter)

        return sorted(reports, key=rank)

    def _outcome(self, party: str, ref: str) -> tuple[str, Discrepancy | None]:
        reports = self._statuses.get((party, ref), {})
        if not reports:
            return UNRESOLVED, Discrepancy(
                party, ref, "no_status", f"nobody has reported on {ref} on {party}'s list"
            )
        order = self._role_order(party, reports)
        views = _views(order, reports)
        values = {report.status for report in reports.values()}
        consistent = values <= _MOVED or len(values) == 1
        receivers = self.receivers_of(party)
        received_by = [r for r in receivers if r in reports and reports[r].status == RECEIVED]
        if values & _MOVED and not received_by:
            movers = [r for r in order if reports[r].status in _MOVED]
            answers = [
                f"{r} reported {reports[r].status}"
                if r in reports
                else f"{r} has not reported receiving them"
                for r in receivers
            ] or ["no receiving side is in the channel"]
            return (HANDED_OVER if consistent else UNRESOLVED), Discrepancy(
                party,
                ref,
                "not_received",
                f"{' and '.join(movers)} reported {ref} on {party}'s list handed over, but "
                f"{'; '.join(answers)} (reports: {views})",
            )
        if not consistent:
            return UNRESOLVED, Discrepancy(
                party,
                ref,
                "conflicting_reports",
                f"the reports on {ref} on {party}'s list disagree: {views}",
            )
        if received_by:
            return RECEIVED, None
        (only,) = values
        return only, None


# Helpers for callers ------------------------------------------------------------


def exchanges_from(
    messages: Iterable[FormMessage],
    members_of: Callable[[str], frozenset[str]] | frozenset[str],
    *,
    mediator: str | None = None,
) -> dict[str, Exchange]:
    """Group the exchange messages of a transcript by ``exchange_id`` and apply them in order.

    ``members_of`` is the channel's members, or a function from exchange id
    to them. Messages of other forms are skipped, as are exchange messages
    without a string ``exchange_id`` (the form schema requires one, so the
    receiving terminal has already refused them).
    """
    exchanges: dict[str, Exchange] = {}
    for msg in messages:
        if msg.form not in _ALL_FORMS or not isinstance(msg.data, Mapping):
            continue
        exchange_id = msg.data.get("exchange_id")
        if not isinstance(exchange_id, str) or not exchange_id:
            continue
        exchange = exchanges.get(exchange_id)
        if exchange is None:
            members = members_of if isinstance(members_of, frozenset) else members_of(exchange_id)
            exchange = exchanges[exchange_id] = Exchange(exchange_id, members, mediator=mediator)
        exchange.apply(msg)
    return exchanges


def next_revision(exchange: Exchange | None, party: str) -> int:
    """The revision ``party``'s next list must carry."""
    if exchange is None:
        return 1
    version = exchange.lists.get(party)
    return 1 if version is None else version.revision + 1


def status_data(
    exchange: Exchange, updates: Iterable[StatusUpdate], *, reporter: str | None = None
) -> dict[str, Any]:
    """Build ``EXCHANGE_STATUS`` data, refusing (``UsageError``) what would not be applied.

    With ``reporter`` (the sending member) it also refuses a side reporting
    its own persons as received.
    """
    if not exchange.agreed or exchange.manifest_hash is None:
        raise UsageError(
            f"the manifest of {exchange.exchange_id} is not agreed by every member yet; "
            f"statuses can only be reported against an agreed manifest"
        )
    if reporter is not None and reporter not in exchange.members:
        raise UsageError(f"{reporter} is not a member of the channel")
    refs = {party: frozenset(version.refs) for party, version in exchange.lists.items()}
    items: list[dict[str, str]] = []
    for update in updates:
        if update.status not in STATUSES:
            raise UsageError(f"{update.status!r} is not one of {', '.join(STATUSES)}")
        if update.ref not in refs.get(update.party, frozenset()):
            raise UsageError(f"{update.party}'s list has no person {update.ref}")
        if reporter == update.party and update.status == RECEIVED:
            raise UsageError(f"{reporter} cannot report a person on its own list as received")
        item = {"party": update.party, "ref": update.ref, "status": update.status}
        if update.note is not None:
            item["note"] = update.note
        items.append(item)
    if not items:
        raise UsageError("a status message needs at least one update")
    return {
        "exchange_id": exchange.exchange_id,
        "manifest": exchange.manifest_hash,
        "updates": items,
    }


# Internals ----------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _person_error(person: object, kind: str) -> str | None:
    if not isinstance(person, Mapping):
        return "is not an object"
    ref = person.get("ref")
    if not isinstance(ref, str) or not ref:
        return "has no ref"
    if not isinstance(person.get("status"), str):
        return f"({ref}) has no status"
    if kind == "prisoners":
        name = person.get("name")
        if not isinstance(name, Mapping) or not isinstance(name.get("full_name"), str):
            return f"({ref}) has no name"
    return None


def _update_error(update: object) -> str | None:
    if not isinstance(update, Mapping):
        return "is not an object"
    if not isinstance(update.get("party"), str) or not isinstance(update.get("ref"), str):
        return "names no party and ref"
    status = update.get("status")
    if status not in STATUSES:
        return f"has the status {_show(status)}, not one of {', '.join(STATUSES)}"
    if "note" in update and not isinstance(update["note"], str):
        return "has a note that is not text"
    return None


def _json_copy(value: Sequence[Any]) -> list[Mapping[str, Any]] | None:
    """A deep copy through canonical JSON, or ``None`` if ``value`` cannot be signed."""
    try:
        copied: list[Mapping[str, Any]] = json.loads(canonical_bytes(value))
    except (ParleyError, ValueError, TypeError, RecursionError):
        return None
    return copied


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:16]


def _describe(summary: _Summary) -> str:
    if not summary:
        return "no lists"
    return ", ".join(
        f"{party} revision {revision} ({count} persons)" for party, _, revision, count in summary
    )


def _views(order: Iterable[str], reports: Mapping[str, StatusReport]) -> str:
    return ", ".join(f"{r}: {reports[r].status}" for r in order)
