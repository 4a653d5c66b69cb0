"""`postvakt dovecot config`: what it writes, read back by Dovecot's own parser (doveconf).

The running Dovecot is in test_dovecot_e2e.py; here the files themselves:
listeners, the directory driver (SQLite now, PostgreSQL ready), users,
certificate, refusals with one clear line, and the post-login script run
against a real grant socket.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from postvakt.config import HostPort, from_dict
from postvakt.dovecot import (
    DovecotSetup,
    DovecotSetupError,
    Listeners,
    PostgresDirectory,
    SqliteDirectory,
    postgres_conninfo,
    render_conf,
    render_sql,
    setup_for,
    write,
)
from postvakt.grants import MemoryGrantStore
from postvakt.server.grantreport import GrantReports, start_grant_reports, stop_grant_reports
from support import base_config, postvakt, to_toml

DOVECONF = shutil.which("doveconf") or "/usr/bin/doveconf"
needs_doveconf = pytest.mark.skipif(
    not os.access(DOVECONF, os.X_OK), reason="Debian's dovecot-core (doveconf) is not installed"
)
# An account every Debian machine has, standing in for [server] user in the file tests.
SOME_USER = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() != 0 else "nobody"
SERVER = {"user": SOME_USER, "group": grp.getgrgid(pwd.getpwnam(SOME_USER).pw_gid).gr_name}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A postvakt config whose data_dir exists, listening like a small provider."""
    data = tmp_path / "data"
    data.mkdir()
    cfg = base_config(
        data,
        listen={
            "smtp": ["0.0.0.0:25"],
            "submission": ["0.0.0.0:587", "[::]:587"],
            "submissions": ["0.0.0.0:465"],
            "pop3": ["192.0.2.10:110"],
            "pop3s": ["192.0.2.10:995"],
        },
        server=SERVER,
    )
    path = tmp_path / "postvakt.toml"
    path.write_text(to_toml(cfg))
    return path


