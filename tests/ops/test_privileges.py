"""`serve` started as root: binds ports below 1024, then runs as `[server] user`
with no supplementary groups (the front and the queue manager it starts, as
/proc shows them), owns its files with private modes, and mail flows end to end.
Without that user, it refuses to start with one line that says how to make it."""

from __future__ import annotations

import json
import os
import poplib
import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opsutil import mode, others_may, wait_until
from stack import ensure_server_user, python_for

from support import base_config, to_toml

ALICE = "alice@pv.test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="binding ports below 1024 and dropping to another user need root"
)


def _free_low_ports(n: int) -> list[int]:
    """Ports below 1024 nobody holds on 127.0.0.1 (the machine's own services keep theirs)."""
    found: list[int] = []
    for port in range(700, 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    pytest.skip("fewer than 5 free ports below 1024 on 127.0.0.1")


def _status(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in value.split()]
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(p.name))
    return kids


@pytest.fixture
def root_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pvroot-"))
    os.chmod(d, 0o755)  # the server user must reach its files here (pytest's own are root's only)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_root_binds_low_ports_then_runs_as_server_user(root_dir: Path) -> None:
    uid, gid = ensure_server_user()
    python, env = python_for(uid, gid, root_dir)
    smtp, sub, subs, pop3, pop3s = _free_low_ports(5)
    data = root_dir / "data"
    cfg = root_dir / "postvakt.toml"
    cfg.write_text(
        to_toml(
            base_config(
                data,
                listen={
                    "smtp": [f"127.0.0.1:{smtp}"],
                    "submission": [f"127.0.0.1:{sub}"],
                    "submissions": [f"127.0.0.1:{subs}"],
                    "pop3": [f"127.0.0.1:{pop3}"],
                    "pop3s": [f"127.0.0.1:{pop3s}"],
                },
                server={"drop_privileges": True},
            )
        )
    )
    run_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as pw:
        pw.write(b"secret\n")
        pw.seek(0)
        subprocess.run(
            [
                *python,
                "-m",
                "postvakt",
                "user",
                "add",
                ALICE,
                "--password-stdin",
                "--config",
                str(cfg),
            ],
            stdin=pw,
            env=run_env,
            check=True,
            capture_output=True,
        )
    log = root_dir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*python, "-m", "postvakt", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=run_env,
            cwd="/",
        )
    try:
        wait_until(
            lambda: (data / "listening.json").exists() or proc.poll() is not None,
            "the server to listen",
        )
        assert proc.poll() is None, log.read_text()
        bound = json.loads((data / "listening.json").read_text())
        assert bound["smtp"] == [f"127.0.0.1:{smtp}"] and bound["pop3s"] == [f"127.0.0.1:{pop3s}"]

        wait_until(lambda: len(_children(proc.pid)) >= 1, "the queue manager")
        for pid in [proc.pid, *_children(proc.pid)]:
            st = _status(pid)
            assert st["Uid"] == [uid] * 4, (pid, st)
            assert st["Gid"] == [gid] * 4, (pid, st)
            assert st["Groups"] == [], (pid, st)

        with smtplib.SMTP("127.0.0.1", smtp, timeout=20) as s:
            s.sendmail("bob@elsewhere.example", [ALICE], b"Subject: low ports\r\n\r\nhello\r\n")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 30
        while True:
            pop = poplib.POP3_SSL("127.0.0.1", pop3s, timeout=20, context=ctx)
            pop.user(ALICE)
            pop.pass_("secret")
            count = pop.stat()[0]
            if count or time.monotonic() > deadline:
                break
            pop.quit()
            time.sleep(0.2)
        assert count == 1, log.read_text()
        assert b"Subject: low ports" in b"\r\n".join(pop.retr(1)[1])
        pop.quit()

        # Everything the server keeps is its user's and nobody else's.
        for root, dirs, names in os.walk(data):
            for n in [*dirs, *names]:
                p = Path(root) / n
                if p.is_symlink():
                    continue
                st = p.lstat()
                assert (st.st_uid, st.st_gid) == (uid, gid), f"{p} is {st.st_uid}:{st.st_gid}"
                if not p.is_socket():
                    assert not others_may(p), f"{p} is {mode(p):04o}"
        assert mode(data) & 0o007 == 0
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "running as postvakt:postvakt" in text
    assert "Traceback" not in text


def test_missing_server_user_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(
        to_toml(
            base_config(
                tmp_path / "data", server={"drop_privileges": True, "user": "pv-no-such-user"}
            )
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "postvakt", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "[server] user" in lines[0] and "pv-no-such-user" in lines[0] and "useradd" in lines[0]


def test_unprivileged_start_on_high_ports_runs_as_is(root_dir: Path) -> None:
    """Started as the server user itself (a unit with User=, or by hand): nothing to drop."""
    uid, gid = ensure_server_user()
    python, env = python_for(uid, gid, root_dir)
    data = root_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, uid, gid)
    cfg = root_dir / "postvakt.toml"
    cfg.write_text(to_toml(base_config(data, server={"drop_privileges": True})))
    os.chmod(cfg, 0o644)
    log = root_dir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*python, "-m", "postvakt", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=[],
        )
    try:
        wait_until(
            lambda: (data / "listening.json").exists() or proc.poll() is not None,
            "the server to listen",
        )
        assert proc.poll() is None, log.read_text()
        port = int(json.loads((data / "listening.json").read_text())["smtp"][0].rsplit(":", 1)[1])
        assert port >= 1024
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            assert s.noop()[0] == 250
        assert _status(proc.pid)["Uid"] == [uid] * 4
    finally:
        proc.terminate()
        proc.wait(30)
    assert "running as" not in log.read_text()


def test_root_run_command_leaves_the_database_to_the_server_user(root_dir: Path) -> None:
    """`postvakt user add` run as root beside a data_dir the server user owns: the database
    and its -wal and -shm files stay the server user's, or the server could not open them."""
    uid, gid = ensure_server_user()
    data = root_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, uid, gid)
    cfg = root_dir / "postvakt.toml"
    cfg.write_text(to_toml(base_config(data)))
    db_path = data / "directory.sqlite3"
    # A reader holds the database open, as the running server does, so -wal and -shm stay.
    add = [sys.executable, "-m", "postvakt", "user", "add", "--config", str(cfg)]
    subprocess.run([*add, ALICE, "--password-stdin"], input="pw\n", text=True, check=True)
    held = sqlite3.connect(db_path)
    try:
        held.execute("select count(*) from sqlite_master").fetchall()
        subprocess.run(
            [*add, "bob@pv.test", "--password-stdin"], input="pw\n", text=True, check=True
        )
        files = sorted(data.glob("directory.sqlite3*"))
        assert {p.name for p in files} >= {"directory.sqlite3", "directory.sqlite3-wal"}
        for p in files:
            st = p.stat()
            assert (st.st_uid, st.st_gid) == (uid, gid), f"{p.name} is {st.st_uid}:{st.st_gid}"
    finally:
        held.close()
