"""The failed-login throttle that the SMTP and POP3 fronts share.

What is counted
---------------
Every password check counts on two keys; each key's count is forgotten
`auth_window` (15 min) after the last failure counted on it:

| key                        | slow-down of a failed attempt's answer        | refused without a check at |
|----------------------------|-----------------------------------------------|----------------------------|
| (client address, login)    | 2 s, doubling per failure, at most 15 s       | `auth_failures` (10)       |
| client address             | none                                          | `auth_failures_address` (100) |

The slow-down and the low ceiling sit on the pair, so that one user who
mistypes behind a hotel's or a school's NAT never slows down the others
behind the same address; the address keeps a ceiling ten times higher for a
client that sprays guesses over many logins (Stalwart bans by address and by
login). An IPv6 client is counted by its /64, which one subscriber gets whole.
A refused attempt is not counted: its window ends 15 minutes after the last
attempt that was checked.

Reserve, check, settle
----------------------
An attempt is counted *before* its password is checked, in one atomic step
of the store: if neither ceiling is reached, both counts go up by one and the
attempt gets a `Reservation`; otherwise it is refused without a check. Then:

- a wrong password keeps the count (its answer waits the pair's slow-down);
- the same wrong password as the pair's last one is refunded (Dovecot: a
  repeated password adds no penalty), so a mail client polling with an old
  saved password does not lock its user out;
- a right password is refunded, and the pair's earlier failures are
  forgotten, on the pair and on the address (they were the typos of someone
  who knows the password);
- a check that could not run (the user database is down) is refunded.

So N parallel attempts cost what N serial ones cost: at most `auth_failures`
passwords are ever checked for one login from one address per window, however
many sessions try at once. The step is one call on the store, which is why a
store for several processes or nodes (SQLite here; Redis with a Lua script,
as its INCR documentation advises) can give the same guarantee.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from postvakt import sqlitedb
from postvakt.directory import canonical
from postvakt.net import IPV6_PREFIX, client_key

if TYPE_CHECKING:
    from postvakt.policy.limits import LimitsConfig

# Bound on keys kept in memory; under a flood of addresses the stalest go first.
MAX_KEYS = 100_000
# A login longer than any address (RFC 5321 §4.5.3.1: 64 + 1 + 255) is cut
# here for the key: an attacker's 9 KB user names must not become 9 KB keys.
MAX_LOGIN_KEY = 320
# Bytes of the keyed digest kept of a pair's last wrong password.
FINGERPRINT_BYTES = 8
# The SQLite store deletes expired rows once per this many reservations.
SQLITE_PRUNE_EVERY = 256

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Outcome(enum.Enum):
    """How a reserved attempt ended (the store may turn FAILED into REPEATED)."""

    FAILED = "failed"
    REPEATED = "repeated"
    SUCCEEDED = "succeeded"
    UNCHECKED = "unchecked"


class Refusal(enum.Enum):
    """Why an attempt was refused without a check."""

    LOGIN = "login"  # this login from this address failed auth_failures times
    ADDRESS = "address"  # this address failed auth_failures_address times


@dataclass(frozen=True)
class Ceilings:
    per_login: int
    per_address: int
    window: float


@dataclass(frozen=True)
class Reservation:
    """One attempt's place in the counts.

    The counts are the key's failures including this attempt when it was
    granted, or the counts that refused it.
    """

    address: str
    login: str
    login_failures: int
    address_failures: int
    refused: Refusal | None = None

    @property
    def granted(self) -> bool:
        return self.refused is None


class LoginFailureStore(Protocol):
    """Where the counts live. Each method is one atomic step."""

    def reserve(self, address: str, login: str, ceilings: Ceilings, now: float) -> Reservation: ...

    def settle(
        self,
        reservation: Reservation,
        outcome: Outcome,
        fingerprint: bytes,
        ceilings: Ceilings,
        now: float,
    ) -> Outcome: ...

    def failures(self, address: str, login: str | None, ceilings: Ceilings, now: float) -> int: ...


def address_key(ip: str, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The client address as counted: IPv4 as is, IPv6 by its /64 (`[limits] ipv6_prefix`)."""
    return client_key(ip, ipv6_prefix)


def login_key(login: str) -> str:
    return canonical(login[: MAX_LOGIN_KEY * 2])[:MAX_LOGIN_KEY]


# ---------------------------------------------------------------- memory


@dataclass
class _Count:
    count: int
    last: float
    fingerprint: bytes = b""


