"""The failed-login throttle: counts per (address, login) and per address,
reserved before the password check, settled after it; on both stores."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postvakt.grants.logins import (
    Ceilings,
    LoginFailureStore,
    LoginThrottle,
    MemoryLoginFailureStore,
    Outcome,
    Refusal,
    Reservation,
    SqliteLoginFailureStore,
    address_key,
    login_key,
)
from postvakt.policy.limits import LimitsConfig

NAT = "192.0.2.7"
ALICE = "alice@pv.test"
BOB = "bob@pv.test"


@pytest.fixture(params=["memory", "sqlite"])
def make_throttle(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., LoginThrottle]:
    def make(per_login: int = 3, per_address: int = 5, window: float = 600) -> LoginThrottle:
        store: LoginFailureStore = (
            MemoryLoginFailureStore()
            if request.param == "memory"
            else SqliteLoginFailureStore(tmp_path / "logins.sqlite3")
        )
        return LoginThrottle(
            store,
            delay_start=2,
            delay_max=15,
            per_login=per_login,
            per_address=per_address,
            window=window,
        )

    return make


async def fail(t: LoginThrottle, ip: str, login: str, password: str, now: float) -> Reservation:
    r = await t.reserve(ip, login, now)
    if r.granted:
        await t.settle(r, Outcome.FAILED, password, now)
    return r


def test_the_slow_down_grows_per_pair_and_refuses_at_the_ceiling(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    async def go() -> None:
        t = make_throttle(per_login=5, per_address=50)
        rs = [await fail(t, NAT, ALICE, f"wrong{i}", float(i)) for i in range(7)]
        assert [t.delay(r) for r in rs[:5]] == [2, 4, 8, 15, 15]
        assert [r.refused for r in rs] == [None] * 5 + [Refusal.LOGIN] * 2
        assert t.failures(NAT, 10.0, ALICE) == 5  # refused attempts are not counted
        # Behind the same NAT, another user is neither slowed down nor refused.
        other = await t.reserve(NAT, BOB, 10.0)
        assert other.granted and t.delay(other) == 2  # the answer to a first failure
        await t.settle(other, Outcome.SUCCEEDED, "", 10.0)
        assert t.failures(NAT, 10.0, BOB) == 0
        # The same login from elsewhere is a pair of its own.
        assert (await t.reserve("198.51.100.1", ALICE, 10.0)).granted
        # Forgotten a window after the last counted failure.
        assert (await t.reserve(NAT, ALICE, 4.0 + 601)).granted

    asyncio.run(go())


def test_an_address_spraying_many_logins_meets_the_address_ceiling(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    async def go() -> None:
        t = make_throttle(per_login=3, per_address=5)
        rs = [await fail(t, NAT, f"user{i}@pv.test", "guess", 1.0) for i in range(7)]
        assert [r.refused for r in rs] == [None] * 5 + [Refusal.ADDRESS] * 2
        assert all(t.delay(r) == 2 for r in rs[:5])  # one failure each: no pair slowed down
        refused = await t.reserve(NAT, ALICE, 2.0)  # even a login that never failed
        assert refused.refused is Refusal.ADDRESS
        assert (await t.reserve("192.0.2.8", ALICE, 2.0)).granted

    asyncio.run(go())


def test_reservations_before_any_check_are_capped(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    """40 attempts that all reserve before any password check finishes (parallel
    sessions): exactly the ceiling gets a check, as 40 serial attempts would."""

    async def go() -> None:
        t = make_throttle(per_login=10, per_address=100)
        rs = await asyncio.gather(*(t.reserve(NAT, ALICE, 1.0) for _ in range(40)))
        assert sum(r.granted for r in rs) == 10
        assert sorted(r.login_failures for r in rs if r.granted) == list(range(1, 11))
        assert {r.refused for r in rs if not r.granted} == {Refusal.LOGIN}

    asyncio.run(go())


def test_a_right_password_refunds_and_forgets_the_pairs_typos(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    async def go() -> None:
        t = make_throttle(per_login=3, per_address=5)
        for i in range(2):
            await fail(t, NAT, ALICE, f"typo{i}", 1.0)
        await fail(t, NAT, BOB, "guess", 1.0)
        assert t.failures(NAT, 1.0) == 3
        r = await t.reserve(NAT, ALICE, 2.0)
        assert r.granted and r.login_failures == 3
        assert await t.settle(r, Outcome.SUCCEEDED, "", 2.0) is Outcome.SUCCEEDED
        assert t.failures(NAT, 2.0, ALICE) == 0
        assert t.failures(NAT, 2.0) == 1  # bob's guess stays on the address
        nxt = await t.reserve(NAT, ALICE, 3.0)
        assert t.delay(nxt) == 2  # a fresh start for alice

    asyncio.run(go())


def test_a_check_that_could_not_run_is_refunded(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    async def go() -> None:
        t = make_throttle()
        await fail(t, NAT, ALICE, "typo", 1.0)
        r = await t.reserve(NAT, ALICE, 2.0)
        await t.settle(r, Outcome.UNCHECKED, "", 2.0)
        assert t.failures(NAT, 2.0, ALICE) == 1
        assert t.failures(NAT, 2.0) == 1

    asyncio.run(go())


def test_the_same_wrong_password_again_adds_nothing(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    """Dovecot's rule: a phone polling with an old saved password must not lock
    its user out; a new guess still counts."""

    async def go() -> None:
        t = make_throttle(per_login=3, per_address=5)
        outcomes = []
        for i in range(20):
            r = await t.reserve(NAT, ALICE, float(i))
            assert r.granted, i
            outcomes.append(await t.settle(r, Outcome.FAILED, "old-password", float(i)))
        assert outcomes == [Outcome.FAILED] + [Outcome.REPEATED] * 19
        assert t.failures(NAT, 20.0, ALICE) == 1 and t.failures(NAT, 20.0) == 1
        r = await t.reserve(NAT, ALICE, 21.0)
        assert await t.settle(r, Outcome.FAILED, "new-guess", 21.0) is Outcome.FAILED
        assert t.failures(NAT, 21.0, ALICE) == 2
        # The fingerprint is the pair's: the same password for another login counts.
        r = await t.reserve(NAT, BOB, 22.0)
        assert await t.settle(r, Outcome.FAILED, "old-password", 22.0) is Outcome.FAILED

    asyncio.run(go())


def test_reload_changes_the_thresholds_and_keeps_the_counts(
    make_throttle: Callable[..., LoginThrottle],
) -> None:
    async def go() -> None:
        t = make_throttle(per_login=10, per_address=100)
        for i in range(3):
            await fail(t, NAT, ALICE, f"w{i}", 1.0)
        t.configure(LimitsConfig(auth_failures=3, auth_failures_address=50))
        assert t.ceilings == Ceilings(3, 50, LimitsConfig().auth_window)
        assert (await t.reserve(NAT, ALICE, 2.0)).refused is Refusal.LOGIN

    asyncio.run(go())


def test_keys_ipv6_by_64_and_logins_canonical() -> None:
    assert address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert login_key("Alice@PV.Test") == login_key("alice@pv.test")
    assert len(login_key("a" * 9000)) == 320


# Each process opens the store, waits for its go on stdin, reserves, prints how many it got.
CHILD = """
import asyncio, sys
from pathlib import Path
from postvakt.grants.logins import LoginThrottle, SqliteLoginFailureStore

t = LoginThrottle(SqliteLoginFailureStore(Path(sys.argv[1])), delay_start=0, delay_max=0,
                  per_login=10, per_address=100, window=600)
sys.stdin.readline()

async def go():
    return sum([(await t.reserve("192.0.2.7", "alice@pv.test", 1.0)).granted for _ in range(10)])

print(asyncio.run(go()))
"""


def test_sqlite_reservations_are_atomic_across_processes(tmp_path: Path) -> None:
    """Four processes reserving at once on one SQLite file: ten checks in all."""
    path = tmp_path / "logins.sqlite3"
    SqliteLoginFailureStore(path)  # create the table before the race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    granted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(granted) == 10, granted
