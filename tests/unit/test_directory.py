"""Directory: users with Argon2id hashes, aliases, send-as rights, postmaster (RFC 5321 §4.5.1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postvakt.auth import Authenticator
from postvakt.directory import Directory, DirectoryError


@pytest.fixture
def d(tmp_path: Path) -> Directory:
    return Directory(tmp_path / "dir.sqlite3", ["pv.test", "other.test"], "admin@pv.test", tmp_path)


def test_password_is_stored_as_argon2id(d: Directory) -> None:
    d.add_user("alice@pv.test", "secret")
    h = d.password_hash("alice@pv.test")
    assert h is not None and h.startswith("$argon2id$") and "secret" not in h


def test_verify_password_case_insensitive_login(d: Directory) -> None:
    d.add_user("Alice@PV.test", "secret")
    assert d.verify_password("ALICE@pv.test.", "secret") == "alice@pv.test"
    assert d.verify_password("alice@pv.test", "wrong") is None
    assert d.verify_password("nobody@pv.test", "secret") is None


def test_add_user_refuses_foreign_domain_and_duplicates(d: Directory) -> None:
    with pytest.raises(DirectoryError, match="not one of the local domains"):
        d.add_user("bob@elsewhere.example", "x")
    d.add_user("bob@pv.test", "x")
    with pytest.raises(DirectoryError, match="exists already"):
        d.add_user("BOB@pv.test", "y")
    with pytest.raises(DirectoryError, match="not an address"):
        d.add_user("bob", "y")


def test_alias_expansion_and_loops(d: Directory) -> None:
    d.add_user("alice@pv.test", "a")
    d.add_user("bob@pv.test", "b")
    d.add_alias("sales@pv.test", "alice@pv.test")
    d.add_alias("sales@pv.test", "bob@pv.test")
    d.add_alias("loop1@pv.test", "loop2@pv.test")
    d.add_alias("loop2@pv.test", "loop1@pv.test")
    d.add_alias("fwd@pv.test", "friend@adatum.example")
    assert sorted(d.resolve("Sales@pv.test")) == ["alice@pv.test", "bob@pv.test"]
    assert d.resolve("loop1@pv.test") == []
    assert d.resolve("fwd@pv.test") == ["friend@adatum.example"]
    assert d.resolve("nobody@pv.test") == []
    assert d.recipient_exists("sales@pv.test") and not d.recipient_exists("nobody@pv.test")


def test_postmaster_always_reaches_the_admin(d: Directory) -> None:
    d.add_user("admin@pv.test", "x")
    assert d.resolve("postmaster@pv.test") == ["admin@pv.test"]
    assert d.resolve("POSTMASTER@other.test") == ["admin@pv.test"]
    assert d.resolve("Postmaster") == ["admin@pv.test"]
    assert d.recipient_exists("postmaster@other.test")


def test_may_send_as(d: Directory) -> None:
    d.add_user("alice@pv.test", "a")
    d.add_user("bob@pv.test", "b")
    d.add_alias("ali@pv.test", "alice@pv.test")
    d.add_alias("sales@pv.test", "alice@pv.test")
    d.add_alias("sales@pv.test", "bob@pv.test")
    assert d.may_send_as("alice@pv.test", "ALICE@pv.test")
    assert d.may_send_as("alice@pv.test", "ali@pv.test")  # personal alias
    assert not d.may_send_as("alice@pv.test", "sales@pv.test")  # shared: needs a grant
    assert not d.may_send_as("alice@pv.test", "bob@pv.test")
    d.add_sendas("alice@pv.test", "sales@pv.test")
    d.add_sendas("alice@pv.test", "terri@contoso.example")
    assert d.may_send_as("alice@pv.test", "sales@pv.test")
    assert d.may_send_as("alice@pv.test", "terri@contoso.example")
    assert d.sendas("alice@pv.test") == ["sales@pv.test", "terri@contoso.example"]
    d.delete_sendas("alice@pv.test", "sales@pv.test")
    assert not d.may_send_as("alice@pv.test", "sales@pv.test")


def test_maildir_path(d: Directory, tmp_path: Path) -> None:
    assert d.maildir("Alice@PV.test") == tmp_path / "mail" / "pv.test" / "alice"


def test_authenticator_caches_good_credentials(d: Directory) -> None:
    d.add_user("alice@pv.test", "secret")
    a = Authenticator(d)

    async def run() -> list[str | None]:
        return [await a.verify("alice@pv.test", "secret") for _ in range(5)]

    assert asyncio.run(run()) == ["alice@pv.test"] * 5
    assert a.argon2_runs == 1
    assert asyncio.run(a.verify("alice@pv.test", "wrong")) is None
    # A password change invalidates the cached entry without any signal.
    d.set_password("alice@pv.test", "new")
    assert asyncio.run(a.verify("alice@pv.test", "secret")) is None
    assert asyncio.run(a.verify("alice@pv.test", "new")) == "alice@pv.test"


def test_postmaster_mailbox_exists_without_a_user(tmp_path: Path) -> None:
    d = Directory(tmp_path / "d.sqlite3", ["pv.test"], "postmaster@pv.test", tmp_path)
    assert d.resolve("Postmaster") == ["postmaster@pv.test"]
    assert d.resolve("postmaster@pv.test") == ["postmaster@pv.test"]
    assert d.resolve("nobody@pv.test") == []
    external = Directory(tmp_path / "e.sqlite3", ["pv.test"], "admin@isp.example", tmp_path)
    assert external.resolve("postmaster@pv.test") == ["admin@isp.example"]


def test_the_unknown_users_hash_costs_what_a_real_one_costs(tmp_path: Path) -> None:
    """ "No such user" is checked against a stored hash of the same Argon2
    parameters as every user's (no timing oracle), and it is the hash of the
    password it says it is."""
    from argon2 import PasswordHasher

    from postvakt import directory

    hasher = PasswordHasher()
    assert not hasher.check_needs_rehash(directory._DUMMY_HASH)
    assert hasher.verify(directory._DUMMY_HASH, directory._DUMMY_PASSWORD)
    d = Directory(tmp_path / "d.sqlite3", ["pv.test"], "postmaster@pv.test", tmp_path)
    assert d.verify_password("nobody@pv.test", "x") is None
    assert d._dummy_hash == directory._DUMMY_HASH
