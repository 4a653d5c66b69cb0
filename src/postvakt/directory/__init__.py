"""Users, aliases and send-as rights: in SQLite under data_dir, or in
PostgreSQL for several nodes (`[store] directory`, `postvakt.directory.postgres`).

Addresses are stored in one canonical form: the local part and domain both in
lower case (we treat local parts case-insensitively, as every provider in
practice does). Every lookup goes through `canonical`, so `ALICE@Example.TEST.`
and `alice@example.test` are the same user.

Postmaster (RFC 5321 §4.5.1): `postmaster@<every local domain>` and the bare
`Postmaster` always resolve, to `config.postmaster` (default
postmaster@<first local domain>), unless a user or alias of that name exists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt.address import mailbox_problem
from postvakt.directory.rows import DirectoryUnavailable, Rows, SchemaError, SqliteRows

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from postvakt.config import Config

# Alias chains longer than this are a loop or a mistake (Postfix: 1000 recursion; we are small).
MAX_ALIAS_DEPTH = 10
# A password hash computed for unknown users, so that "no such user" costs the
# same Argon2 time as "wrong password" (no timing oracle).
_DUMMY_PASSWORD = "postvakt-timing-equaliser"
# Its hash with argon2-cffi's default parameters, made once here instead of at
# every start (an Argon2 run: the first login of each process paid it twice).
# Made again at run time only if the library's defaults change.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$/P1R2wqNp9pgaB+XKaIhgQ$KFSQrI3UKK6Ln1hPnOqCcvRcx1VLqJcHQSzceUGvHec"


class DirectoryError(Exception):
    """A directory change that cannot be made; the message is for the admin."""


@functools.lru_cache(maxsize=4096)
def canonical(address: str) -> str:
    """The stored form of an address: lower case, no brackets, no trailing dot, IDNA domain.

    Kept for the addresses seen last: the front asks it at every RCPT and the
    queue manager at every delivery, and Python's IDNA codec costs more than
    the rest of a lookup."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    if "@" not in a:
        return a.lower()
    local, _, domain = a.rpartition("@")
    domain = domain.rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{local.lower()}@{domain}"


def _check_mailbox(address: str) -> str:
    problem = mailbox_problem(address)
    if problem is not None:
        raise DirectoryError(f"{address!r} is not an address SMTP accepts: {problem}")
    a = canonical(address)
    local, sep, domain = a.rpartition("@")
    if not sep or not local or not domain or "." not in domain:
        raise DirectoryError(f"{address!r} is not an address of the form user@domain")
    if any(c in a for c in ' \t\r\n\x00<>"\\/') or local.startswith(".") or ".." in local:
        raise DirectoryError(f"{address!r} contains characters a mailbox name cannot hold")
    return a


__all__ = ["Directory", "DirectoryError", "DirectoryUnavailable", "SchemaError", "canonical"]


