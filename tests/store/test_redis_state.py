"""The Redis state store on a private redis-server: the same answers as the
memory store, atomic across "nodes" (two RedisState objects, two pools), and
the failure behaviour of docs/deployment.md when the server goes away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from engines import PrivateRedis

from postvakt.grants.logins import Ceilings, MemoryLoginFailureStore, Outcome, Refusal
from postvakt.policy.limits import Usage
from postvakt.store.redis import PREFIX, RedisState

NOW = 1795782600.0  # 2026-11-27 12:30:00 UTC
CEILINGS = Ceilings(per_login=5, per_address=8, window=900)


@pytest.fixture
def nodes(private_redis: PrivateRedis) -> Iterator[tuple[RedisState, RedisState]]:
    a = RedisState(private_redis.url, node="node-a", timeout=2)
    b = RedisState(private_redis.url, node="node-b", timeout=2)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_grant_from_one_node_is_seen_by_the_other_and_renewed_by_each_login(
    nodes: tuple[RedisState, RedisState], private_redis: PrivateRedis
) -> None:
    a, b = nodes
    now = time.time()
    assert a.grants.grant_now("192.0.2.7", "alice@pv.test", now + 60, "pop3")
    g = b.grants.lookup("192.0.2.7", now)
    assert g is not None
    assert (g.login, g.protocol, g.node) == ("alice@pv.test", "pop3", "node-a")
    assert b.grants.lookup("192.0.2.8", now) is None
    raw = redis.Redis.from_url(private_redis.url)
    ttl = raw.pttl(PREFIX + "grant:192.0.2.7")
    assert 0 < ttl <= 60_000
    # A second login (here over IMAP, on the other node) renews the grant and names itself.
    b.grants.grant("192.0.2.7", "alice@pv.test", now + 600, "imap")
    b.grants.flush()
    assert raw.pttl(PREFIX + "grant:192.0.2.7") > 60_000
    g = a.grants.lookup("192.0.2.7", now)
    assert g is not None and (g.protocol, g.node) == ("imap", "node-b")
    assert [x.ip for x in a.grants.all_or_raise(now)] == ["192.0.2.7"]
    # Past its end a grant is gone, whatever Redis's clock says.
    assert a.grants.lookup("192.0.2.7", now + 601) is None


def test_counters_add_up_over_nodes_and_expire_with_their_window(
    nodes: tuple[RedisState, RedisState], private_redis: PrivateRedis
) -> None:
    a, b = nodes
    threads = [
        threading.Thread(
            target=lambda s=s: [s.counters.add("user:a@pv.test", 1, 2, NOW) for _ in range(25)]
        )
        for s in (a, b, a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.counters.usage("user:a@pv.test", NOW) == Usage(100, 100, 200, 200)
    assert b.counters.usage("user:a@pv.test", NOW + 3600) == Usage(0, 100, 0, 200)
    raw = redis.Redis.from_url(private_redis.url)
    keys = list(raw.scan_iter(match=PREFIX + "cnt:*"))
    assert len(keys) == 4
    assert all(raw.pttl(k) > 0 for k in keys)  # every count expires: no INCR without EXPIRE
    assert [u.subject for u in b.counters.all_or_raise(NOW)] == ["user:a@pv.test"]


def test_parallel_attempts_over_two_nodes_get_no_more_checks_than_the_ceiling(
    nodes: tuple[RedisState, RedisState],
) -> None:
    a, b = nodes
    granted: list[bool] = []
    lock = threading.Lock()

    def attempt(state: RedisState) -> None:
        r = state.logins.reserve("192.0.2.9", "bob@pv.test", CEILINGS, NOW)
        with lock:
            granted.append(r.granted)

    threads = [threading.Thread(target=attempt, args=((a, b)[i % 2],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == CEILINGS.per_login
    refused = b.logins.reserve("192.0.2.9", "bob@pv.test", CEILINGS, NOW)
    assert refused.refused is Refusal.LOGIN
    assert a.logins.failures("192.0.2.9", None, CEILINGS, NOW) == CEILINGS.per_login


# (login, outcome, password fingerprint) steps, and what the memory store answers.
SCRIPT = [
    ("u1", Outcome.FAILED, b"aaaa"),
    ("u1", Outcome.FAILED, b"aaaa"),  # the same wrong password: refunded
    ("u1", Outcome.FAILED, b"bbbb"),
    ("u2", Outcome.FAILED, b"cccc"),
    ("u2", Outcome.UNCHECKED, b""),
    ("u1", Outcome.SUCCEEDED, b""),  # forgets u1's failures, on the pair and the address
    ("u3", Outcome.FAILED, b"dddd"),
    ("u3", Outcome.FAILED, b"eeee"),
    ("u3", Outcome.FAILED, b"ffff"),
    ("u3", Outcome.FAILED, b"gggg"),
    ("u3", Outcome.FAILED, b"hhhh"),
    ("u3", Outcome.FAILED, b"iiii"),  # refused: u3's ceiling
    ("u4", Outcome.FAILED, b"jjjj"),
    ("u5", Outcome.FAILED, b"kkkk"),  # refused: the address's ceiling
]


def test_the_redis_steps_answer_as_the_memory_store(nodes: tuple[RedisState, RedisState]) -> None:
    a, b = nodes
    memory = MemoryLoginFailureStore()
    for i, (login, outcome, fp) in enumerate(SCRIPT):
        remote = (a, b)[i % 2].logins
        got = []
        for store in (memory, remote):
            r = store.reserve("192.0.2.10", login, CEILINGS, NOW + i)
            settled = store.settle(r, outcome, fp, CEILINGS, NOW + i) if r.granted else None
            got.append(
                (
                    r.refused,
                    r.login_failures,
                    r.address_failures,
                    settled,
                    store.failures("192.0.2.10", login, CEILINGS, NOW + i),
                    store.failures("192.0.2.10", None, CEILINGS, NOW + i),
                )
            )
        assert got[0] == got[1], (i, login, outcome)


def test_one_notice_per_window_over_all_nodes(nodes: tuple[RedisState, RedisState]) -> None:
    a, b = nodes
    now = time.time()
    assert a.notices.claim("user:a@pv.test|user.messages_hour", now + 60, now)
    assert not b.notices.claim("user:a@pv.test|user.messages_hour", now + 60, now)
    assert b.notices.claim("user:a@pv.test|user.messages_day", now + 60, now)


def test_a_mailbox_lock_holds_across_nodes_and_outlives_a_dead_node_only_briefly(
    private_redis: PrivateRedis,
) -> None:
    a = RedisState(private_redis.url, node="node-a", timeout=2)
    b = RedisState(private_redis.url, node="node-b", timeout=2)
    try:
        a.locks.ttl = b.locks.ttl = 1.0
        assert a.locks.acquire("pop3:alice@pv.test", "a-1")
        assert not b.locks.acquire("pop3:alice@pv.test", "b-1")
        # Held longer than its TTL: renewed while the holder lives.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not b.locks.acquire("pop3:alice@pv.test", "b-1")
            time.sleep(0.2)
        a.locks.release("pop3:alice@pv.test", "a-1")
        deadline = time.monotonic() + 20
        while not b.locks.acquire("pop3:alice@pv.test", "b-1"):
            assert time.monotonic() < deadline, "a released lock stayed taken"
            time.sleep(0.05)
        # Node b "dies" (no more renewals): its lock ends by itself.
        b.locks.close()
        deadline = time.monotonic() + 20
        while not a.locks.acquire("pop3:alice@pv.test", "a-2"):
            assert time.monotonic() < deadline, "a dead node's lock never expired"
            time.sleep(0.1)
    finally:
        a.close()
        b.close()


def test_redis_down_fails_as_documented_logs_once_and_recovers(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postvakt.store")
    s = RedisState(private_redis.url, node="node-a", timeout=1)
    other = RedisState(private_redis.url, node="node-b", timeout=1)
    try:
        now = time.time()
        assert s.grants.grant_now("192.0.2.7", "alice@pv.test", now + 600)
        s.counters.add("user:a@pv.test", 1, 1, now)
        assert s.counters.usage("user:a@pv.test", now) == Usage(1, 1, 1, 1)
        assert s.locks.acquire("pop3:alice@pv.test", "a-1")

        private_redis.stop()
        # POP-before-SMTP fails closed; nothing raises.
        assert s.grants.lookup("192.0.2.7", now) is None
        # Limits keep counting here, on top of the last count read from Redis.
        s.counters.add("user:a@pv.test", 1, 3, now)
        assert s.counters.usage("user:a@pv.test", now) == Usage(2, 2, 4, 4)
        # Logins are still throttled (in this process).
        for _ in range(CEILINGS.per_login):
            assert s.logins.reserve("192.0.2.9", "bob@pv.test", CEILINGS, now).granted
        assert not s.logins.reserve("192.0.2.9", "bob@pv.test", CEILINGS, now).granted
        # A maildrop is never served twice: no lock without Redis.
        assert not s.locks.acquire("pop3:alice@pv.test", "a-2")
        assert s.notices.claim("k", now + 60, now)
        assert not s.notices.claim("k", now + 60, now)
        time.sleep(1.1)  # past the retry interval: the next calls try Redis again
        assert s.grants.lookup("192.0.2.7", now) is None
        outage = [r for r in caplog.records if "unreachable:" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in outage]

        private_redis.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 20
        while s.grants.lookup("192.0.2.7", now) is None:
            assert s.grants.grant_now("192.0.2.7", "alice@pv.test", now + 600) or (
                time.monotonic() < deadline
            )
            time.sleep(0.2)
        back = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(back) == 1
        # The count made during the outage reached Redis when it came back.
        assert other.counters.usage("user:a@pv.test", now) == Usage(1, 1, 3, 3)
        assert s.locks.acquire("pop3:alice@pv.test", "a-3")  # Redis came back empty
    finally:
        s.close()
        other.close()
