from __future__ import annotations

import dataclasses

import pytest

from forwarder.core.counters import Drop
from forwarder.core.timestamps import EPICS_EPOCH_NS, NS_PER_S, TimestampPolicy

NOW = 1_700_000_000 * NS_PER_S + 123_456_789
MINUTE = 60 * NS_PER_S
DAY = 24 * 3600 * NS_PER_S

STRICT = TimestampPolicy()
RECEIVE_TIME = TimestampPolicy(use_receive_time=True)


def test_defaults_are_ten_minutes_and_a_year() -> None:
    assert STRICT.max_future_ns == 10 * MINUTE
    assert STRICT.max_age_ns == 365 * DAY
    assert STRICT.use_receive_time is False


def test_drop_reasons_are_the_counted_metric_labels() -> None:
    """The policy's reasons are the `Drop` members status and metrics count, not a copy."""
    reasons = {
        STRICT.check(NOW - 1, NOW, NOW)[1],
        STRICT.check(NOW + 11 * MINUTE, 0, NOW)[1],
        STRICT.check(0, 0, NOW)[1],
    }
    assert reasons == {Drop.OLDER_THAN_PREVIOUS, Drop.TOO_FAR_IN_FUTURE, Drop.TOO_OLD}
    labels = {r.value for r in reasons if r}
    assert labels == {"older_than_previous", "too_far_in_future", "too_old"}


@pytest.mark.parametrize("update", [NOW, NOW - 5 * MINUTE, NOW + 10 * MINUTE, NOW - 365 * DAY])
def test_plausible_timestamp_is_accepted_unchanged(update: int) -> None:
    assert STRICT.check(update, 0, NOW) == (update, None)
    assert RECEIVE_TIME.check(update, 0, NOW) == (update, None)


def test_older_than_previous_is_dropped_but_equal_is_accepted() -> None:
    previous = NOW - MINUTE
    assert STRICT.check(previous - 1, previous, NOW) == (0, Drop.OLDER_THAN_PREVIOUS)
    assert STRICT.check(previous, previous, NOW) == (previous, None)
    assert STRICT.check(previous + 1, previous, NOW) == (previous + 1, None)


def test_future_limit_boundary() -> None:
    assert STRICT.check(NOW + 10 * MINUTE, 0, NOW) == (NOW + 10 * MINUTE, None)
    assert STRICT.check(NOW + 10 * MINUTE + 1, 0, NOW) == (0, Drop.TOO_FAR_IN_FUTURE)


def test_age_limit_boundary() -> None:
    assert STRICT.check(NOW - 365 * DAY, 0, NOW) == (NOW - 365 * DAY, None)
    assert STRICT.check(NOW - 365 * DAY - 1, 0, NOW) == (0, Drop.TOO_OLD)


@pytest.mark.parametrize("update", [0, EPICS_EPOCH_NS, 631_152_000 * NS_PER_S])
def test_never_processed_records_are_too_old(update: int) -> None:
    assert STRICT.check(update, 0, NOW) == (0, Drop.TOO_OLD)


def test_epics_epoch_is_too_old_even_with_a_huge_age_limit() -> None:
    lenient = TimestampPolicy(max_age_ns=100 * 365 * DAY)
    assert lenient.check(EPICS_EPOCH_NS, 0, NOW) == (0, Drop.TOO_OLD)
    assert lenient.check(EPICS_EPOCH_NS + NS_PER_S, 0, NOW) == (EPICS_EPOCH_NS + NS_PER_S, None)


def test_custom_limits_are_used() -> None:
    policy = TimestampPolicy(max_future_ns=NS_PER_S, max_age_ns=MINUTE)
    assert policy.check(NOW + 2 * NS_PER_S, 0, NOW) == (0, Drop.TOO_FAR_IN_FUTURE)
    assert policy.check(NOW - 2 * MINUTE, 0, NOW) == (0, Drop.TOO_OLD)
    assert policy.check(NOW - 30 * NS_PER_S, 0, NOW) == (NOW - 30 * NS_PER_S, None)


@pytest.mark.parametrize("update", [0, EPICS_EPOCH_NS, NOW - 400 * DAY, NOW + DAY])
def test_receive_time_replaces_implausible_timestamps(update: int) -> None:
    assert RECEIVE_TIME.check(update, 0, NOW) == (NOW, None)
    assert RECEIVE_TIME.check(update, NOW, NOW) == (NOW, None)


def test_substituted_receive_time_still_obeys_previous() -> None:
    previous = NOW + 5 * MINUTE  # an earlier, plausible but slightly-future update
    assert RECEIVE_TIME.check(0, previous, NOW) == (0, Drop.OLDER_THAN_PREVIOUS)


def test_receive_time_does_not_rescue_plausible_but_out_of_order_updates() -> None:
    assert RECEIVE_TIME.check(NOW - 2 * MINUTE, NOW - MINUTE, NOW) == (
        0,
        Drop.OLDER_THAN_PREVIOUS,
    )


def test_implausible_reason_wins_over_ordering() -> None:
    assert STRICT.check(0, NOW - MINUTE, NOW) == (0, Drop.TOO_OLD)


def test_sequence_of_updates_tracks_previous() -> None:
    updates = [NOW - 3, NOW - 2, NOW - 2, NOW - 4, NOW + DAY, NOW - 1]
    previous = 0
    results = []
    for update in updates:
        accepted, reason = STRICT.check(update, previous, NOW)
        if reason is None:
            previous = accepted
        results.append(reason)
    assert results == [
        None,
        None,
        None,
        Drop.OLDER_THAN_PREVIOUS,
        Drop.TOO_FAR_IN_FUTURE,
        None,
    ]
    assert previous == NOW - 1


def test_policy_is_frozen_and_validates_limits() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        STRICT.max_age_ns = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        TimestampPolicy(max_future_ns=-1)
    with pytest.raises(ValueError):
        TimestampPolicy(max_age_ns=-1)
