"""The accept path's bookkeeping (postvakt.server.accept.Connections): what is
counted from accept, what is refused, and that an exhaustion or cap episode
logs one line each way however long it lasts."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource

import pytest

from postvakt.server.accept import (
    DESCRIPTOR_RESERVE,
    EPISODE_QUIET,
    Connections,
    Refused,
    Slot,
    connection_limit,
    raise_descriptor_limit,
)


def test_per_client_limit_counts_each_family_apart() -> None:
    c = Connections(100)
    smtp = [c.admit("smtp", "192.0.2.1", 2) for _ in range(2)]
    assert all(isinstance(s, Slot) for s in smtp)
    assert c.admit("smtp", "192.0.2.1", 2) is Refused.CLIENT
    assert isinstance(c.admit("pop3", "192.0.2.1", 2), Slot)
    assert isinstance(c.admit("smtp", "192.0.2.2", 2), Slot)
    assert isinstance(c.admit("smtp", "192.0.2.1", 0), Slot), "0: no per-client limit"
    assert c.total == 5


def test_ipv6_clients_count_by_their_network() -> None:
    """A /64 is one subscriber (RFC 6177): fresh addresses inside it are no fresh budget."""
    c = Connections(100)
    first = [c.admit("smtp", f"2001:db8:1:2::{i:x}", 2) for i in (1, 2)]
    assert all(isinstance(s, Slot) for s in first)
    assert c.admit("smtp", "2001:db8:1:2:ffff::9", 2) is Refused.CLIENT
    assert isinstance(c.admit("smtp", "2001:db8:1:3::1", 2), Slot), "the next /64 is another"
    assert c.count("smtp", "2001:db8:1:2::77") == 2
    # An IPv4-mapped client is its IPv4 address, IPv4 addresses count one by one.
    assert isinstance(c.admit("smtp", "::ffff:192.0.2.1", 1), Slot)
    assert c.admit("smtp", "192.0.2.1", 1) is Refused.CLIENT
    assert isinstance(c.admit("smtp", "192.0.2.2", 1), Slot)
    first[0].release()  # type: ignore[union-attr]
    assert isinstance(c.admit("smtp", "2001:db8:1:2::3", 2), Slot)


def test_ipv6_prefix_128_counts_each_address_and_a_change_keeps_held_slots() -> None:
    c = Connections(100, ipv6_prefix=128)
    a = c.admit("smtp", "2001:db8::1", 1)
    assert isinstance(a, Slot)
    b = c.admit("smtp", "2001:db8::2", 1)
    assert isinstance(b, Slot)
    c.ipv6_prefix = 64  # a reload: slots held keep the key they were counted under
    a.release()
    b.release()
    assert c.total == 0 and c.count("smtp", "2001:db8::1") == 0
    assert isinstance(c.admit("smtp", "2001:db8::3", 1), Slot)
    assert c.admit("smtp", "2001:db8::4", 1) is Refused.CLIENT


def test_a_proxy_header_moves_the_count_to_the_client_it_names() -> None:
    c = Connections(100)
    s = c.admit("smtp", "127.0.0.10", 0)
    assert isinstance(s, Slot)
    assert c.rekey(s, "2001:db8:5:6::1", 1) is None
    assert c.count("smtp", "127.0.0.10") == 0
    other = c.admit("smtp", "127.0.0.10", 0)
    assert isinstance(other, Slot)
    assert c.rekey(other, "2001:db8:5:6::2", 1) is Refused.CLIENT, "same /64, limit 1"
    s.release()
    assert c.count("smtp", "2001:db8:5:6::1") == 0


def test_release_is_once_however_often_it_is_called() -> None:
    c = Connections(100)
    s = c.admit("smtp", "192.0.2.1", 1)
    assert isinstance(s, Slot)
    s.release()
    s.release()
    assert c.total == 0 and c.count("smtp", "192.0.2.1") == 0
    assert isinstance(c.admit("smtp", "192.0.2.1", 1), Slot)
    assert c.total == 1


def test_the_process_cap_comes_first_and_logs_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "postvakt.accept")
    c = Connections(100)
    slots = [c.admit("smtp", f"10.0.0.{i}", 1) for i in range(100)]
    for _ in range(50):
        assert c.admit("pop3", "198.51.100.1", 1) is Refused.PROCESS
        assert isinstance(slots[0], Slot)
        slots[0].release()  # one closes, one more comes and takes its place
        slots[0] = c.admit("smtp", "10.0.0.0", 1)
    reached = [r for r in caplog.records if "cap reached" in r.message]
    below = [r for r in caplog.records if "below the connection cap" in r.message]
    assert len(reached) == 1 and not below
    for s in slots[:10]:  # the episode ends with a tenth of room, not at the first close
        assert isinstance(s, Slot)
        s.release()
    assert [r.message for r in caplog.records if "below" in r.message] == [
        "below the connection cap again: 50 connections were refused"
    ]


def test_out_of_descriptors_is_one_line_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "postvakt.accept")
    now = [100.0]

    async def episode() -> None:
        c = Connections(100, clock=lambda: now[0])
        emfile = OSError(errno.EMFILE, "Too many open files")
        # At the limit with clients coming and going: one accept through, the next fails.
        for _ in range(1000):
            c.out_of_descriptors(emfile)
            assert c.paused
            c._resume()  # a connection of ours closed
            c.accepted()
            now[0] += 0.001
        assert c.in_episode and not c.paused
        now[0] += EPISODE_QUIET
        c.accepted()
        assert not c.in_episode

    asyncio.run(episode())
    lines = [r.message for r in caplog.records]
    assert len(lines) == 2, lines
    assert "Too many open files (EMFILE)" in lines[0]
    assert lines[1].startswith("accepting again: 1000 accepts failed")


def test_the_default_cap_leaves_room_below_the_descriptor_limit() -> None:
    assert connection_limit(0, 1024) == 1024 - 128
    assert connection_limit(0, 256) == 256 - DESCRIPTOR_RESERVE
    assert connection_limit(500, 256) == 500, "an explicit cap is kept (with a warning)"


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    lowered, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = raise_descriptor_limit()
        assert got > lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
