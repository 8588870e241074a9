"""Recovering a lost log tail from peers (pure): order from the mirror, checks, holes, freezing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley import merkle
from parley.core.party import Party
from parley.core.recovery import plan_recovery
from parley.errors import ParleyError, RolledBack, VerificationError
from parley.testing import ManualClock, PartyPair


def _traffic(pair: PartyPair, rounds: int = 6) -> None:
    """Messages both ways, receipts back: both kinds of entry in both logs."""
    for n in range(rounds):
        sender = pair.a if n % 3 else pair.b
        pair.deliver(sender.send_text([pair.peer_of(sender).party], f"m{n}", operator="o"), sender)


def _entries(party: Party) -> list[bytes]:
    return [party.transcript.entry(i) for i in range(party.transcript.size)]


def _fresh_copy(pair: PartyPair, entries: list[bytes]) -> Party:
    """A terminal of ``pair.a``'s party restored from ``entries`` (an old backup)."""
    copy = Party(pair.a.identity, clock=pair.a.clock)
    copy.add_peer(pair.b.identity.card, pair.b.identity.card.fingerprint)
    copy.restore(entries)
    return copy


@pytest.fixture
def pair() -> PartyPair:
    pair = PartyPair.create(ManualClock())
    _traffic(pair, 9)
    return pair


def test_the_missing_entries_go_back_in_their_original_order(pair: PartyPair) -> None:
    entries = _entries(pair.a)
    leaves = [pair.a.transcript.tree.leaf(i) for i in range(len(entries))]
    target = pair.a.checkpoint()
    kept = 5
    candidates = [*entries[kept:], b"\x01not an entry of this log"]
    random.Random(7).shuffle(candidates)
    plan = plan_recovery(leaves[:kept], target, leaves, candidates)
    assert plan.complete
    assert list(plan.entries) == entries[kept:]

    copy = _fresh_copy(pair, entries[:kept])
    for entry in plan.entries:
        copy.append_recovered(entry)
    assert copy.transcript.root() == pair.a.transcript.root()
    # Sequence numbers go on where the lost log left them: no reuse.
    resent = copy.send_text(["RU-GS"], "after recovery", operator="o")
    assert pair.b.receive_envelope(resent.raw).events


def test_an_entry_no_peer_holds_is_a_hole_and_nothing_after_it_is_placed(pair: PartyPair) -> None:
    entries = _entries(pair.a)
    leaves = [pair.a.transcript.tree.leaf(i) for i in range(len(entries))]
    lost = 7
    candidates = [e for i, e in enumerate(entries) if i != lost]
    plan = plan_recovery(leaves[:4], pair.a.checkpoint(), leaves, candidates[4:])
    assert not plan.complete
    assert [h.index for h in plan.holes] == [lost]
    assert plan.holes[0].leaf == leaves[lost]
    assert list(plan.entries) == entries[4:lost]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_holes_are_exactly_the_entries_no_peer_offered(data: st.DataObject) -> None:
    pair = PartyPair.create(ManualClock())
    _traffic(pair, 5)
    entries = _entries(pair.a)
    leaves = [pair.a.transcript.tree.leaf(i) for i in range(len(entries))]
    kept = data.draw(st.integers(0, len(entries) - 1))
    missing = data.draw(st.sets(st.integers(kept, len(entries) - 1), max_size=4))
    offered = [e for i, e in enumerate(entries) if i >= kept and i not in missing]
    plan = plan_recovery(leaves[:kept], pair.a.checkpoint(), leaves, offered)
    assert [h.index for h in plan.holes] == sorted(missing)
    first = min(missing, default=len(entries))
    assert list(plan.entries) == entries[kept:first]


def test_a_mirror_that_is_not_the_log_is_refused(pair: PartyPair) -> None:
    entries = _entries(pair.a)
    leaves = [pair.a.transcript.tree.leaf(i) for i in range(len(entries))]
    swapped = [*leaves]
    swapped[5], swapped[6] = swapped[6], swapped[5]  # the right entries, in a false order
    with pytest.raises(VerificationError, match="do not hash"):
        plan_recovery(leaves[:3], pair.a.checkpoint(), swapped, entries)
    with pytest.raises(VerificationError, match="fewer than"):
        plan_recovery(leaves[:3], pair.a.checkpoint(), leaves[:-1], entries)


def test_a_surviving_log_that_differs_from_the_witnessed_one_is_refused(pair: PartyPair) -> None:
    entries = _entries(pair.a)
    leaves = [pair.a.transcript.tree.leaf(i) for i in range(len(entries))]
    own = [*leaves[:4]]
    own[2] = merkle.leaf_hash(b"\x01something else")
    with pytest.raises(VerificationError, match="entry 2"):
        plan_recovery(own, pair.a.checkpoint(), leaves, entries)


def test_a_recovered_entry_that_is_not_ours_is_refused(pair: PartyPair) -> None:
    third = PartyPair.create(ManualClock(), a=("UA-GS", "General Staff of Ukraine"))
    _traffic(third, 2)
    copy = _fresh_copy(pair, _entries(pair.a)[:3])
    with pytest.raises(ParleyError):
        copy.append_recovered(_entries(third.a)[0])  # UA-GS's envelope, not US-EUCOM's
    with pytest.raises(VerificationError, match="already in the log"):
        copy.append_recovered(_entries(pair.a)[0])
    assert copy.transcript.size == 3


def test_a_frozen_party_signs_nothing_new_and_its_log_does_not_change(pair: PartyPair) -> None:
    unreceipted = pair.a.send_text(["RU-GS"], "before the freeze", operator="o")
    receipt = pair.b.receive_envelope(unreceipted.raw).receipt
    before = pair.a.checkpoint()
    pair.a.frozen = "rolled back"
    with pytest.raises(RolledBack):
        pair.a.receive_receipt(receipt)  # logging it would change the log
    with pytest.raises(RolledBack):
        pair.a.send_text(["RU-GS"], "no", operator="o")
    incoming = pair.b.send_text(["US-EUCOM"], "to a frozen terminal", operator="o")
    with pytest.raises(RolledBack):
        pair.a.receive_envelope(incoming.raw)
    with pytest.raises(RolledBack):
        pair.a.offer_checkpoint(pair.b.checkpoint_request("US-EUCOM"))
    assert pair.a.transcript.size == before.size
    assert pair.a.checkpoint() == before  # the last one signed is only read
    pair.a.frozen = None
    assert pair.a.receive_envelope(incoming.raw).events