class MemoryLoginFailureStore:
    """Counts in this process's memory (one event loop; gone after a restart)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._pairs: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._addresses: OrderedDict[str, _Count] = OrderedDict()

    @staticmethod
    def _get(table: OrderedDict[K, _Count], key: K, window: float, now: float) -> _Count | None:
        c = table.get(key)
        if c is not None and now - c.last > window:
            del table[key]
            return None
        return c

    def _bump(self, table: OrderedDict[K, _Count], key: K, now: float) -> int:
        c = table.get(key)
        if c is None:
            c = table[key] = _Count(0, now)
        c.count += 1
        c.last = now
        table.move_to_end(key)
        while len(table) > self.max_keys:
            table.popitem(last=False)
        return c.count

    def reserve(self, address: str, login: str, ceilings: Ceilings, now: float) -> Reservation:
        pair = self._get(self._pairs, (address, login), ceilings.window, now)
        addr = self._get(self._addresses, address, ceilings.window, now)
        n_pair = pair.count if pair else 0
        n_addr = addr.count if addr else 0
        refused = _refusal(n_pair, n_addr, ceilings)
        if refused is not None:
            return Reservation(address, login, n_pair, n_addr, refused)
        n_pair = self._bump(self._pairs, (address, login), now)
        n_addr = self._bump(self._addresses, address, now)
        return Reservation(address, login, n_pair, n_addr)

    def settle(
        self,
        reservation: Reservation,
        outcome: Outcome,
        fingerprint: bytes,
        ceilings: Ceilings,
        now: float,
    ) -> Outcome:
        if not reservation.granted:
            return outcome
        key = (reservation.address, reservation.login)
        pair = self._get(self._pairs, key, ceilings.window, now)
        addr = self._get(self._addresses, reservation.address, ceilings.window, now)
        if outcome is Outcome.FAILED:
            if pair is None:
                return outcome
            if fingerprint and pair.fingerprint == fingerprint:
                outcome = Outcome.REPEATED
            else:
                pair.fingerprint = fingerprint
                return outcome
        refund = 1
        if outcome is Outcome.SUCCEEDED:
            refund = pair.count if pair else 1
            self._pairs.pop(key, None)
        elif pair is not None:
            pair.count = max(0, pair.count - 1)
        if addr is not None:
            addr.count = max(0, addr.count - refund)
        return outcome

    def failures(self, address: str, login: str | None, ceilings: Ceilings, now: float) -> int:
        if login is None:
            c = self._get(self._addresses, address, ceilings.window, now)
        else:
            c = self._get(self._pairs, (address, login), ceilings.window, now)
        return c.count if c else 0


def _refusal(n_pair: int, n_addr: int, ceilings: Ceilings) -> Refusal | None:
    if n_pair >= ceilings.per_login:
        return Refusal.LOGIN
    if n_addr >= ceilings.per_address:
        return Refusal.ADDRESS
    return None


# ---------------------------------------------------------------- SQLite


class SqliteLoginFailureStore:
    """Counts in data_dir/logins.sqlite3: shared by the processes of one machine.

    Each step is one `BEGIN IMMEDIATE` transaction, so two processes that
    reserve at once are put in a row by SQLite's write lock.
    """

    # Whether calls may wait on a lock held by another process (run them off the loop).
    blocking = True

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(path)
        # One row per key: kind 'pair' with the login, kind 'address' with login ''.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS login_failures (kind TEXT NOT NULL, address TEXT NOT NULL,"
            " login TEXT NOT NULL, count INTEGER NOT NULL, last REAL NOT NULL,"
            " fingerprint BLOB NOT NULL DEFAULT x'', PRIMARY KEY (kind, address, login))"
        )
        self._reservations = 0

    def _count(self, key: tuple[str, str, str], window: float, now: float) -> tuple[int, bytes]:
        row = self._db.execute(
            "SELECT count, fingerprint FROM login_failures"
            " WHERE kind = ? AND address = ? AND login = ? AND last >= ?",
            (*key, now - window),
        ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, b"")

    def _transaction(self, step: Callable[[], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = step()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    def reserve(self, address: str, login: str, ceilings: Ceilings, now: float) -> Reservation:
        pair, addr = _pair_row(address, login), _address_row(address)

        def step() -> Reservation:
            n_pair, _ = self._count(pair, ceilings.window, now)
            n_addr, _ = self._count(addr, ceilings.window, now)
            refused = _refusal(n_pair, n_addr, ceilings)
            if refused is not None:
                return Reservation(address, login, n_pair, n_addr, refused)
            for key, n in ((pair, n_pair), (addr, n_addr)):
                # An expired row starts again from one, and forgets its fingerprint.
                self._db.execute(
                    "INSERT INTO login_failures(kind, address, login, count, last)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, address, login) DO UPDATE SET"
                    " count = excluded.count, last = excluded.last,"
                    " fingerprint = CASE WHEN excluded.count = 1 THEN x'' ELSE fingerprint END",
                    (*key, n + 1, now),
                )
            self._reservations += 1
            if self._reservations % SQLITE_PRUNE_EVERY == 0:
                self._db.execute(
                    "DELETE FROM login_failures WHERE last < ?", (now - ceilings.window,)
                )
            return Reservation(address, login, n_pair + 1, n_addr + 1)

        return self._transaction(step)

    def settle(
        self,
        reservation: Reservation,
        outcome: Outcome,
        fingerprint: bytes,
        ceilings: Ceilings,
        now: float,
    ) -> Outcome:
        if not reservation.granted:
            return outcome
        pair = _pair_row(reservation.address, reservation.login)
        addr = _address_row(reservation.address)

        def step() -> Outcome:
            result = outcome
            n_pair, last_fp = self._count(pair, ceilings.window, now)
            if outcome is Outcome.FAILED:
                if n_pair == 0:
                    return outcome
                if not fingerprint or last_fp != fingerprint:
                    self._db.execute(
                        "UPDATE login_failures SET fingerprint = ?"
                        " WHERE kind = ? AND address = ? AND login = ?",
                        (fingerprint, *pair),
                    )
                    return outcome
                result = Outcome.REPEATED
            refund = 1
            if outcome is Outcome.SUCCEEDED:
                refund = max(1, n_pair)
                self._db.execute(
                    "DELETE FROM login_failures WHERE kind = ? AND address = ? AND login = ?", pair
                )
            else:
                self._db.execute(
                    "UPDATE login_failures SET count = MAX(0, count - 1)"
                    " WHERE kind = ? AND address = ? AND login = ?",
                    pair,
                )
            self._db.execute(
                "UPDATE login_failures SET count = MAX(0, count - ?)"
                " WHERE kind = ? AND address = ? AND login = ?",
                (refund, *addr),
            )
            return result

        return self._transaction(step)

    def failures(self, address: str, login: str | None, ceilings: Ceilings, now: float) -> int:
        key = _address_row(address) if login is None else _pair_row(address, login)
        with self._lock:
            return self._count(key, ceilings.window, now)[0]


def _pair_row(address: str, login: str) -> tuple[str, str, str]:
    return ("pair", address, login)


def _address_row(address: str) -> tuple[str, str, str]:
    return ("address", address, "")


# ---------------------------------------------------------------- the fronts' view


class LoginThrottle:
    """What the SMTP and POP3 fronts call: reserve, then settle; the thresholds.

    `now` is wall-clock seconds (time.time()) everywhere, as for grants, so
    that processes sharing a store agree on it.
    """

    def __init__(
        self,
        store: LoginFailureStore,
        *,
        delay_start: float,
        delay_max: float,
        per_login: int,
        per_address: int,
        window: float,
    ) -> None:
        self.store = store
        self.delay_start = delay_start
        self.delay_max = delay_max
        self.ceilings = Ceilings(per_login, per_address, window)
        self.ipv6_prefix = IPV6_PREFIX
        # Fingerprints of wrong passwords are keyed per process and never
        # written in clear: the store only learns "same as last time or not".
        self._key = secrets.token_bytes(32)

    @classmethod
    def for_limits(cls, store: LoginFailureStore, limits: LimitsConfig) -> LoginThrottle:
        t = cls(store, delay_start=0, delay_max=0, per_login=1, per_address=1, window=0)
        t.configure(limits)
        return t

    def configure(self, limits: LimitsConfig) -> None:
        """Take the thresholds of a (re)loaded config; the counts stay."""
        self.delay_start, self.delay_max = limits.auth_delay, limits.auth_delay_max
        self.ceilings = replace(
            self.ceilings,
            per_login=limits.auth_failures,
            per_address=limits.auth_failures_address,
            window=limits.auth_window,
        )
        self.ipv6_prefix = limits.ipv6_prefix

    async def _call(self, step: Callable[[], T]) -> T:
        if getattr(self.store, "blocking", False):
            return await asyncio.get_running_loop().run_in_executor(None, step)
        return step()

    async def reserve(self, ip: str, login: str, now: float) -> Reservation:
        address, key = address_key(ip, self.ipv6_prefix), login_key(login)
        return await self._call(lambda: self.store.reserve(address, key, self.ceilings, now))

    async def settle(
        self, reservation: Reservation, outcome: Outcome, password: str, now: float
    ) -> Outcome:
        fingerprint = b""
        if outcome is Outcome.FAILED:
            fingerprint = hmac.new(
                self._key,
                reservation.login.encode("utf-8", "surrogateescape")
                + b"\0"
                + password.encode("utf-8", "surrogateescape"),
                hashlib.sha256,
            ).digest()[:FINGERPRINT_BYTES]
        return await self._call(
            lambda: self.store.settle(reservation, outcome, fingerprint, self.ceilings, now)
        )

    def delay(self, reservation: Reservation) -> float:
        """How long a failed attempt's answer waits, counted from its start."""
        n = reservation.login_failures
        if n <= 0:
            return 0.0
        return float(min(self.delay_max, self.delay_start * 2 ** min(n - 1, 32)))

    def failures(self, ip: str, now: float, login: str | None = None) -> int:
        """The address's failures, or the (address, login) pair's: for tests and views."""
        return self.store.failures(
            address_key(ip, self.ipv6_prefix),
            None if login is None else login_key(login),
            self.ceilings,
            now,
        )