def doveconf(conf: Path, *keys: str) -> list[str]:
    out = subprocess.run(
        [DOVECONF, "-c", str(conf), "-h", *keys], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


@needs_doveconf
def test_defaults_listen_where_postvakt_does_and_dovecot_reads_the_file(
    site: Path, tmp_path: Path
) -> None:
    r = postvakt("dovecot", "config", str(tmp_path / "dc"), config=site)
    conf = tmp_path / "dc" / "dovecot.conf"
    assert f"wrote {conf}" in r.stdout and "start: dovecot -c" in r.stdout
    if os.geteuid() == 0:  # data_dir is root's here, not the server user's: the admin is told
        assert f"note: {tmp_path}/data does not belong to {SOME_USER}" in r.stdout
    full = subprocess.run(
        [DOVECONF, "-c", str(conf), "-n"], capture_output=True, text=True, check=True
    )
    assert "Warning" not in full.stderr and "Error" not in full.stderr, full.stderr
    text = full.stdout
    # POP3's addresses first, then the others; 143 and 993 on each.
    assert "address = 192.0.2.10, 0.0.0.0, ::\n    port = 143" in text
    assert "address = 192.0.2.10, 0.0.0.0, ::\n    port = 993\n    ssl = yes" in text
    assert doveconf(conf, "protocols") == ["imap"]
    assert doveconf(conf, "mail_location") == [f"maildir:{tmp_path}/data/mail/%d/%n"]
    assert doveconf(conf, "ssl") == ["required"]
    # postvakt's self-signed certificate, made in data_dir as the server would.
    assert doveconf(conf, "ssl_cert") == [f"<{tmp_path}/data/tls/cert.pem"]
    assert (tmp_path / "data/tls/key.pem").stat().st_mode & 0o777 == 0o600
    assert doveconf(conf, "mail_uid") == [SOME_USER]
    assert doveconf(conf, "auth_cache_size") == ["0"]
    assert "service pop3-login" not in text and "lmtp" not in text
    sql = (tmp_path / "dc" / "dovecot-sql.conf.ext").read_text()
    assert "driver = sqlite\n" in sql
    assert f"connect = {tmp_path}/data/directory.sqlite3\n" in sql
    assert "default_pass_scheme = ARGON2ID" in sql
    assert (tmp_path / "dc" / "dovecot-sql.conf.ext").stat().st_mode & 0o777 == 0o600
    script = tmp_path / "dc" / "postvakt-imap-postlogin"
    assert os.access(script, os.X_OK)
    assert f"SOCKET = '{tmp_path}/data/grants.sock'" in script.read_text()


@needs_doveconf
def test_listeners_as_given_off_and_dovecot_pop3_only_when_asked(
    site: Path, tmp_path: Path
) -> None:
    postvakt(
        "dovecot",
        "config",
        str(tmp_path / "dc"),
        "--imap",
        "off",
        "--imaps",
        "127.0.0.1:1993",
        "--imaps",
        "[::1]:1993",
        "--imaps",
        "127.0.0.1:2993",
        "--pop3s",
        "127.0.0.1",
        config=site,
    )
    conf = tmp_path / "dc" / "dovecot.conf"
    text = subprocess.run(
        [DOVECONF, "-c", str(conf), "-n"], capture_output=True, text=True, check=True
    ).stdout
    assert "inet_listener imap {\n    port = 0\n  }" in text
    assert "address = 127.0.0.1, ::1\n    port = 1993" in text
    assert "inet_listener imaps_2 {\n    address = 127.0.0.1\n    port = 2993" in text
    assert "inet_listener pop3s {\n    address = 127.0.0.1\n    port = 995" in text
    assert doveconf(conf, "protocols") == ["imap pop3"]
    assert doveconf(conf, "pop3_uidl_format") == ["%f"]
    assert (tmp_path / "dc" / "postvakt-pop3-postlogin").exists()
    assert "PROTOCOL = 'pop3'" in (tmp_path / "dc" / "postvakt-pop3-postlogin").read_text()


def test_configured_certificate_is_used_and_must_exist(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(
        to_toml(base_config(data, tls={"cert": str(cert), "key": str(key)}, server=SERVER))
    )
    r = postvakt("dovecot", "config", str(tmp_path / "dc"), config=cfg, check=False)
    assert r.returncode == 1 and f"[tls] cert: {cert}: no such file" in r.stderr
    cert.write_text("x")
    key.write_text("y")
    postvakt("dovecot", "config", str(tmp_path / "dc"), config=cfg)
    conf = (tmp_path / "dc" / "dovecot.conf").read_text()
    assert f"ssl_cert = <{cert}\n" in conf and f"ssl_key = <{key}\n" in conf
    assert not (data / "tls").exists()


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"user": "no-such-user-pv"}, "[server] user 'no-such-user-pv' does not exist"),
        ({"user": "root", "group": "root"}, "Dovecot refuses mail access as root"),
        ({"user": "nobody", "group": "no-such-group-pv"}, "[server] group 'no-such-group-pv'"),
    ],
)
def test_server_user_must_exist_and_not_be_root(
    tmp_path: Path, server: dict[str, str], message: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(to_toml(base_config(data, server=server)))
    r = postvakt("dovecot", "config", str(tmp_path / "dc"), config=cfg, check=False)
    assert r.returncode == 1 and message in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "dc").exists()


def test_refusals_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "postvakt.toml"
    missing.write_text(to_toml(base_config(tmp_path / "nodata", server=SERVER)))
    r = postvakt("dovecot", "config", str(tmp_path / "dc"), config=missing, check=False)
    assert r.returncode == 1 and "does not exist yet" in r.stderr
    r = postvakt(
        "dovecot", "config", str(tmp_path / "dc"), "--imap", "x:y", config=missing, check=False
    )
    assert r.returncode == 2 and "--imap" in r.stderr and "port must be a number" in r.stderr
    r = postvakt(
        "dovecot",
        "config",
        str(tmp_path / "dc"),
        "--imap",
        "off",
        "--imap",
        "127.0.0.1:143",
        config=missing,
        check=False,
    )
    assert r.returncode == 2 and "cannot be combined" in r.stderr
    (tmp_path / "nodata").mkdir()
    r = postvakt(
        "dovecot",
        "config",
        str(tmp_path / "dc"),
        "--imap",
        "off",
        "--imaps",
        "off",
        config=missing,
        check=False,
    )
    assert r.returncode == 1 and "no IMAP listener" in r.stderr


def _setup(tmp_path: Path, **changes: object) -> DovecotSetup:
    config = from_dict({"data_dir": str(tmp_path / "data"), "server": SERVER})
    setup = setup_for(
        config,
        tmp_path / "dc",
        cert=tmp_path / "c.pem",
        key=tmp_path / "k.pem",
        listeners=Listeners(imaps=(HostPort("127.0.0.1", 993),)),
    )
    return replace(setup, **changes)  # type: ignore[arg-type]


