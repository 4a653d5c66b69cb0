"""State every process and node must see, behind narrow interfaces.

What lives here, and in which form (`[store] state`):

| interface            | what                                   | memory | sqlite       | redis                     |
|----------------------|----------------------------------------|--------|--------------|---------------------------|
| `GrantStore`         | POP-before-SMTP grants                 | dict   | grants.sqlite3 | hash per address, TTL    |
| `CounterStore`       | outbound counters (hour, day)          | dict   | counters.sqlite3 | key per window, TTL    |
| `LoginFailureStore`  | failed logins by address and by login  | dict   | logins.sqlite3 | Lua script per step     |
| `NoticeStore`        | one held-mail notice per window        | dict   | notices.sqlite3 | SET NX with expiry     |
| `LockStore`          | POP3 mailbox locks across nodes        | none   | none (flock) | SET NX, renewed, expiring |

"memory" suits one process and tests; "sqlite" (the default) one node with
any number of processes; "redis://HOST:PORT/DB" several nodes. Every step
that decides something (count and check, reserve a login attempt) is one
atomic step of the store: a transaction in SQLite, a Lua script in Redis.

The memory and SQLite forms of grants, counters and login failures live
beside the logic that uses them (`postvakt.grants`); the Redis forms and the
notice and lock stores live in this package. `open_state` picks them all by
the config, so a caller never compares the kind itself.

When Redis cannot be reached, each store fails the way docs/deployment.md
tells (grants closed, counters and login failures counted in the process,
notices de-duplicated in the process, locks refused), logs one line when the
outage starts and one when it ends, and recovers without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from postvakt.config import Config
from postvakt.grants import GrantStore, MemoryGrantStore, SqliteGrantStore
from postvakt.grants.counters import (
    CounterStore,
    MemoryCounterStore,
    SqliteCounterStore,
    SubjectUsage,
)
from postvakt.grants.logins import (
    LoginFailureStore,
    MemoryLoginFailureStore,
    SqliteLoginFailureStore,
)
from postvakt.policy import Grant
from postvakt.store.local import (
    LockStore,
    MemoryNoticeStore,
    NoLocks,
    NoticeStore,
    SqliteNoticeStore,
    StateUnavailable,
)

if TYPE_CHECKING:
    from postvakt.store.redis import RedisState

__all__ = [
    "CounterStore",
    "GrantStore",
    "LockStore",
    "LoginFailureStore",
    "NoticeStore",
    "State",
    "StateUnavailable",
    "list_counters",
    "list_grants",
    "open_state",
]


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass(eq=False)
class State:
    """One process's handles on the shared state."""

    kind: str  # "memory" | "sqlite" | "redis"
    grants: GrantStore
    counters: CounterStore
    logins: LoginFailureStore
    notices: NoticeStore
    locks: LockStore
    backend: Closable | None = None

    @property
    def remote(self) -> bool:
        """Whether a read may wait on the network (then the fronts read it off the loop)."""
        return self.kind == "redis"

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _redis(config: Config) -> RedisState:
    """The Redis backend, imported only when configured: the client library
    costs every `postvakt` command a fifth of a second to import."""
    from postvakt.store.redis import RedisState

    return RedisState(config.store.state, node=config.node, timeout=config.store.timeout)


def grants_path(config: Config) -> Path:
    return config.data_dir / "grants.sqlite3"


def counters_path(config: Config) -> Path:
    if config.store.state_kind == "sqlite":
        return config.data_dir / "counters.sqlite3"
    return config.data_dir / "counters.json"


def open_state(config: Config) -> State:
    """The stores `[store] state` names, for a server process."""
    kind = config.store.state_kind
    node = config.node
    if kind == "redis":
        backend = _redis(config)
        return State(
            kind=kind,
            grants=backend.grants,
            counters=backend.counters,
            logins=backend.logins,
            notices=backend.notices,
            locks=backend.locks,
            backend=backend,
        )
    if kind == "sqlite":
        return State(
            kind=kind,
            grants=SqliteGrantStore(grants_path(config), node=node),
            counters=SqliteCounterStore(counters_path(config)),
            logins=SqliteLoginFailureStore(config.data_dir / "logins.sqlite3"),
            notices=SqliteNoticeStore(config.data_dir / "notices.sqlite3"),
            locks=NoLocks(),
        )
    return State(
        kind=kind,
        grants=MemoryGrantStore(snapshot=config.data_dir / "grants.json", node=node),
        counters=MemoryCounterStore(snapshot=counters_path(config)),
        logins=MemoryLoginFailureStore(),
        notices=MemoryNoticeStore(),
        locks=NoLocks(),
    )


def list_grants(config: Config, now: float) -> list[Grant]:
    """What `postvakt grants list` shows, from outside the server.

    Raises StateUnavailable when the Redis store cannot be reached.
    """
    kind = config.store.state_kind
    if kind == "redis":
        backend = _redis(config)
        try:
            return backend.grants.all_or_raise(now)
        finally:
            backend.close()
    if kind == "sqlite":
        return SqliteGrantStore(grants_path(config)).all(now)
    return MemoryGrantStore.read_snapshot(config.data_dir / "grants.json", now)


def list_counters(config: Config, now: float) -> list[SubjectUsage]:
    """What `postvakt limits show` sees from outside the server."""
    kind = config.store.state_kind
    if kind == "redis":
        backend = _redis(config)
        try:
            return backend.counters.all_or_raise(now)
        finally:
            backend.close()
    path = counters_path(config)
    if kind == "sqlite":
        return SqliteCounterStore(path).all(now) if path.exists() else []
    return MemoryCounterStore.read_snapshot(path, now)
