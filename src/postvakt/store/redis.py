"""The several-node state store: Redis (`[store] state = "redis://HOST:PORT/DB"`).

Keys (all under PREFIX; times are wall-clock, as everywhere in the stores):

| key                                   | type   | expiry                                |
|---------------------------------------|--------|---------------------------------------|
| grant:<ip>                            | hash   | the grant's end, renewed by each login |
| cnt:<metric>:<window>:<start>:<subject> | string | the window's end                    |
| lf:p:<address>|<login>                | hash   | auth_window after the last failure    |
| lf:a:<address>                        | hash   | auth_window after the last failure    |
| notice:<subject>|<rule>               | string | the window's end                      |
| lock:<name>                           | string | LOCK_TTL, renewed while held          |

Every step that decides is one Lua script (Redis runs a script whole, with
nothing in between), so that a count and its expiry, or a check and its
count, can never come apart, as the INCR documentation's rate-limiter
pattern advises.

The client is redis-py's blocking one, with a connection pool, a timeout on
every connect and reply, and no retries of its own: a caller on the event
loop runs these methods in a thread (`blocking = True`), or they hand the
write to a thread themselves (`RedisGrantStore.grant`).

When Redis cannot be reached (`Health`), each store does what
docs/deployment.md's failure table says, logs one line when the outage
starts and one when it ends, and tries Redis again after RETRY_INTERVAL.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postvakt.grants.counters import (
    MESSAGES,
    RECIPIENTS,
    WINDOWS,
    MemoryCounterStore,
    SubjectUsage,
)
from postvakt.grants.logins import (
    Ceilings,
    MemoryLoginFailureStore,
    Outcome,
    Refusal,
    Reservation,
)
from postvakt.policy import Grant, GrantProtocol, grant_protocol
from postvakt.policy.limits import Usage, window_end, window_start
from postvakt.store.local import MemoryNoticeStore, StateUnavailable

log = logging.getLogger("postvakt.store")

PREFIX = "postvakt:"
# After a failed call, calls fail at once (no wait) for this long before one tries again.
RETRY_INTERVAL = 1.0
# Connections one process keeps to Redis (a front has few threads waiting at once).
MAX_CONNECTIONS = 32
# A POP3 mailbox lock outlives a node that died by at most this long...
LOCK_TTL = 60.0
# ...and a live session renews it this often (three chances before it ends).
LOCK_RENEW = LOCK_TTL / 3

T = TypeVar("T")

_RESERVE = """
local np = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
local na = tonumber(redis.call('HGET', KEYS[2], 'c') or '0')
if np >= tonumber(ARGV[1]) then return {0, np, na, 1} end
if na >= tonumber(ARGV[2]) then return {0, np, na, 2} end
np = redis.call('HINCRBY', KEYS[1], 'c', 1)
na = redis.call('HINCRBY', KEYS[2], 'c', 1)
if np == 1 then redis.call('HDEL', KEYS[1], 'fp') end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, np, na, 0}
"""

_SETTLE = """
local np = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
local out = ARGV[1]
if out == 'failed' then
  if np == 0 then return out end
  local last = redis.call('HGET', KEYS[1], 'fp')
  if ARGV[2] == '' or last ~= ARGV[2] then
    redis.call('HSET', KEYS[1], 'fp', ARGV[2])
    return out
  end
  out = 'repeated'
end
local refund = 1
if ARGV[1] == 'succeeded' then
  refund = math.max(1, np)
  redis.call('DEL', KEYS[1])
elseif np > 0 then
  redis.call('HINCRBY', KEYS[1], 'c', -1)