class Directory:
    """The user database's rules over its rows (`rows`: SQLite or PostgreSQL). Thread-safe."""

    def __init__(
        self,
        path: Path,
        local_domains: Sequence[str],
        postmaster: str,
        data_dir: Path,
        mail_dir: Path | None = None,
        rows: Rows | None = None,
    ) -> None:
        self.path = path
        self.local_domains = tuple(local_domains)
        self.postmaster = canonical(postmaster)
        self.data_dir = data_dir
        self.mail_dir = mail_dir if mail_dir is not None else data_dir / "mail"
        self.rows: Rows = rows if rows is not None else SqliteRows(path)
        self._hasher: PasswordHasher | None = None
        self._dummy_hash = ""

    def _argon2(self) -> PasswordHasher:
        """The password hasher, made at the first password hashed or checked:
        the queue manager, which reads users and aliases only, never loads
        argon2 (1.6 MB of its memory), and neither does a command that checks
        no password."""
        if self._hasher is None:
            from argon2 import PasswordHasher

            hasher = PasswordHasher()
            fresh = hasher.check_needs_rehash(_DUMMY_HASH)
            self._dummy_hash = hasher.hash(_DUMMY_PASSWORD) if fresh else _DUMMY_HASH
            self._hasher = hasher
        return self._hasher

    @classmethod
    def for_config(cls, config: Config, rows: Rows | None = None, live: bool = False) -> Directory:
        """The directory `[store] directory` names.

        `live`: a server process, which reads PostgreSQL's rows from a mirror
        kept current by notifications (`postvakt.directory.postgres`).
        Raises DirectoryUnavailable or SchemaError for a PostgreSQL directory
        that cannot be used.
        """
        if rows is None and config.store.directory_kind == "postgresql":
            # Imported only when configured: psycopg costs every command a tenth of a second.
            from postvakt.directory.postgres import open_rows

            rows = open_rows(config.store.directory, timeout=config.store.timeout, live=live)
        return cls(
            config.data_dir / "directory.sqlite3",
            config.domains.local,
            config.postmaster_address,
            config.data_dir,
            config.mail_root,
            rows,
        )

    def close(self) -> None:
        self.rows.close()

    def is_local(self, address: str) -> bool:
        return canonical(address).rpartition("@")[2] in self.local_domains

    # ------------------------------------------------------------ users

    def add_user(self, address: str, password: str) -> str:
        a = _check_mailbox(address)
        if a.rpartition("@")[2] not in self.local_domains:
            raise DirectoryError(
                f"{a}: domain is not one of the local domains ({', '.join(self.local_domains) or 'none'})"
            )
        if not password:
            raise DirectoryError("the password is empty")
        if self.user_exists(a):
            raise DirectoryError(f"{a}: user exists already")
        h = self._argon2().hash(password)
        try:
            self.rows.add_user(a, h)
        except KeyError:
            raise DirectoryError(f"{a}: user exists already") from None
        return a

    def delete_user(self, address: str) -> None:
        a = canonical(address)
        if not self.user_exists(a):
            raise DirectoryError(f"{a}: no such user")
        self.rows.delete_user(a)

    def set_password(self, address: str, password: str) -> None:
        a = canonical(address)
        if not self.user_exists(a):
            raise DirectoryError(f"{a}: no such user")
        if not password:
            raise DirectoryError("the password is empty")
        self.rows.set_password(a, self._argon2().hash(password))

    def users(self) -> list[str]:
        return self.rows.users()

    def user_exists(self, address: str) -> bool:
        return self.rows.password_hash(canonical(address)) is not None

    def password_hash(self, login: str) -> str | None:
        return self.rows.password_hash(canonical(login))

    def verify_password(self, login: str, password: str) -> str | None:
        """The canonical login if the password is right, else None. Costs one Argon2 run either way."""
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        a = canonical(login)
        stored = self.password_hash(a)
        hasher = self._argon2()
        try:
            hasher.verify(stored or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return a if stored is not None else None

    # ------------------------------------------------------------ aliases

    def add_alias(self, alias: str, target: str) -> None:
        a = _check_mailbox(alias)
        t = _check_mailbox(target)
        if a.rpartition("@")[2] not in self.local_domains:
            raise DirectoryError(f"{a}: an alias must be in a local domain")
        if a == t:
            raise DirectoryError(f"{a}: an alias cannot point to itself")
        self.rows.add_alias(a, t)

    def delete_alias(self, alias: str, target: str | None = None) -> None:
        a = canonical(alias)
        n = self.rows.delete_alias(a, None if target is None else canonical(target))
        if not n:
            raise DirectoryError(f"{a}: no such alias")

    def aliases(self) -> list[tuple[str, str]]:
        return self.rows.aliases()

    def _alias_targets(self, address: str) -> list[str]:
        return self.rows.alias_targets(address)

    # ------------------------------------------------------------ send-as

    def add_sendas(self, login: str, address: str) -> None:
        lg = canonical(login)
        if not self.user_exists(lg):
            raise DirectoryError(f"{lg}: no such user")
        self.rows.add_sendas(lg, _check_mailbox(address))

    def delete_sendas(self, login: str, address: str) -> None:
        lg, a = canonical(login), canonical(address)
        if not self.rows.delete_sendas(lg, a):
            raise DirectoryError(f"{lg} has no right to send as {a}")

    def sendas(self, login: str) -> list[str]:
        return self.rows.sendas(canonical(login))

    # ------------------------------------------------------------ lookups

    def _postmaster_target(self, a: str) -> str | None:
        local, _, domain = a.rpartition("@")
        if a == "postmaster" or (local == "postmaster" and domain in self.local_domains):
            return self.postmaster
        return None

    def resolve(self, address: str) -> list[str]:
        """Final destinations: local mailboxes (users) and foreign forward targets. [] = unknown."""
        out: list[str] = []
        seen: set[str] = set()

        def walk(a: str, depth: int) -> None:
            if a in seen or depth > MAX_ALIAS_DEPTH:
                return
            seen.add(a)
            domain = a.rpartition("@")[2]
            if "@" in a and domain not in self.local_domains:
                out.append(a)  # forwarded to a foreign address
                return
            if self.user_exists(a):
                out.append(a)
                return
            targets = self._alias_targets(a)
            if targets:
                for t in targets:
                    walk(t, depth + 1)
                return
            pm = self._postmaster_target(a)
            if pm is not None and pm != a:
                walk(pm, depth + 1)
            elif a == self.postmaster:
                # The admin mailbox exists even before anyone made a user for
                # it: postmaster mail is kept in its Maildir, never bounced
                # (RFC 5321 §4.5.1); `postvakt user add` it to read it by POP3.
                out.append(a)

        walk(canonical(address), 0)
        return list(dict.fromkeys(out))

    def recipient_exists(self, address: str) -> bool:
        a = canonical(address)
        if self._postmaster_target(a) is not None:
            return True  # RFC 5321 §4.5.1: postmaster is always accepted
        return bool(self.resolve(a))

    def may_send_as(self, login: str, address: str) -> bool:
        lg, a = canonical(login), canonical(address)
        if lg == a:
            return True
        if a.rpartition("@")[2] in self.local_domains and self.resolve(a) == [lg]:
            return True  # a personal alias: it delivers to this user and nobody else
        return a in self.rows.sendas(lg)

    def maildir(self, mailbox: str) -> Path:
        local, _, domain = canonical(mailbox).rpartition("@")
        return self.mail_dir / domain / local
