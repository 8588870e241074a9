"""The prisoner / remains exchange workflow (parley.core.exchange)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core.canonical import canonical_bytes
from parley.core.exchange import (
    AGREEMENT_FORM,
    DECLINED_TO_RETURN,
    HANDED_OVER,
    NOT_PRESENT,
    RECEIVED,
    STATUS_FORM,
    STATUSES,
    Discrepancy,
    Exchange,
    FormMessage,
    SideCounts,
    StatusUpdate,
    exchanges_from,
    next_revision,
    status_data,
)
from parley.errors import UsageError
from tests.scale import scaled

RU, UA, MED = "RU-GS", "UA-GS", "MEDIATOR"
MEMBERS = frozenset({RU, UA, MED})
XID = "PX-2026-11"
LIST_FORM = "PRISONER_EXCHANGE_LIST"
REMAINS_FORM = "REMAINS_REPATRIATION"


def person(ref: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ref": ref,
        "name": {"full_name": f"Иванов Иван {ref}", "script": "ru"},
        "date_of_birth": "1990-01-01",
        "rank": "sergeant",
        "unit": "12th",
        "document": {"type": "military_id", "number": f"N-{ref}"},
        "status": "prisoner_of_war",
    }
    data.update(extra)
    return data


def persons(side: str, numbers: Iterable[int]) -> list[dict[str, Any]]:
    prefix = "RU" if side == RU else "UA"
    return [person(f"{prefix}-{n:04d}") for n in numbers]


class Channel:
    """Builds the messages of one channel and feeds them to an Exchange."""

    def __init__(self, exchange: Exchange | None = None) -> None:
        self.exchange = exchange or Exchange(XID, MEMBERS, mediator=MED)
        self.count = 0
        self.sent: list[FormMessage] = []

    def message(self, sender: str, form: str, data: Any) -> FormMessage:
        self.count += 1
        return FormMessage(
            envelope_id=f"env-{self.count:05d}",
            sender=sender,
            created_at=f"2026-03-01T10:{self.count // 60 % 60:02d}:{self.count % 60:02d}Z",
            form=form,
            data=data,
        )

    def send(self, sender: str, form: str, data: Any) -> FormMessage:
        msg = self.message(sender, form, data)
        self.sent.append(msg)
        self.exchange.apply(msg)
        return msg

    def propose(
        self,
        sender: str,
        people: Sequence[dict[str, Any]],
        *,
        revision: int | None = None,
        form: str = LIST_FORM,
    ) -> FormMessage:
        if revision is None:
            revision = next_revision(self.exchange, sender)
        data = {"exchange_id": XID, "revision": revision, "persons": list(people)}
        return self.send(sender, form, data)

    def agree(self, *senders: str) -> None:
        for sender in senders or (RU, UA, MED):
            self.send(sender, AGREEMENT_FORM, self.exchange.agreement_data())

    def report(self, sender: str, updates: Iterable[tuple[str, str, str]]) -> FormMessage:
        data = status_data(
            self.exchange,
            [StatusUpdate(party, ref, status) for party, ref, status in updates],
            reporter=sender,
        )
        return self.send(sender, STATUS_FORM, data)


def codes(exchange: Exchange) -> list[str]:
    return [p.code for p in exchange.problems]


# The whole workflow -----------------------------------------------------------------


def test_a_full_exchange_of_100_persons_per_side() -> None:
    ch = Channel()
    ch.propose(RU, persons(RU, range(1, 101)))
    ch.propose(UA, persons(UA, range(1, 101)))
    # RU amends: RU-0050 is removed, RU-0101 and RU-0102 added.
    ru_final = persons(RU, [n for n in range(1, 103) if n != 50])
    ch.propose(RU, ru_final)
    ex = ch.exchange
    assert ex.lists[RU].revision == 2
    assert len(ex.lists[RU].persons) == 101
    assert [v.revision for v in ex.history] == [1, 1, 2]
    assert not ex.agreed
    ch.agree(RU, UA)
    assert not ex.agreed  # the mediator has not agreed yet
    ch.agree(MED)
    assert ex.agreed
    assert ex.agreements == dict.fromkeys((MED, RU, UA), ex.manifest_hash)

    ru_refs = [p["ref"] for p in ru_final]
    ua_refs = [f"UA-{n:04d}" for n in range(1, 101)]
    declined, absent, disputed = "RU-0007", "RU-0008", "UA-0042"
    # The holders hand over; RU first says RU-0007 was handed over, then corrects it.
    ch.report(RU, [(RU, r, HANDED_OVER) for r in ru_refs if r != absent])
    ch.report(RU, [(RU, declined, DECLINED_TO_RETURN), (RU, absent, NOT_PRESENT)])
    ch.report(UA, [(UA, r, HANDED_OVER) for r in ua_refs])
    # The receivers confirm.
    ch.report(UA, [(RU, r, RECEIVED) for r in ru_refs if r not in (declined, absent)])
    ch.report(UA, [(RU, declined, DECLINED_TO_RETURN), (RU, absent, NOT_PRESENT)])
    ch.report(RU, [(UA, r, RECEIVED) for r in ua_refs])
    # The mediator's view: it agrees with everything but UA-0042.
    ch.report(
        MED,
        [(RU, r, HANDED_OVER) for r in ru_refs if r not in (declined, absent)]
        + [(RU, declined, DECLINED_TO_RETURN), (RU, absent, NOT_PRESENT)]
        + [(UA, r, HANDED_OVER if r != disputed else NOT_PRESENT) for r in ua_refs],
    )

    report = ex.report()
    assert report.problems == ()
    assert report.agreed
    assert report.manifest == ex.manifest_hash
    assert report.kind == "prisoners"
    assert report.per_side == {
        RU: SideCounts(
            listed=101,
            handed_over=0,
            received=99,
            not_present=1,
            declined_to_return=1,
            unresolved=0,
        ),
        UA: SideCounts(
            listed=100,
            handed_over=0,
            received=99,
            not_present=0,
            declined_to_return=0,
            unresolved=1,
        ),
    }
    assert [(d.party, d.ref, d.code) for d in report.discrepancies] == [
        (UA, disputed, "conflicting_reports")
    ]
    what = report.discrepancies[0].what
    assert "UA-GS: handed_over, RU-GS: received, MEDIATOR: not_present" in what
    # Every person's three views are shown, the holder first and the mediator last.
    outcome = {(p.party, p.ref): p for p in report.persons}
    assert len(outcome) == 201
    assert outcome[(RU, declined)].outcome == DECLINED_TO_RETURN
    assert dict(outcome[(RU, declined)].reports) == {
        RU: DECLINED_TO_RETURN,
        UA: DECLINED_TO_RETURN,
        MED: DECLINED_TO_RETURN,
    }
    assert list(outcome[(UA, disputed)].reports) == [UA, RU, MED]
    assert (RU, "RU-0050") not in outcome


def test_an_amendment_after_agreement_undoes_it() -> None:
    ch = Channel()
    ch.propose(RU, persons(RU, range(1, 4)))
    ch.propose(UA, persons(UA, range(1, 4)))
    ch.agree()
    ex = ch.exchange
    first = ex.manifest_hash
    assert ex.agreed
    assert first is not None
    old_status = status_data(ex, [StatusUpdate(UA, "UA-0001", HANDED_OVER)])

    ch.propose(UA, persons(UA, range(1, 5)))  # revision 2 adds UA-0004
    assert ex.manifest_hash != first
    assert not ex.agreed
    assert ex.agreements == dict.fromkeys((MED, RU, UA), first)  # they name the old hash
    with pytest.raises(UsageError, match="not agreed"):
        status_data(ex, [StatusUpdate(UA, "UA-0001", HANDED_OVER)])
    ch.send(UA, STATUS_FORM, old_status)
    assert codes(ex) == ["status_before_agreement"]
    assert ex.statuses == {}

    # A late agreement to the old manifest is stale; it does not count.
    ch.send(MED, AGREEMENT_FORM, {**ch.exchange.agreement_data(), "manifest": first})
    ch.agree(RU, UA, MED)
    assert ex.agreed
    stale = ex.problems[-1]
    assert stale.code == "stale_agreement"
    assert stale.sender == MED
    assert "MEDIATOR agreed to manifest" in stale.what
    assert "replaced" in stale.what
    # A stale agreement after agreeing withdraws that member's agreement.
    ch.send(RU, AGREEMENT_FORM, {**ch.exchange.agreement_data(), "manifest": first})
    assert not ex.agreed
    ch.agree(RU)
    assert ex.agreed
    # Statuses against the old manifest are refused even now.
    ch.send(UA, STATUS_FORM, old_status)
    assert codes(ex)[-1] == "status_wrong_manifest"
    ch.report(UA, [(UA, "UA-0004", HANDED_OVER)])
    assert ex.statuses[(UA, "UA-0004")][UA].status == HANDED_OVER


def test_a_revision_out_of_order_is_recorded_and_not_applied() -> None:
    ch = Channel()
    ex = ch.exchange
    ch.propose(UA, persons(UA, [1]), revision=2)
    assert ex.lists == {}
    assert ex.manifest_hash is None
    assert "UA-GS sent revision 2 as its first list" in ex.problems[0].what
    ch.propose(UA, persons(UA, [1]))
    assert next_revision(ex, UA) == 2
    bad = ch.propose(UA, persons(UA, [1, 2, 3]), revision=3)
    assert ex.lists[UA].revision == 1
    problem = ex.problems[-1]
    assert (problem.code, problem.sender, problem.envelope_id) == (
        "revision_out_of_order",
        UA,
        bad.envelope_id,
    )
    assert "UA-GS sent revision 3 of its list after revision 1" in problem.what
    ch.propose(UA, persons(UA, [1, 2]), revision=1)  # a repeat of revision 1
    assert ex.lists[UA].revision == 1
    ch.propose(UA, persons(UA, [1, 2]), revision=2)
    assert ex.lists[UA].revision == 2
    assert ex.lists[UA].refs == ("UA-0001", "UA-0002")
    assert codes(ex) == ["revision_out_of_order"] * 3
    assert next_revision(ex, UA) == 3
    assert next_revision(ex, RU) == 1
    assert next_revision(None, RU) == 1


def test_lists_from_outsiders_the_mediator_or_of_the_other_kind_are_refused() -> None:
    ch = Channel()
    ex = ch.exchange
    ch.propose("XX-GS", persons(RU, [1]))
    ch.propose(MED, persons(RU, [1]))
    ch.propose(RU, persons(RU, [1]))
    ch.propose(UA, [{"ref": "UA-R-1", "status": "identified"}], form=REMAINS_FORM)
    assert list(ex.lists) == [RU]
    assert ex.kind == "prisoners"
    assert codes(ex) == ["not_a_member", "mediator_list", "kind_mismatch"]
    assert ex.problems[0].what.startswith("XX-GS, who is not a member of the channel")
    assert "MEDIATOR, the mediator, sent revision 1" in ex.problems[1].what
    assert "UA-GS sent a REMAINS_REPATRIATION list (remains)" in ex.problems[2].what
    assert next_revision(ex, UA) == 1  # the refused list did not count


def test_a_remains_exchange_needs_only_ref_and_status() -> None:
    ch = Channel()
    ch.propose(RU, [{"ref": "R-1", "status": "identified"}], form=REMAINS_FORM)
    ch.propose(UA, [], form=REMAINS_FORM)  # a one-way repatriation
    ch.agree()
    ch.report(RU, [(RU, "R-1", HANDED_OVER)])
    ch.report(UA, [(RU, "R-1", RECEIVED)])
    report = ch.exchange.report()
    assert report.kind == "remains"
    assert report.problems == ()
    assert report.discrepancies == ()
    assert report.per_side[RU].received == 1
    assert report.per_side[UA].listed == 0
    # A prisoner list needs a name.
    ch.propose(RU, [{"ref": "R-1", "status": "identified"}])
    assert codes(ch.exchange) == ["malformed"]
    assert "person 1 (R-1) has no name" in ch.exchange.problems[0].what


def test_status_before_agreement_is_a_problem() -> None:
    ch = Channel()
    ch.propose(RU, persons(RU, [1]))
    ch.propose(UA, persons(UA, [1]))
    ch.agree(RU, UA)  # not the mediator
    data = {
        "exchange_id": XID,
        "manifest": ch.exchange.manifest_hash,
        "updates": [{"party": RU, "ref": "RU-0001", "status": HANDED_OVER}],
    }
    msg = ch.send(RU, STATUS_FORM, data)
    problem = ch.exchange.problems[0]
    assert (problem.code, problem.envelope_id) == ("status_before_agreement", msg.envelope_id)
    assert problem.what.startswith("RU-GS sent 1 status update(s) for PX-2026-11 while")
    assert ch.exchange.statuses == {}
    ch.agree(MED)
    ch.send(RU, STATUS_FORM, data)
    assert ch.exchange.statuses[(RU, "RU-0001")][RU].status == HANDED_OVER


def test_bad_status_updates_are_refused_one_by_one() -> None:
    ch = Channel()
    ch.propose(RU, persons(RU, [1, 2]))
    ch.propose(UA, persons(UA, [1]))
    ch.agree()
    ex = ch.exchange
    ch.send(
        UA,
        STATUS_FORM,
        {
            "exchange_id": XID,
            "manifest": ex.manifest_hash,
            "updates": [
                {"party": RU, "ref": "RU-0009", "status": RECEIVED},
                {"party": UA, "ref": "UA-0001", "status": RECEIVED},
                {"party": RU, "ref": "RU-0001", "status": "escaped"},
                {"party": RU, "ref": "RU-0002", "status": RECEIVED, "note": "at the bridge"},
            ],
        },
    )
    assert codes(ex) == ["unknown_person", "own_list_received", "malformed"]
    assert "UA-GS reported RU-0009 on RU-GS's list as received" in ex.problems[0].what
    assert "UA-GS reported UA-0001 on its own list as received" in ex.problems[1].what
    assert list(ex.statuses) == [(RU, "RU-0002")]
    assert ex.statuses[(RU, "RU-0002")][UA].note == "at the bridge"
    # status_data refuses the same mistakes before they are sent.
    with pytest.raises(UsageError, match="no person RU-0009"):
        status_data(ex, [StatusUpdate(RU, "RU-0009", RECEIVED)])
    with pytest.raises(UsageError, match="own list"):
        status_data(ex, [StatusUpdate(UA, "UA-0001", RECEIVED)], reporter=UA)
    with pytest.raises(UsageError, match="not one of"):
        status_data(ex, [StatusUpdate(RU, "RU-0001", "escaped")])
    with pytest.raises(UsageError, match="at least one"):
        status_data(ex, [])
    with pytest.raises(UsageError, match="not a member"):
        status_data(ex, [StatusUpdate(RU, "RU-0001", RECEIVED)], reporter="XX-GS")
    data = status_data(ex, [StatusUpdate(RU, "RU-0001", RECEIVED, note="ok")], reporter=UA)
    assert data == {
        "exchange_id": XID,
        "manifest": ex.manifest_hash,
        "updates": [{"party": RU, "ref": "RU-0001", "status": RECEIVED, "note": "ok"}],
    }


# Agreements --------------------------------------------------------------------------


def test_agreement_data_summarises_the_manifest() -> None:
    ex = Exchange(XID, MEMBERS, mediator=MED)
    with pytest.raises(UsageError, match="no list yet"):
        ex.agreement_data()
    ch = Channel(ex)
    ru = ch.propose(RU, persons(RU, [1, 2]))
    ua = ch.propose(UA, persons(UA, [1]))
    assert ex.agreement_data() == {
        "exchange_id": XID,
        "manifest": ex.manifest_hash,
        "lists": [
            {"party": RU, "envelope_id": ru.envelope_id, "revision": 1, "count": 2},
            {"party": UA, "envelope_id": ua.envelope_id, "revision": 1, "count": 1},
        ],
    }


def test_an_agreement_to_an_unknown_manifest_is_a_problem_unless_its_list_arrives() -> None:
    # B's view: the mediator's agreement overtakes UA's revision 2 on the way.
    a, b = Channel(), Channel()
    for ch in (a, b):
        ch.propose(RU, persons(RU, [1]))
        ch.propose(UA, persons(UA, [1]))
    amendment = a.propose(UA, persons(UA, [1, 2]))
    early = a.message(MED, AGREEMENT_FORM, a.exchange.agreement_data())
    b.exchange.apply(early)
    assert codes(b.exchange) == ["unknown_manifest"]
    b.exchange.apply(amendment)
    b.count = a.count
    assert codes(b.exchange) == []
    assert b.exchange.manifest_hash == a.exchange.manifest_hash
    b.agree(RU, UA)
    assert b.exchange.agreed
    # A hash that never becomes the manifest stays a problem, and withdraws agreement.
    b.send(UA, AGREEMENT_FORM, {**b.exchange.agreement_data(), "manifest": "ab" * 32})
    assert not b.exchange.agreed
    assert codes(b.exchange) == ["unknown_manifest"]
    assert b.exchange.problems[0].what.startswith("UA-GS agreed to manifest abababab")


def test_an_agreement_whose_summary_does_not_match_does_not_count() -> None:
    ch = Channel()
    ch.propose(RU, persons(RU, [1, 2]))
    ch.propose(UA, persons(UA, [1]))
    ch.agree(RU, UA)
    data = ch.exchange.agreement_data()
    data["lists"][0]["count"] = 3
    ch.send(MED, AGREEMENT_FORM, data)
    assert not ch.exchange.agreed
    problem = ch.exchange.problems[0]
    assert problem.code == "summary_mismatch"
    assert "RU-GS revision 1 (3 persons)" in problem.what
    assert "RU-GS revision 1 (2 persons)" in problem.what
    ch.agree(MED)
    assert ch.exchange.agreed


# The manifest ------------------------------------------------------------------------


def _exchange_with(ru_people: list[dict[str, Any]], *, ua_first: bool = False) -> Exchange:
    ex = Exchange(XID, MEMBERS, mediator=MED)
    messages = [
        FormMessage("e-ru", RU, "2026-03-01T10:00:00Z", LIST_FORM, _list(ru_people)),
        FormMessage("e-ua", UA, "2026-03-01T10:00:01Z", LIST_FORM, _list(persons(UA, [1, 2]))),
    ]
    for msg in reversed(messages) if ua_first else messages:
        ex.apply(msg)
    return ex


def _list(people: list[dict[str, Any]], revision: int = 1) -> dict[str, Any]:
    return {"exchange_id": XID, "revision": revision, "persons": people}


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


def test_the_manifest_hash_is_its_canonical_sha256_whatever_the_key_order() -> None:
    people = persons(RU, [1, 2, 3])
    ex = _exchange_with(people)
    manifest = ex.manifest
    assert manifest is not None
    assert set(manifest) == {"exchange_id", "kind", "lists"}
    assert manifest["lists"][RU]["envelope_id"] == "e-ru"
    assert ex.manifest_hash == hashlib.sha256(canonical_bytes(manifest)).hexdigest()
    assert _exchange_with(_reverse_keys(people)).manifest_hash == ex.manifest_hash
    assert _exchange_with(people, ua_first=True).manifest_hash == ex.manifest_hash
    # The exchange keeps its own copy: changing the caller's data changes nothing.
    people[0]["rank"] = "general"
    assert ex.manifest_hash == _exchange_with(persons(RU, [1, 2, 3])).manifest_hash


_CHANGES = {
    "ref": lambda p: p.update(ref="RU-9999"),
    "full_name": lambda p: p["name"].update(full_name="Петров Пётр Петрович"),
    "script": lambda p: p["name"].update(script="uk"),
    "date_of_birth": lambda p: p.update(date_of_birth="1990-01-02"),
    "rank": lambda p: p.update(rank="private"),
    "unit": lambda p: p.update(unit="13th"),
    "document": lambda p: p["document"].update(number="N-other"),
    "status": lambda p: p.update(status="civilian_detainee"),
    "extra_field": lambda p: p.update(note="wounded"),
    "removed_field": lambda p: p.pop("unit"),
}


@pytest.mark.parametrize("field", sorted(_CHANGES))
@pytest.mark.parametrize("index", [0, 2])
def test_the_manifest_hash_changes_when_any_person_changes(field: str, index: int) -> None:
    people = persons(RU, [1, 2, 3])
    changed = copy.deepcopy(people)
    _CHANGES[field](changed[index])
    assert _exchange_with(changed).manifest_hash != _exchange_with(people).manifest_hash


def test_the_manifest_hash_changes_with_order_count_and_envelope() -> None:
    people = persons(RU, [1, 2, 3])
    base = _exchange_with(people).manifest_hash
    assert _exchange_with(people[::-1]).manifest_hash != base
    assert _exchange_with(people[:2]).manifest_hash != base
    assert _exchange_with([*people, people[0]]).manifest_hash != base
    ex = Exchange(XID, MEMBERS, mediator=MED)
    ex.apply(FormMessage("e-other", RU, "2026-03-01T10:00:00Z", LIST_FORM, _list(people)))
    ex.apply(FormMessage("e-ua", UA, "2026-03-01T10:00:01Z", LIST_FORM, _list(persons(UA, [1, 2]))))
    assert ex.manifest_hash != base


# Reconciliation ----------------------------------------------------------------------


def _agreed_channel(ru: Iterable[int], ua: Iterable[int]) -> Channel:
    ch = Channel()
    ch.propose(RU, persons(RU, ru))
    ch.propose(UA, persons(UA, ua))
    ch.agree()
    return ch


def test_handed_over_but_not_received_is_a_discrepancy() -> None:
    ch = _agreed_channel([1, 2, 3, 4], [])
    ch.report(RU, [(RU, f"RU-000{n}", HANDED_OVER) for n in (1, 2, 3)])
    ch.report(UA, [(RU, "RU-0002", NOT_PRESENT), (RU, "RU-0003", RECEIVED)])
    ch.report(MED, [(RU, "RU-0004", RECEIVED)])
    report = ch.exchange.report()
    assert report.per_side[RU] == SideCounts(4, 2, 1, 0, 0, 1)
    found = {d.ref: d for d in report.discrepancies}
    assert set(found) == {"RU-0001", "RU-0002", "RU-0004"}
    assert all(d.code == "not_received" for d in found.values())
    assert found["RU-0001"].what.startswith(
        "RU-GS reported RU-0001 on RU-GS's list handed over, but "
        "UA-GS has not reported receiving them"
    )
    assert "but UA-GS reported not_present" in found["RU-0002"].what
    assert found["RU-0004"].what.startswith("MEDIATOR reported RU-0004")


def test_persons_without_status_duplicates_and_dropped_persons_are_discrepancies() -> None:
    ch = Channel()
    ru = persons(RU, [1, 2, 3])
    ch.propose(RU, [*ru, person("RU-0002", rank="private")])
    ch.propose(UA, [])
    ch.agree()
    ch.report(RU, [(RU, "RU-0001", HANDED_OVER), (RU, "RU-0003", HANDED_OVER)])
    ch.report(UA, [(RU, "RU-0001", RECEIVED), (RU, "RU-0002", RECEIVED)])
    report = ch.exchange.report()
    assert report.per_side[RU] == SideCounts(3, 1, 2, 0, 0, 0)
    assert [(d.ref, d.code) for d in report.discrepancies] == [
        ("RU-0002", "duplicate_ref"),
        ("RU-0003", "not_received"),
    ]
    assert "RU-GS's list (revision 1) names RU-0002 2 times" in report.discrepancies[0].what
    # RU drops RU-0001, who was already received, and adds RU-0004.
    ch.propose(RU, persons(RU, [2, 3, 4]))
    report = ch.exchange.report()
    assert not report.agreed
    assert report.per_side[RU] == SideCounts(3, 1, 1, 0, 0, 1)
    assert [(d.ref, d.code) for d in report.discrepancies] == [
        ("RU-0003", "not_received"),
        ("RU-0004", "no_status"),
        ("RU-0001", "reported_not_listed"),
    ]
    assert report.discrepancies[1].what == "nobody has reported on RU-0004 on RU-GS's list"
    assert report.discrepancies[2].what == (
        "revision 2 of RU-GS's list no longer names RU-0001, who has status reports: "
        "RU-GS: handed_over, UA-GS: received"
    )


def test_without_a_named_mediator_every_other_member_is_a_receiving_side() -> None:
    ex = Exchange(XID, MEMBERS)
    ch = Channel(ex)
    ch.propose(RU, persons(RU, [1, 2]))
    ch.agree()
    assert ex.receivers_of(RU) == (MED, UA)
    ch.report(MED, [(RU, "RU-0001", RECEIVED)])
    ch.report(RU, [(RU, "RU-0002", HANDED_OVER)])
    report = ex.report()
    assert report.per_side[RU] == SideCounts(2, 1, 1, 0, 0, 0)
    (discrepancy,) = report.discrepancies
    assert discrepancy.what.startswith(
        "RU-GS reported RU-0002 on RU-GS's list handed over, but MEDIATOR has not reported "
        "receiving them; UA-GS has not reported receiving them"
    )


# Robustness --------------------------------------------------------------------------


def test_duplicate_envelopes_garbage_and_foreign_data_are_recorded_not_raised() -> None:
    ch = Channel()
    ex = ch.exchange
    msg = ch.propose(RU, persons(RU, [1]))
    ex.apply(msg)
    bad_lists: list[Any] = [
        None,
        [],
        {"exchange_id": XID},
        {"exchange_id": XID, "revision": True, "persons": []},
        {"exchange_id": XID, "revision": 2, "persons": [{"ref": ""}]},
        {"exchange_id": XID, "revision": 2, "persons": [person("RU-1", rank=1.5)]},
        {"exchange_id": XID, "revision": 2, "persons": [person("RU-1", rank=2**60)]},
        {"exchange_id": "PX-OTHER", "revision": 2, "persons": []},
    ]
    for data in bad_lists:
        ch.send(RU, LIST_FORM, data)
    bad_agreements: list[Any] = [
        {"exchange_id": XID, "manifest": 7, "lists": []},
        {"exchange_id": XID, "manifest": "ab", "lists": [{"party": RU}]},
    ]
    for data in bad_agreements:
        ch.send(UA, AGREEMENT_FORM, data)
    ch.send(UA, STATUS_FORM, {"exchange_id": XID, "manifest": "ab", "updates": {}})
    ch.send(UA, "INCIDENT_REPORT", {"exchange_id": XID})
    assert codes(ex) == [
        "duplicate_envelope",
        *["malformed"] * 7,
        "wrong_exchange",
        "malformed",
        "malformed",
        "malformed",
        "not_an_exchange_form",
    ]
    assert ex.lists[RU].revision == 1
    assert ex.agreements == {}
    for problem in ex.problems:
        assert problem.what.startswith(problem.sender)


def test_the_exchange_refuses_a_bad_setup() -> None:
    with pytest.raises(UsageError):
        Exchange("", MEMBERS)
    with pytest.raises(UsageError):
        Exchange(XID, frozenset({RU}))
    with pytest.raises(UsageError, match="mediator"):
        Exchange(XID, frozenset({RU, UA}), mediator=MED)


def test_exchanges_from_groups_a_transcript_by_exchange() -> None:
    ch = Channel()
    other = {"exchange_id": "PX-2026-12", "revision": 1, "persons": persons(UA, [1])}
    transcript = [
        ch.message(RU, LIST_FORM, _list(persons(RU, [1]))),
        ch.message(UA, "INCIDENT_REPORT", {"exchange_id": XID}),
        ch.message(UA, LIST_FORM, other),
        ch.message(UA, LIST_FORM, {"revision": 1}),
        ch.message(UA, LIST_FORM, _list(persons(UA, [1, 2]))),
    ]
    seen: list[str] = []

    def members_of(exchange_id: str) -> frozenset[str]:
        seen.append(exchange_id)
        return MEMBERS

    found = exchanges_from(transcript, members_of, mediator=MED)
    assert list(found) == [XID, "PX-2026-12"]
    assert seen == [XID, "PX-2026-12"]
    assert sorted(found[XID].lists) == [RU, UA]
    assert list(found["PX-2026-12"].lists) == [UA]
    assert found[XID].problems == ()
    assert found[XID].mediator == MED
    again = exchanges_from(transcript, MEMBERS)
    assert again[XID].manifest_hash == found[XID].manifest_hash


# Properties ----------------------------------------------------------------------------

_SENDERS = st.sampled_from([RU, UA, MED, "XX-GS"])
_REFS = st.sampled_from(["A-1", "A-2", "A-3", "B-1", "B-2"])
_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def _person(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_JUNK)
    data: dict[str, Any] = {"ref": draw(_REFS), "status": "prisoner_of_war"}
    if draw(st.integers(0, 19)) != 0:  # a prisoner list needs names, a remains list does not
        data["name"] = {"full_name": draw(st.text(max_size=8)), "script": "ru"}
    return data


def _status_message(data: st.DataObject, ex: Exchange) -> dict[str, Any]:
    """Random EXCHANGE_STATUS data, mostly about listed persons and the current manifest."""
    listed = [(party, ref) for party, v in ex.lists.items() for ref in v.refs]
    anyone = st.tuples(_SENDERS, _REFS)
    key = st.one_of(st.sampled_from(listed), st.sampled_from(listed), anyone) if listed else anyone
    updates: list[dict[str, Any]] = []
    for (party, ref), status in data.draw(
        st.lists(st.tuples(key, st.sampled_from([*STATUSES, "lost"])), min_size=1, max_size=4)
    ):
        updates.append({"party": party, "ref": ref, "status": status})
    manifest = ex.manifest_hash if data.draw(st.integers(0, 5)) else "00" * 32
    return {"exchange_id": XID, "manifest": manifest, "updates": updates}


def _random_step(data: st.DataObject, ch: Channel) -> None:
    ex = ch.exchange
    sender = data.draw(_SENDERS, label="sender")
    action = data.draw(
        st.sampled_from(["list", "list", "agree", "agree_all", "status", "junk"]), label="action"
    )
    if action == "list":
        form = data.draw(st.sampled_from([LIST_FORM, LIST_FORM, REMAINS_FORM]))
        revision = next_revision(ex, sender) + data.draw(st.sampled_from([0, 0, 0, 1, -1]))
        people = data.draw(st.lists(_person(), max_size=5))
        ch.propose(sender, people, revision=revision, form=form)
    elif action == "agree" and ex.manifest_hash is not None:
        agreement = ex.agreement_data()
        if data.draw(st.integers(0, 4)) == 0:
            agreement["manifest"] = data.draw(st.sampled_from(["00" * 32, "ab"]))
        ch.send(sender, AGREEMENT_FORM, agreement)
    elif action == "agree_all" and ex.manifest_hash is not None:
        ch.agree(RU, UA, MED)
    elif action == "status":
        ch.send(sender, STATUS_FORM, _status_message(data, ex))
    else:
        form = data.draw(st.sampled_from([LIST_FORM, AGREEMENT_FORM, STATUS_FORM, "OTHER"]))
        fields = dict.fromkeys(("revision", "persons", "manifest", "lists", "updates"), _JUNK)
        junk = data.draw(
            _JUNK | st.fixed_dictionaries({"exchange_id": st.just(XID)}, optional=fields)
        )
        ch.send(sender, form, junk)


@settings(max_examples=scaled(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans(), st.booleans())
def test_random_message_sequences_never_raise_and_counts_add_up(
    data: st.DataObject, named_mediator: bool, settle: bool
) -> None:
    ex = Exchange(XID, MEMBERS, mediator=MED if named_mediator else None)
    ch = Channel(ex)
    for _ in range(data.draw(st.integers(0, 25), label="length")):
        _random_step(data, ch)
    if settle and ex.manifest_hash is not None:
        # Everyone agrees, then members report at random: statuses get applied.
        ch.agree(RU, UA, MED)
        assert ex.agreed
        for _ in range(data.draw(st.integers(1, 8), label="reports")):
            sender = data.draw(_SENDERS, label="reporter")
            ch.send(sender, STATUS_FORM, _status_message(data, ex))

    report = ex.report()
    assert set(report.per_side) == set(ex.lists)
    for party, counts in report.per_side.items():
        assert counts.listed == len(set(ex.lists[party].refs))
        assert counts.listed == (
            counts.handed_over
            + counts.received
            + counts.not_present
            + counts.declined_to_return
            + counts.unresolved
        )
    assert len(report.persons) == sum(c.listed for c in report.per_side.values())
    assert report.agreed == ex.agreed
    if ex.agreed:
        assert set(ex.agreements.values()) == {ex.manifest_hash}
    for problem in report.problems:
        assert problem.what.startswith(problem.sender)
    for discrepancy in report.discrepancies:
        assert isinstance(discrepancy, Discrepancy)
        assert discrepancy.party in discrepancy.what
        assert discrepancy.ref in discrepancy.what
    # Every accepted revision follows the previous one of the same side.
    last: dict[str, int] = {}
    for version in ex.history:
        assert version.revision == last.get(version.party, 0) + 1
        last[version.party] = version.revision
    # Only members' reports on listed persons are kept, and no side received its own.
    for (party, ref), reports in ex.statuses.items():
        assert any(ref in v.refs for v in ex.history if v.party == party)
        assert set(reports) <= MEMBERS
        assert reports.get(party) is None or reports[party].status != RECEIVED
    # The state is a function of the transcript: a replay gives the same report.
    replayed = Exchange(XID, MEMBERS, mediator=ex.mediator)
    for msg in ch.sent:
        replayed.apply(msg)
    assert replayed.report() == report