end
local na = tonumber(redis.call('HGET', KEYS[2], 'c') or '0')
if na > 0 then redis.call('HSET', KEYS[2], 'c', math.max(0, na - refund)) end
return out
"""

_COUNT = """
local n = #KEYS
for i = 1, n do
  redis.call('INCRBY', KEYS[i], ARGV[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
end
return n
"""

_GRANT = """
redis.call('HSET', KEYS[1], 'login', ARGV[1], 'protocol', ARGV[2], 'node', ARGV[3], 'expires', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Health:
    """Whether Redis answers; one log line per outage and one per recovery."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._retry_at = 0.0
        self.recovered: list[Callable[[], None]] = []

    @property
    def up(self) -> bool:
        return self.down_since is None

    def run(self, step: Callable[[], T]) -> T:
        now = time.monotonic()
        if self.down_since is not None and now < self._retry_at:
            raise StateUnavailable(f"state store {self.where} unreachable")
        try:
            result = step()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            with self._lock:
                if self.down_since is None:
                    self.down_since = now
                    log.error(
                        "state store %s unreachable: %s; POP-before-SMTP is closed, limits and "
                        "login failures count in this process until it is back",
                        self.where,
                        e,
                    )
                self._retry_at = time.monotonic() + RETRY_INTERVAL
            raise StateUnavailable(f"state store {self.where} unreachable: {e}") from None
        if self.down_since is not None:
            with self._lock:
                since, self.down_since = self.down_since, None
            if since is not None:
                log.warning("state store %s reachable again after %.0f s", self.where, now - since)
                for callback in self.recovered:
                    try:
                        callback()
                    except StateUnavailable:
                        pass
        return result


class RedisState:
    """One process's connection pool to Redis and the stores on it."""

    def __init__(self, url: str, *, node: str, timeout: float) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
        )
        where = _without_password(url)
        self.health = Health(where)
        self.grants = RedisGrantStore(self.client, self.health, node)
        self.counters = RedisCounterStore(self.client, self.health)
        self.logins = RedisLoginFailureStore(self.client, self.health)
        self.notices = RedisNoticeStore(self.client, self.health)
        self.locks = RedisLockStore(self.client, self.health)

    def close(self) -> None:
        self.grants.close()
        self.locks.close()
        self.client.close()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- grants


class RedisGrantStore:
    """Grants as hashes that expire with the grant: nothing to clean up."""

    def __init__(self, client: redis.Redis, health: Health, node: str) -> None:
        self.client = client
        self.health = health
        self.node = node
        self._script = client.register_script(_GRANT)
        # Writes leave the event loop here; one thread keeps them in order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grant-writer")

    def grant(self, ip: str, login: str, expires: float, protocol: GrantProtocol = "pop3") -> None:
        """Hand the write to a thread: the login's answer never waits on Redis."""
        self._writer.submit(self.grant_now, ip, login, expires, protocol)

    def grant_now(
        self, ip: str, login: str, expires: float, protocol: GrantProtocol = "pop3"
    ) -> bool:
        """Write one grant; False if Redis is down (the login then opens no relay)."""
        keys = [PREFIX + "grant:" + ip]
        ttl_ms = max(1, int((expires - time.time()) * 1000))
        args: list[str | int] = [login, protocol, self.node, repr(expires), ttl_ms]
        try:
            self.health.run(lambda: self._script(keys=keys, args=args))
        except StateUnavailable:
            log.warning("grant not stored client=%s login=%s: state store unreachable", ip, login)
            return False
        return True

    def flush(self) -> None:
        """Wait for the writes handed to the thread so far (tests, shutdown)."""
        self._writer.submit(lambda: None).result()

    def lookup(self, ip: str, now: float) -> Grant | None:
        """The grant for `ip`, or None, also when Redis is down (POP-before-SMTP fails closed)."""
        try:
            row = self.health.run(lambda: self.client.hgetall(PREFIX + "grant:" + ip))
        except StateUnavailable:
            return None
        return _grant(ip, row, now)

    def all(self, now: float) -> list[Grant]:
        try:
            return self.all_or_raise(now)
        except StateUnavailable:
            return []

    def all_or_raise(self, now: float) -> list[Grant]:
        def step() -> list[Grant]:
            out = []
            for key in self.client.scan_iter(match=PREFIX + "grant:*", count=500):
                ip = _s(key)[len(PREFIX + "grant:") :]
                g = _grant(ip, self.client.hgetall(key), now)
                if g is not None:
                    out.append(g)
            return sorted(out, key=lambda g: g.ip)

        return self.health.run(step)

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def _grant(ip: str, row: dict[Any, Any], now: float) -> Grant | None:
    if not row:
        return None
    try:
        expires = float(_s(row.get(b"expires")))
        g = Grant(
            ip=ip,
            login=_s(row.get(b"login")),
            expires=expires,
            protocol=grant_protocol(_s(row.get(b"protocol")) or "pop3"),
            node=_s(row.get(b"node")),
        )
    except ValueError:
        return None
    return g if g.expires > now else None


# ---------------------------------------------------------------- counters


def _counter_key(subject: str, metric: str, window: float, now: float) -> str:
    return f"{PREFIX}cnt:{metric}:{int(window)}:{int(window_start(window, now))}:{subject}"


class RedisCounterStore:
    """Counters, one key per window that expires when the window ends.

    While Redis is down, adds are counted in this process (and checks see the
    last count read from Redis plus them), so limits still hold mail; the
    process's adds are written to Redis when it is back.
    """

    blocking = True

    def __init__(self, client: redis.Redis, health: Health) -> None:
        self.client = client
        self.health = health
        self._script = client.register_script(_COUNT)
        self._lock = threading.Lock()
        self._local = MemoryCounterStore()
        self._pending: list[tuple[str, int, int, float]] = []
        self._seen: dict[str, tuple[float, Usage]] = {}
        health.recovered.append(self._write_pending)

    def _add_remote(self, subject: str, messages: int, recipients: int, now: float) -> None:
        keys, amounts, ends = [], [], []
        for metric, amount in ((MESSAGES, messages), (RECIPIENTS, recipients)):
            for window in WINDOWS:
                keys.append(_counter_key(subject, metric, window, now))
                amounts.append(amount)
                # Relative to the caller's clock: the count lives until its window ends.
                ends.append(max(1, int((window_end(window, now) - now) * 1000)))
        self.health.run(lambda: self._script(keys=keys, args=[*amounts, *ends]))

    def add(self, subject: str, messages: int, recipients: int, now: float) -> None:
        try:
            self._add_remote(subject, messages, recipients, now)
        except StateUnavailable:
            with self._lock:
                self._local.add(subject, messages, recipients, now)
                self._pending.append((subject, messages, recipients, now))

    def _write_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._local = MemoryCounterStore()
        for i, (subject, messages, recipients, now) in enumerate(pending):
            try:
                self._add_remote(subject, messages, recipients, now)
            except StateUnavailable:
                with self._lock:
                    for p in pending[i:]:
                        self._local.add(*p)
                    self._pending[:0] = pending[i:]
                return

    def usage(self, subject: str, now: float) -> Usage:
        keys = [
            _counter_key(subject, metric, window, now)
            for metric in (MESSAGES, RECIPIENTS)
            for window in WINDOWS
        ]
        try:
            values = self.health.run(lambda: self.client.mget(keys))
        except StateUnavailable:
            with self._lock:
                local = self._local.usage(subject, now)
                seen_at, seen = self._seen.get(subject, (now, Usage()))
            if window_start(WINDOWS[0], seen_at) != window_start(WINDOWS[0], now):
                seen = Usage(0, seen.messages_day, 0, seen.recipients_day)
            return Usage(
                messages_hour=seen.messages_hour + local.messages_hour,
                messages_day=seen.messages_day + local.messages_day,
                recipients_hour=seen.recipients_hour + local.recipients_hour,
                recipients_day=seen.recipients_day + local.recipients_day,
            )
        mh, md, rh, rd = (int(_s(v) or 0) for v in values)
        usage = Usage(messages_hour=mh, messages_day=md, recipients_hour=rh, recipients_day=rd)
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen[subject] = (now, usage)
        return usage

    def all(self, now: float) -> list[SubjectUsage]:
        try:
            return self.all_or_raise(now)
        except StateUnavailable:
            return self._local.all(now)

    def all_or_raise(self, now: float) -> list[SubjectUsage]:
        def step() -> list[str]:
            subjects = set()
            for key in self.client.scan_iter(match=PREFIX + "cnt:*", count=500):
                parts = _s(key)[len(PREFIX + "cnt:") :].split(":", 3)
                if len(parts) == 4:
                    subjects.add(parts[3])
            return sorted(subjects)

        out = []
        for subject in self.health.run(step):
            usage = self.usage(subject, now)
            if usage.messages_day or usage.recipients_day:
                out.append(SubjectUsage(subject, usage))
        return out

    def flush(self, now: float) -> None:
        """Nothing to do: every add is in Redis (or waits for it)."""


# ---------------------------------------------------------------- login failures


class RedisLoginFailureStore:
    """The failed-login counts of `postvakt.grants.logins`, one Lua script per step.

    While Redis is down, attempts are counted in this process (AUTH keeps
    working, with the ceilings per process).
    """

    blocking = True

    def __init__(self, client: redis.Redis, health: Health) -> None:
        self.client = client
        self.health = health
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._local = MemoryLoginFailureStore()
        self._lock = threading.Lock()

    @staticmethod
    def _keys(address: str, login: str) -> list[str]:
        return [f"{PREFIX}lf:p:{address}|{login}", f"{PREFIX}lf:a:{address}"]

    def reserve(self, address: str, login: str, ceilings: Ceilings, now: float) -> Reservation:
        keys = self._keys(address, login)
        args = [ceilings.per_login, ceilings.per_address, max(1, int(ceilings.window * 1000))]
        try:
            ok, n_pair, n_addr, why = self.health.run(lambda: self._reserve(keys=keys, args=args))
        except StateUnavailable:
            with self._lock:
                return self._local.reserve(address, login, ceilings, now)
        refused = None if ok else (Refusal.LOGIN if int(why) == 1 else Refusal.ADDRESS)
        return Reservation(address, login, int(n_pair), int(n_addr), refused)

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
        keys = self._keys(reservation.address, reservation.login)
        try:
            result = self.health.run(
                lambda: self._settle(keys=keys, args=[outcome.value, fingerprint])
            )
        except StateUnavailable:
            with self._lock:
                return self._local.settle(reservation, outcome, fingerprint, ceilings, now)
        return Outcome(_s(result))

    def failures(self, address: str, login: str | None, ceilings: Ceilings, now: float) -> int:
        pair, addr = self._keys(address, login or "")
        key = addr if login is None else pair
        try:
            value = self.health.run(lambda: self.client.hget(key, "c"))
        except StateUnavailable:
            with self._lock:
                return self._local.failures(address, login, ceilings, now)
        return int(_s(value) or 0)


# ---------------------------------------------------------------- notices


class RedisNoticeStore:
    """One held-mail notice per subject, rule and window, for all nodes."""

    blocking = True

    def __init__(self, client: redis.Redis, health: Health) -> None:
        self.client = client
        self.health = health
        self._local = MemoryNoticeStore()

    def claim(self, key: str, until: float, now: float) -> bool:
        name = PREFIX + "notice:" + key
        ms = max(1, int((until - now) * 1000))
        try:
            return bool(self.health.run(lambda: self.client.set(name, b"1", nx=True, px=ms)))
        except StateUnavailable:
            return self._local.claim(key, until, now)


# ---------------------------------------------------------------- locks


class RedisLockStore:
    """Locks that hold across nodes: SET NX with an expiry, renewed while held.

    A node that dies leaves its locks for at most LOCK_TTL. While Redis is
    down no lock is granted (a maildrop is never served twice at once).
    """

    def __init__(self, client: redis.Redis, health: Health, ttl: float = LOCK_TTL) -> None:
        self.client = client
        self.health = health
        self.ttl = ttl
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Releases come from the event loop (a session ends): they leave it here.
        self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lock-release")

    def acquire(self, name: str, owner: str) -> bool:
        key = PREFIX + "lock:" + name
        ms = int(self.ttl * 1000)
        try:
            ok = self.health.run(lambda: self.client.set(key, owner, nx=True, px=ms))
        except StateUnavailable:
            return False
        if not ok:
            return False
        with self._lock:
            self._held[key] = owner
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew_loop, name="lock-renewal", daemon=True
                )
                self._thread.start()
        return True

    def release(self, name: str, owner: str) -> None:
        """Stop renewing at once; the key is deleted in a thread (never waits on Redis)."""
        key = PREFIX + "lock:" + name
        with self._lock:
            self._held.pop(key, None)
        self._releaser.submit(self._delete, key, owner)

    def _delete(self, key: str, owner: str) -> None:
        try:
            self.health.run(lambda: self._release(keys=[key], args=[owner]))
        except StateUnavailable:
            pass  # it expires by itself

    def _renew_loop(self) -> None:
        ms = int(self.ttl * 1000)
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                held = list(self._held.items())
            for key, owner in held:
                try:
                    self.health.run(functools.partial(self._renew, keys=[key], args=[owner, ms]))
                except StateUnavailable:
                    break

    def close(self) -> None:
        self._stop.set()
        self._releaser.shutdown(wait=True)
