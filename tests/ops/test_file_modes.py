"""Private from birth: the user database, its SQLite side files, grants, counters,
login failures and keys are never readable by other local users, whatever umask
the admin's shell had; looser modes found on disk are warned about once."""

from __future__ import annotations

import os
import poplib
import sqlite3
from pathlib import Path

import pytest
from opsutil import mode, others_may, umask

from support import base_config, postvakt, start_server, to_toml

ALICE = "alice@pv.test"


def _config(tmp_path: Path, **sections: object) -> Path:
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(to_toml(base_config(tmp_path / "data", **sections)))  # type: ignore[arg-type]
    return cfg


def test_user_database_and_side_files_are_private(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    with umask(0o022):
        postvakt("user", "add", ALICE, "--password-stdin", config=cfg, input="pw\n")
        # Keep a connection open so that SQLite's -wal and -shm stay on disk to be looked at.
        db = sqlite3.connect(tmp_path / "data" / "directory.sqlite3")
        try:
            db.execute("select count(*) from sqlite_master").fetchall()
            postvakt("user", "add", "bob@pv.test", "--password-stdin", config=cfg, input="pw\n")
            data = tmp_path / "data"
            files = sorted(p.name for p in data.iterdir())
            assert "directory.sqlite3" in files
            side = [p for p in data.iterdir() if p.name.startswith("directory.sqlite3")]
            assert len(side) >= 2, files  # the database and at least its -wal
            for p in side:
                assert not others_may(p), f"{p.name} is {mode(p):04o}"
            assert not others_may(data), f"data_dir is {mode(data):04o}"
        finally:
            db.close()


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("memory", ("directory.sqlite3", "grants.json", "tls/key.pem")),
        ("sqlite", ("directory.sqlite3", "grants.sqlite3", "logins.sqlite3", "tls/key.pem")),
    ],
)
def test_serve_writes_nothing_others_may_read(
    tmp_path: Path, store: str, expected: tuple[str, ...]
) -> None:
    with umask(0o022):
        srv = start_server(
            tmp_path,
            users={ALICE: "pw"},
            relay={"grant_store": store},
            limits={"store": store},
        )
        try:
            pop = poplib.POP3_SSL("127.0.0.1", srv.port("pop3s"), timeout=10, context=_no_verify())
            pop.user(ALICE)
            pop.pass_("pw")  # a grant, a login record
            pop.quit()
            bad = poplib.POP3_SSL("127.0.0.1", srv.port("pop3s"), timeout=10, context=_no_verify())
            bad.user(ALICE)
            try:
                bad.pass_("wrong")  # a login failure record
            except poplib.error_proto:
                pass
            bad.close()
        finally:
            srv.stop()
    data = srv.data_dir
    looked = []
    for root, dirs, names in os.walk(data):
        for n in dirs + names:
            p = Path(root) / n
            if p.is_socket() or p.is_symlink():
                continue
            looked.append(p.relative_to(data))
            assert not others_may(p), f"{p} is {mode(p):04o}"
    assert not others_may(data)
    names = {str(p) for p in looked}
    for name in expected:
        assert name in names, sorted(names)


def test_loose_modes_are_warned_once_with_the_fix(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    postvakt("user", "add", ALICE, "--password-stdin", config=cfg, input="pw\n")
    data = tmp_path / "data"
    db = data / "directory.sqlite3"
    quiet = postvakt("user", "list", config=cfg)
    assert "warning" not in quiet.stderr
    os.chmod(data, 0o755)
    os.chmod(db, 0o644)
    r = postvakt("user", "list", config=cfg)
    assert ALICE in r.stdout
    lines = [x for x in r.stderr.splitlines() if "warning" in x]
    assert len(lines) == 2, r.stderr
    assert any(f"chmod 750 {data}" in x for x in lines), lines
    assert any(f"chmod 640 {db}" in x for x in lines), lines
    for x in lines:
        assert "every local user" in x


def _no_verify():  # type: ignore[no-untyped-def]
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
