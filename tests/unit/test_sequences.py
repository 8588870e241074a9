"""HeldSequences: the sequence numbers held from one sender, kept as ranges.

Checked against the plainest model there is (a set of numbers), and for the
property the ranges exist for: a gap costs nothing per envelope after it.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core.party import ResumeState
from parley.core.sequences import MAX_MISSING, HeldSequences
from parley.testing import ManualClock, PartyPair
from tests.scale import scaled

numbers = st.lists(st.integers(min_value=1, max_value=200), max_size=120)


def model_contiguous(held: set[int]) -> int:
    n = 0
    while n + 1 in held:
        n += 1
    return n


def model_missing(held: set[int]) -> tuple[int, ...]:
    top = max(held, default=0)
    return tuple(q for q in range(1, top) if q not in held)[:MAX_MISSING]


@settings(max_examples=scaled(300), deadline=None)
@given(numbers)
def test_ranges_agree_with_a_set(seqs: list[int]) -> None:
    held = HeldSequences()
    model: set[int] = set()
    for seq in seqs:
        assert held.add(seq) == (seq not in model)
        model.add(seq)
        assert held.contiguous == model_contiguous(model)
        assert held.max_seen == max(model)
        assert held.missing() == model_missing(model)
    for q in range(0, 202):
        assert held.holds(q) == (q in model)
    ranges = held.ranges()
    # The stored form: sorted, disjoint, never adjacent (one range per run).
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start > end + 1
    assert {q for lo, hi in ranges for q in range(lo, hi + 1)} == model
    assert HeldSequences(ranges) == held
    assert list(held.holes()) == _model_holes(model)


def _model_holes(held: set[int]) -> list[tuple[int, int]]:
    holes: list[tuple[int, int]] = []
    for q in range(1, max(held, default=0)):
        if q in held:
            continue
        if holes and holes[-1][1] == q - 1:
            holes[-1] = (holes[-1][0], q)
        else:
            holes.append((q, q))
    return holes


@settings(max_examples=scaled(200), deadline=None)
@given(st.lists(st.tuples(st.integers(1, 100), st.integers(0, 20)), max_size=20))
def test_a_stored_form_with_overlapping_or_adjacent_ranges_reads_as_their_union(
    pairs: list[tuple[int, int]],
) -> None:
    ranges = [(lo, lo + width) for lo, width in pairs]
    held = HeldSequences(ranges)
    union = {q for lo, hi in ranges for q in range(lo, hi + 1)}
    assert {q for lo, hi in held.ranges() for q in range(lo, hi + 1)} == union
    assert held.contiguous == model_contiguous(union)


@pytest.mark.parametrize("bad", [(0, 3), (5, 4), (-2, -1)])
def test_a_range_that_is_not_one_is_refused(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="is not a range"):
        HeldSequences([bad])
    with pytest.raises(ValueError, match="is not a sequence number"):
        HeldSequences().add(0)


def test_a_withheld_number_is_two_boundaries_however_much_follows() -> None:
    held = HeldSequences()
    for seq in range(2, 15_002):
        held.add(seq)
    assert held.ranges() == [(2, 15_001)]
    assert held.contiguous == 0
    assert held.missing() == (1,)
    held.add(1)
    assert held.ranges() == [(1, 15_001)]
    assert held.missing() == ()


def test_a_huge_gap_lists_only_its_beginning() -> None:
    held = HeldSequences([(1, 3), (2**53 - 1, 2**53 - 1)])
    missing = held.missing()
    assert len(missing) == MAX_MISSING
    assert (missing[0], missing[-1]) == (4, 3 + MAX_MISSING)
    assert list(held.holes()) == [(4, 2**53 - 2)]


@settings(
    max_examples=scaled(10, least=3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.permutations(list(range(1, 13))), st.integers(0, 12))
def test_a_party_resumed_from_ranges_answers_as_the_one_that_received(
    order: list[int], kept: int
) -> None:
    """Party.resume takes the ranges; the receiver resumed from them holds and misses
    exactly what the one that received the envelopes does."""
    pair = PartyPair.create(ManualClock())
    outs = [
        pair.a.send([pair.b.party], kind="text", body={"text": str(i)}, operator="o")
        for i in range(12)
    ]
    channel = outs[0].channel
    for seq in order[:kept]:
        pair.b.receive_envelope(outs[seq - 1].raw)
    held = pair.b.held_through(channel, pair.a.party)
    ranges = pair.b.held_ranges(channel, pair.a.party)
    resumed = PartyPair.create(ManualClock())  # any identity: only the counters matter
    resumed.b.resume(
        ResumeState(
            leaves=[],
            latest_checkpoint=None,
            channels={},
            last_sent={},
            inbound={(channel, pair.a.party): ranges},
            receipted_through={},
        )
    )
    assert resumed.b.held_through(channel, pair.a.party) == held
    assert held == (model_contiguous(set(order[:kept])), model_missing(set(order[:kept])))
