"""Retry arithmetic for the queue manager, as pure functions.

House rules: no clock, no I/O. `now` is always a parameter, so every decision
can be tested as a table of numbers.

The backoff doubles from `retry_initial` up to `retry_max` (Postfix:
minimal_backoff_time 300 s, maximal_backoff_time 4000 s; RFC 5321 §4.5.4.1 asks
for patience, at least 30 minutes between tries in the steady state). A message
is given up `give_up` seconds after it arrived (RFC 5321 §4.5.4.1: 4-5 days).
"""

from __future__ import annotations

from dataclasses import dataclass

# Growth factor of the backoff, as in Postfix's qmgr (each deferral doubles).
BACKOFF_FACTOR = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    retry_initial: float = 5 * 60
    retry_max: float = 60 * 60
    give_up: float = 5 * 24 * 3600
    delay_warning: float = 4 * 3600


def backoff(policy: RetryPolicy, attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed try (1 = the first)."""
    if attempts < 1:
        return 0.0
    delay = policy.retry_initial * BACKOFF_FACTOR ** min(attempts - 1, 64)
    return min(delay, policy.retry_max)


def next_retry(policy: RetryPolicy, received_at: float, attempts: int, now: float) -> float:
    """When to try again, never later than the give-up moment (so the final
    try, and its bounce, happen on time)."""
    return min(now + backoff(policy, attempts), received_at + policy.give_up)


def expired(policy: RetryPolicy, received_at: float, now: float) -> bool:
    """Stop retrying: the message has been in the queue for `give_up` seconds."""
    return now - received_at >= policy.give_up


def warn_delay(policy: RetryPolicy, received_at: float, now: float, warned: bool) -> bool:
    """Send the one "still trying" notice (RFC 3464 action=delayed)? 0 disables."""
    if warned or policy.delay_warning <= 0:
        return False
    return now - received_at >= policy.delay_warning
