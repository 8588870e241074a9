"""Whatever the network does to envelopes, the receiver logs each exactly once."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core.party import DuplicateReceived, GapDetected, MessageReceived, Party
from parley.testing import PartyPair
from tests.scale import scaled

_PAIR = PartyPair.create()


@settings(max_examples=scaled(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(min_value=0, max_value=11), min_size=1, max_size=40),
)
def test_any_order_with_duplicates_and_losses_yields_exact_once_and_honest_receipts(
    deliveries: list[int],
) -> None:
    # A fresh pair of state machines each example, with the keys generated once.
    a = Party(_PAIR.a.identity, clock=_PAIR.a.clock)
    b = Party(_PAIR.b.identity, clock=_PAIR.b.clock)
    a.add_peer(b.identity.card, b.identity.card.fingerprint)
    b.add_peer(a.identity.card, a.identity.card.fingerprint)
    sent = [a.send_text(["RU-GS"], f"m{i}", operator="o") for i in range(12)]
    held: set[int] = set()
    for index in deliveries:
        out = sent[index]
        result = b.receive_envelope(out.raw)
        receipt = a.receive_receipt(result.receipt).receipt
        first = result.events[0]
        if out.seq in held:
            assert isinstance(first, DuplicateReceived)
        else:
            assert isinstance(first, MessageReceived)
            assert first.envelope.header.seq == out.seq
        held.add(out.seq)
        contiguous = 0
        while contiguous + 1 in held:
            contiguous += 1
        expected_missing = tuple(s for s in range(contiguous + 1, max(held)) if s not in held)
        assert receipt.through_seq == contiguous
        assert receipt.missing == expected_missing
        gaps = [e for e in result.events if isinstance(e, GapDetected)]
        assert all(g.missing == expected_missing for g in gaps)
    # Exactly once in the transcript: one envelope entry per distinct message.
    assert b.transcript.size == 2 * len(held)  # each new envelope and its receipt
    assert a.receipted_through(sent[0].channel, "RU-GS") == contiguous