def test_paths_dovecot_would_misread_are_refused(tmp_path: Path) -> None:
    for bad in ("/srv/mail dir", "/srv/%d", "/srv/$mail", "/srv/a:b", "/srv/#x"):
        with pytest.raises(DovecotSetupError, match="Dovecot's config cannot hold this path"):
            render_conf(_setup(tmp_path, mail_dir=Path(bad)))


def test_a_grant_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    config = from_dict({"data_dir": "/" + "d" * 110, "server": SERVER})
    with pytest.raises(DovecotSetupError, match="longer than the 107 bytes"):
        setup_for(
            config,
            tmp_path,
            cert=tmp_path / "c",
            key=tmp_path / "k",
            listeners=Listeners(imap=(HostPort("127.0.0.1", 143),)),
        )


# ---------------------------------------------------------------- PostgreSQL, ready for the directory


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        (
            "postgresql://postvakt@127.0.0.1:5432/postvakt",
            "host=127.0.0.1 port=5432 dbname=postvakt user=postvakt",
        ),
        (
            "postgresql://pv:s%20cr%27t@db.example.net/mail?sslmode=require",
            "host=db.example.net dbname=mail user=pv password='s cr\\'t' sslmode=require",
        ),
        ("postgres://[::1]:5433/pv", "host=::1 port=5433 dbname=pv"),
    ],
)
def test_postgresql_url_becomes_the_pgsql_drivers_connect_string(url: str, conninfo: str) -> None:
    assert postgres_conninfo(url) == conninfo


def test_postgresql_directory_writes_the_pgsql_driver(tmp_path: Path) -> None:
    sql = render_sql(_setup(tmp_path, directory=PostgresDirectory("postgresql://u@h/db")))
    assert "driver = pgsql\nconnect = host=h dbname=db user=u\n" in sql
    sqlite = render_sql(_setup(tmp_path, directory=SqliteDirectory(tmp_path / "d.sqlite3")))
    assert f"driver = sqlite\nconnect = {tmp_path}/d.sqlite3\n" in sqlite
    assert sql.split("default_pass_scheme")[1] == sqlite.split("default_pass_scheme")[1]
    with pytest.raises(DovecotSetupError, match="not a postgresql:// URL"):
        postgres_conninfo("mysql://h/db")


# ---------------------------------------------------------------- the post-login script


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A Unix socket path must stay short; pytest's own temporary paths may not."""
    d = Path(tempfile.mkdtemp(prefix="pv-pl-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """As script-login runs it: a clean environment, the rest of the login as arguments."""
    return subprocess.run(
        [str(script), "/bin/echo", "login", "goes", "on"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_post_login_script_reports_then_lets_the_login_go_on(short_dir: Path) -> None:
    setup = _setup(short_dir, grant_socket=short_dir / "grants.sock", out_dir=short_dir / "dc")
    write(setup)
    script = setup.postlogin_script("imap")
    store = MemoryGrantStore()
    config = from_dict({})
    reports = GrantReports(
        config=lambda: config,
        grants=store,
        user_exists=lambda login: login == "alice@pv.test",
        allowed=frozenset({os.geteuid()}),
    )

    async def main() -> tuple[str, str]:
        server = await start_grant_reports(setup.grant_socket, reports, config)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            None, _run_script, script, {"IP": "127.0.0.2", "USER": "alice@pv.test"}
        )
        refused = await loop.run_in_executor(
            None, _run_script, script, {"IP": "127.0.0.3", "USER": "mallory@pv.test"}
        )
        stop_grant_reports(server, setup.grant_socket)
        assert ok.stdout == "login goes on\n" and ok.stderr == "", ok.stderr
        return refused.stdout, refused.stderr

    out, err = asyncio.run(main())
    assert out == "login goes on\n"
    assert "imap login of mallory@pv.test from 127.0.0.3 not reported: NO no such user" in err
    assert [(g.ip, g.protocol, g.login) for g in store.all(0)] == [
        ("127.0.0.2", "imap", "alice@pv.test")
    ]
    # postvakt not running: the login still goes on, and Dovecot's log says why.
    down = _run_script(script, {"IP": "127.0.0.2", "USER": "alice@pv.test"})
    assert down.stdout == "login goes on\n" and "not reported" in down.stderr
    # It ran under the system's Python, which any user may run, not the test's.
    assert script.read_text().startswith(f"#!{setup.python} -IS\n")
