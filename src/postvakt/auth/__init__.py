"""Password checks with a credential cache.

Argon2id costs tens of milliseconds of CPU by design. A mail client that logs in
on every connection would make each connection pay it; the DESIGN target is
"no Argon2 run per connection after the first". The cache maps
(login, stored hash, keyed digest of the password) to success. Keying on the
stored hash means a password change invalidates the entry without any message
between processes; the keyed digest (a random per-process key) means the cache
never holds a password or an unsalted hash of one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from postvakt.directory import canonical

if TYPE_CHECKING:
    from postvakt.directory import Directory

# How long a verified login is trusted without a new Argon2 run.
CACHE_TTL = 15 * 60
# Bounded so that a flood of distinct good logins cannot grow memory.
CACHE_SIZE = 10_000


class Authenticator:
    def __init__(self, directory: Directory, ttl: float = CACHE_TTL) -> None:
        self.directory = directory
        self.ttl = ttl
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()
        self.argon2_runs = 0

    def _cache_key(self, login: str, stored: str, password: str) -> tuple[str, str, bytes]:
        login = canonical(login)
        digest = hmac.new(
            self._key, password.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).digest()
        return (login, stored, digest)

    def cached(self, login: str, password: str) -> str | None:
        stored = self.directory.password_hash(login)
        if stored is None:
            return None
        key = self._cache_key(login, stored, password)
        until = self._cache.get(key)
        if until is not None and until > time.monotonic():
            self._cache.move_to_end(key)
            return canonical(login)
        return None

    def verify_sync(self, login: str, password: str) -> str | None:
        hit = self.cached(login, password)
        if hit is not None:
            return hit
        self.argon2_runs += 1
        result = self.directory.verify_password(login, password)
        if result is not None:
            stored = self.directory.password_hash(result)
            if stored is not None:
                self._cache[self._cache_key(login, stored, password)] = time.monotonic() + self.ttl
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return result

    async def verify(self, login: str, password: str) -> str | None:
        """The canonical login, or None. Runs Argon2 off the event loop when it must run at all."""
        hit = self.cached(login, password)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.verify_sync, login, password)
