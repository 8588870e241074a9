"""The card policy: how long a card may be valid, and the window signatures are dated in.

A peer card valid from 1970 to 2970 was once pinned without a word, and a
FLASH dated 1971 was accepted from it. ``check_card_window`` refuses such a
card before it is pinned; envelopes and receipts dated outside the signer's
card are refused on arrival.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from parley.core.envelope import Content, open_envelope, seal_envelope
from parley.core.identity import Identity, check_card_window, describe_span
from parley.errors import InvalidSignature, LocalError, UnacceptableCard
from parley.testing import ManualClock, PartyPair

NOW = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
THREE_YEARS = timedelta(days=1095)
SKEW = timedelta(minutes=10)


def _card(valid_from: datetime, validity: timedelta) -> Identity:
    return Identity.generate("RU-GS", "General Staff", now=valid_from, validity=validity)


def _check(identity: Identity, now: datetime = NOW) -> None:
    check_card_window(identity.card, now=now, max_validity=THREE_YEARS, clock_skew=SKEW)


def test_a_thousand_year_card_is_refused_saying_who_and_which_rule() -> None:
    start, end = datetime(1970, 1, 1, tzinfo=UTC), datetime(2970, 1, 1, tzinfo=UTC)
    card = _card(start, end - start)
    with pytest.raises(UnacceptableCard) as caught:
        _check(card)
    assert str(caught.value) == (
        "RU-GS's card is valid for 1000 years (1970-01-01 to 2970-01-01); the most this "
        "terminal accepts is 3 years (max_card_validity_days): ask for a card with a "
        "shorter validity"
    )
    assert isinstance(caught.value, LocalError)  # handed over by hand: the operator asks again


def test_the_default_card_and_one_of_exactly_the_maximum_are_accepted() -> None:
    _check(_card(NOW - timedelta(days=1), timedelta(days=730)))
    _check(_card(NOW - timedelta(days=1), THREE_YEARS))
    with pytest.raises(UnacceptableCard, match="valid for 3 years"):
        _check(_card(NOW - timedelta(days=1), THREE_YEARS + timedelta(seconds=1)))


def test_a_card_beginning_beyond_the_clock_skew_is_refused() -> None:
    _check(_card(NOW + SKEW, timedelta(days=365)))  # within the skew: accepted
    with pytest.raises(UnacceptableCard, match=r"begins at 2026-02-05T13:00:00.000Z, 1 hour ahead"):
        _check(_card(NOW + timedelta(hours=1), timedelta(days=365)))


def test_an_expired_card_is_refused() -> None:
    expired = _card(NOW - timedelta(days=400), timedelta(days=365))
    with pytest.raises(UnacceptableCard, match=r"RU-GS's card expired at 2026-01-01T12:00:00.000Z"):
        _check(expired)
    _check(expired, now=NOW - timedelta(days=40))  # while it was valid, it passed


@pytest.mark.parametrize(
    ("span", "said"),
    [
        (timedelta(days=1095), "3 years"),
        (timedelta(days=365), "1 year"),
        (timedelta(days=90), "90 days"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(minutes=10), "10 minutes"),
    ],
)
def test_spans_are_said_as_a_person_says_them(span: timedelta, said: str) -> None:
    assert describe_span(span) == said


def test_a_flash_dated_1971_is_refused_from_a_current_card(
    us_eucom: Identity, ru_gs: Identity
) -> None:
    raw = seal_envelope(
        ru_gs,
        [us_eucom.card],
        envelope_id="019c2dac-6a00-7c89-bf37-8e083c95fc6f",
        channel="RU-GS.US-EUCOM",
        seq=1,
        created_at=datetime(1971, 6, 1, tzinfo=UTC),
        precedence="FLASH",
        kind="text",
        content=Content(lang="en", operator="o", body={"text": "backdated"}),
    )
    with pytest.raises(InvalidSignature, match=r"dated 1971-06-01.*outside the validity"):
        open_envelope(raw, me=us_eucom, lookup={"RU-GS": ru_gs.card}.get, now=NOW)


def test_a_receipt_dated_after_the_receivers_card_expired_is_refused() -> None:
    clock = ManualClock(NOW)
    pair = PartyPair.create(clock)
    out = pair.a.send_text(["RU-GS"], "sent while both cards were valid", operator="o")
    # RU-GS's clock runs past the end of its own card, and it still answers.
    clock.now = pair.b.identity.card.valid_until + timedelta(minutes=1)
    receipt = pair.b.receive_envelope(out.raw).receipt
    with pytest.raises(
        InvalidSignature, match=r"receipt from RU-GS is dated .* outside the validity"
    ):
        pair.a.receive_receipt(receipt)
    assert pair.a.receipted_through("RU-GS.US-EUCOM", "RU-GS") == 0
