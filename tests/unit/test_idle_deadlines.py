"""server/idle.py: shared timers for the SMTP sessions' idle deadlines."""

from __future__ import annotations

import asyncio

from postvakt.server.idle import TICK, Deadlines


class Session:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.called_at: list[float] = []

    def on_deadline(self) -> None:
        self.called_at.append(self.loop.time())


def test_a_session_is_told_once_never_before_its_deadline() -> None:
    async def main() -> tuple[list[float], list[float], float, float]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        a, b = Session(loop), Session(loop)
        when_a = loop.time() + 0.05
        when_b = when_a + 2 * TICK
        deadlines.arm(a, when_a)
        deadlines.arm(b, when_b)
        while not b.called_at:
            await asyncio.sleep(0.01)
        await asyncio.sleep(TICK)
        return a.called_at, b.called_at, when_a, when_b

    a, b, when_a, when_b = asyncio.run(main())
    assert len(a) == 1 and len(b) == 1
    assert a[0] >= when_a - 0.002  # the loop's clock resolution
    assert b[0] >= when_b - 0.002
    assert a[0] < b[0]


def test_sessions_due_in_one_tick_share_a_key_and_a_cancelled_one_is_not_told() -> None:
    async def main() -> tuple[bool, list[float], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        kept, cancelled = Session(loop), Session(loop)
        start = loop.time() + TICK
        start -= start % TICK  # on a tick: both deadlines below round to the same one
        k1 = deadlines.arm(kept, start + 0.01)
        k2 = deadlines.arm(cancelled, start + 0.02)
        deadlines.cancel(cancelled, k2)
        while not kept.called_at:
            await asyncio.sleep(0.01)
        await asyncio.sleep(TICK)
        return k1 == k2, kept.called_at, cancelled.called_at

    same_key, kept, cancelled = asyncio.run(main())
    assert same_key
    assert len(kept) == 1
    assert cancelled == []
