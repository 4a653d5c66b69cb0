"""Retry arithmetic as a table: time is a parameter."""

from __future__ import annotations

import pytest

from postvakt.queue.schedule import RetryPolicy, backoff, expired, next_retry, warn_delay

P = RetryPolicy()  # 5 min doubling to 1 h, give up after 5 days, warn after 4 h
DAY = 86400.0


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        (0, 0),
        (1, 300),
        (2, 600),
        (3, 1200),
        (4, 2400),
        (5, 3600),
        (6, 3600),
        (50, 3600),
        (10_000, 3600),
    ],
)
def test_backoff_grows_from_5_minutes_to_at_most_1_hour(attempts: int, delay: float) -> None:
    assert backoff(P, attempts) == delay


@pytest.mark.parametrize(
    ("received", "attempts", "now", "expected"),
    [
        (0.0, 1, 10.0, 310.0),
        (0.0, 6, 1000.0, 4600.0),
        # Near the end, the next try is pulled in to the give-up moment itself.
        (0.0, 6, 5 * DAY - 100, 5 * DAY),
    ],
)
def test_next_retry(received: float, attempts: int, now: float, expected: float) -> None:
    assert next_retry(P, received, attempts, now) == expected


@pytest.mark.parametrize(
    ("age", "gone"), [(0, False), (5 * DAY - 1, False), (5 * DAY, True), (6 * DAY, True)]
)
def test_give_up_after_5_days(age: float, gone: bool) -> None:
    assert expired(P, 1000.0, 1000.0 + age) is gone


@pytest.mark.parametrize(
    ("policy", "age", "warned", "warn"),
    [
        (P, 3 * 3600, False, False),
        (P, 4 * 3600, False, True),
        (P, 4 * 3600, True, False),  # only once
        (RetryPolicy(delay_warning=0), 10 * DAY, False, False),  # 0 disables
        (RetryPolicy(delay_warning=60), 61, False, True),
    ],
)
def test_delay_warning(policy: RetryPolicy, age: float, warned: bool, warn: bool) -> None:
    assert warn_delay(policy, 0.0, age, warned) is warn


def test_configurable() -> None:
    p = RetryPolicy(retry_initial=10, retry_max=25, give_up=100)
    assert [backoff(p, n) for n in range(1, 5)] == [10, 20, 25, 25]
    assert expired(p, 0, 100) and not expired(p, 0, 99)
