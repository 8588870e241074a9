"""The card-expiry rules: which threshold a card has crossed, and its state, at a time."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from parley.core.expiry import ExpiryAlarm, card_state, days_left, expiry_alarm
from parley.core.identity import Identity


@pytest.mark.parametrize(
    ("before_end", "alarm", "state"),
    [
        (timedelta(days=91), None, "valid"),
        (timedelta(days=90), ExpiryAlarm(90, "warning"), "expiring"),
        (timedelta(days=31), ExpiryAlarm(90, "warning"), "expiring"),
        (timedelta(days=30), ExpiryAlarm(30, "warning"), "expiring"),
        (timedelta(days=7, seconds=1), ExpiryAlarm(30, "warning"), "expiring"),
        (timedelta(days=7), ExpiryAlarm(7, "critical"), "expiring"),
        (timedelta(seconds=1), ExpiryAlarm(7, "critical"), "expiring"),
        (-timedelta(seconds=1), ExpiryAlarm(0, "critical"), "expired"),
    ],
)
def test_the_most_urgent_threshold_crossed_is_the_alarm(
    us_eucom: Identity, before_end: timedelta, alarm: ExpiryAlarm | None, state: str
) -> None:
    now = us_eucom.card.valid_until - before_end
    assert expiry_alarm(us_eucom.card, now) == alarm
    assert card_state(us_eucom.card, now) == state


def test_days_left_round_down_and_a_card_not_yet_begun(us_eucom: Identity, now: datetime) -> None:
    card = us_eucom.card
    assert days_left(card, card.valid_until - timedelta(days=10, hours=23)) == 10
    assert days_left(card, card.valid_until + timedelta(hours=1)) == -1
    assert card_state(card, card.valid_from - timedelta(seconds=1)) == "not yet valid"
