"""The front's wake-ups to the queue manager: once per event-loop turn, never lost."""

from __future__ import annotations

import asyncio
import os

from postvakt.server.manager_process import Coalesced
from postvakt.server.workers import WAKE, Notifier


def test_many_wake_ups_in_one_turn_are_one_write_at_the_end_of_it() -> None:
    sent: list[int] = []

    async def main() -> None:
        wake = Coalesced(lambda: sent.append(1))
        for _ in range(50):
            wake()
        assert sent == []  # not before the turn ends
        await asyncio.sleep(0)
        assert sent == [1]
        wake()  # a later turn: sent again
        await asyncio.sleep(0)
        assert sent == [1, 1]

    asyncio.run(main())


def test_outside_an_event_loop_a_wake_up_is_sent_at_once() -> None:
    sent: list[int] = []
    wake = Coalesced(lambda: sent.append(1))
    wake()
    wake()
    assert sent == [1, 1]


def test_a_workers_wake_ups_reach_its_parent_as_one_byte_per_turn() -> None:
    r, w = os.pipe()
    try:
        notifier = Notifier(w)

        async def main() -> None:
            for _ in range(20):
                notifier.wake()
            await asyncio.sleep(0)

        asyncio.run(main())
        os.set_blocking(r, False)
        assert os.read(r, 100) == WAKE
    finally:
        os.close(r)
        os.close(w)
