"""Dovecot beside postvakt: IMAP on the same users, Maildirs, certificate and grants.

`postvakt dovecot config DIR` writes, from postvakt's config (docs/imap.md):
- DIR/dovecot.conf: a complete Dovecot 2.3 configuration that
  `dovecot -c DIR/dovecot.conf` starts as it is;
- DIR/dovecot-sql.conf.ext: Dovecot's passdb/userdb queries on postvakt's user
  directory (SQLite, or PostgreSQL when the directory lives there);
- DIR/postvakt-imap-postlogin (and -pop3- when Dovecot serves POP3 too): the
  post-login script that reports each login to postvakt's grant socket, so
  an IMAP login opens POP-before-SMTP (`postvakt.server.grantreport`).

Rules of the house:
- One owner per thing. postvakt owns SMTP, delivery (it writes `tmp/` and
  `new/`), POP3 (it moves `new/` to `cur/` and deletes files), the users and
  passwords. Dovecot owns IMAP, its index files and `dovecot-*` files, the
  folders (`.Sent/` ...) and flags (the info part after `:2,`). Neither
  renames the part of a file name before `:`, which is postvakt's UIDL.
- Dovecot reads postvakt's data as postvakt's user: the auth worker (user
  database) and the mail processes (Maildirs) run as `[server] user`, so the
  files keep modes only that user can use.
- Nothing here starts or stops Dovecot; the admin (or a test) does.
- The generated files say what each setting is for; a setting the admin
  wants changed goes into DIR/local.conf, which the config reads last and
  regenerating leaves alone.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from postvakt.config import Config, HostPort
from postvakt.grants.report import socket_path, socket_path_problem
from postvakt.policy import GrantProtocol

# What Dovecot 2.3 listens for: IMAP with STARTTLS and implicit TLS; POP3
# only when asked (postvakt serves POP3 itself).
ListenerKind = Literal["imap", "imaps", "pop3", "pop3s"]
# The well-known ports (RFC 9051 §2.1 / RFC 8314 §7.3 for 143/993; RFC 1939, 8314 for 110/995).
DEFAULT_PORTS: dict[ListenerKind, int] = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
# Where Dovecot keeps its sockets and pids unless told otherwise (Debian's default too).
DEFAULT_BASE_DIR = Path("/run/dovecot")
CONF_NAME = "dovecot.conf"
SQL_NAME = "dovecot-sql.conf.ext"
LOCAL_NAME = "local.conf"
# The query Dovecot asks the directory: the stored (canonical) address is the
# user name Dovecot goes on with; the password is the Argon2id PHC string as
# postvakt stored it, which Dovecot's ARGON2ID scheme verifies.
PASSWORD_QUERY = "SELECT address AS user, password_hash AS password FROM users WHERE address = '%u'"
USER_QUERY = "SELECT address AS user FROM users WHERE address = '%u'"
ITERATE_QUERY = "SELECT address AS user FROM users"
# Characters a path may hold in Dovecot's config: its syntax gives meaning to
# '%' (variables), '$' (other settings), '<' (read a file), quotes, '#' and
# whitespace; a path with those is refused rather than written wrongly.
# ':' separates mail_location's options.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+,=@~-]+$")
# The script needs only the standard library: the system's Python, which every
# user may run, before the one running postvakt (maybe in a private venv).
SYSTEM_PYTHONS = (Path("/usr/bin/python3"), Path("/usr/local/bin/python3"))


class DovecotSetupError(Exception):
    """Something the Dovecot config cannot be written with; the message is for the admin."""


@dataclass(frozen=True)
class SqliteDirectory:
    path: Path


@dataclass(frozen=True)
class PostgresDirectory:
    url: str


DirectorySource = SqliteDirectory | PostgresDirectory


def directory_source(config: Config) -> DirectorySource:
    """Where Dovecot finds postvakt's users: `[store] directory`."""
    if config.store.directory_kind == "postgresql":
        return PostgresDirectory(config.store.directory)
    return SqliteDirectory(config.data_dir / "directory.sqlite3")


@dataclass(frozen=True)
class Listeners:
    imap: tuple[HostPort, ...] = ()
    imaps: tuple[HostPort, ...] = ()
    pop3: tuple[HostPort, ...] = ()
    pop3s: tuple[HostPort, ...] = ()

    def of(self, kind: ListenerKind) -> tuple[HostPort, ...]:
        return {"imap": self.imap, "imaps": self.imaps, "pop3": self.pop3, "pop3s": self.pop3s}[
            kind
        ]

    @property
    def pop3_wanted(self) -> bool:
        return bool(self.pop3 or self.pop3s)


@dataclass(frozen=True)
class DovecotSetup:
    """Everything the generated files depend on, resolved on this machine."""

    out_dir: Path
    source: str
    mail_dir: Path
    directory: DirectorySource
    user: str
    group: str
    uid: int
    gid: int
    cert: Path
    key: Path
    grant_socket: Path
    listeners: Listeners
    base_dir: Path
    python: Path

    def postlogin_script(self, protocol: GrantProtocol) -> Path:
        return self.out_dir / f"postvakt-{protocol}-postlogin"

    @property
    def protocols(self) -> tuple[GrantProtocol, ...]:
        return ("imap", "pop3") if self.listeners.pop3_wanted else ("imap",)


def script_python() -> Path:
    for p in SYSTEM_PYTHONS:
        if os.access(p, os.X_OK):
            return p
    return Path(os.path.realpath(sys.executable))


def setup_for(
    config: Config,
    out_dir: Path,
    *,
    cert: Path,
    key: Path,
    listeners: Listeners,
    base_dir: Path = DEFAULT_BASE_DIR,
) -> DovecotSetup:
    """Resolve the config against this machine: users, the socket, the interpreter."""
    user, group = config.server.user, config.server.group
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise DovecotSetupError(
            f"[server] user {user!r} does not exist on this machine; create it first "
            f"(e.g. useradd --system --user-group --home-dir /nonexistent "
            f"--shell /usr/sbin/nologin {user}) or name another in [server] user"
        ) from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise DovecotSetupError(
            f"[server] group {group!r} does not exist on this machine"
        ) from None
    if uid == 0:
        raise DovecotSetupError(
            "[server] user is root: Dovecot refuses mail access as root; name an unprivileged user"
        )
    grant_socket = socket_path(config)
    problem = socket_path_problem(grant_socket)
    if problem is not None:
        raise DovecotSetupError(f"data_dir: {problem}")
    return DovecotSetup(
        out_dir=out_dir.absolute(),
        source=config.source,
        mail_dir=config.mail_root,
        directory=directory_source(config),
        user=user,
        group=group,
        uid=uid,
        gid=gid,
        cert=cert,
        key=key,
        grant_socket=grant_socket,
        listeners=listeners,
        base_dir=base_dir,
        python=script_python(),
    )


def listen_hosts(config: Config) -> tuple[str, ...]:
    """The addresses postvakt listens on, POP3's first (IMAP takes its place for users)."""
    hosts: list[str] = []
    listen = config.listen
    for group in (listen.pop3s, listen.pop3, listen.submission, listen.submissions, listen.smtp):
        for hp in group:
            if hp.host not in hosts:
                hosts.append(hp.host)
    return tuple(hosts)


def default_listeners(config: Config, kind: ListenerKind) -> tuple[HostPort, ...]:
    return tuple(HostPort(h, DEFAULT_PORTS[kind]) for h in listen_hosts(config))


def postgres_conninfo(url: str) -> str:
    """A postgresql:// URL as the libpq key=value string Dovecot's pgsql driver takes."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DovecotSetupError(f"{url!r} is not a postgresql:// URL")
    try:
        port = parts.port
    except ValueError:
        raise DovecotSetupError(f"{url!r}: the port is not a number") from None
    fields: list[tuple[str, str]] = []
    if parts.hostname:
        fields.append(("host", parts.hostname))
    if port is not None:
        fields.append(("port", str(port)))
    dbname = unquote(parts.path.lstrip("/"))
    if dbname:
        fields.append(("dbname", dbname))
    if parts.username:
        fields.append(("user", unquote(parts.username)))
    if parts.password:
        fields.append(("password", unquote(parts.password)))
    fields.extend(parse_qsl(parts.query))
    return " ".join(f"{k}={_libpq_value(v)}" for k, v in fields)


def _libpq_value(value: str) -> str:
    """libpq conninfo quoting: single quotes when needed, with \\ and ' escaped."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _path(p: Path, what: str) -> str:
    text = str(p)
    if not _SAFE_PATH.match(text):
        raise DovecotSetupError(
            f"{what} {text!r}: Dovecot's config cannot hold this path "
            "(use one without spaces, quotes, '%', '$', '<', '#')"
        )
    return text


def _addresses(hps: tuple[HostPort, ...]) -> list[tuple[str, int]]:
    """(address list, port) per distinct port: one Dovecot listener block each."""
    by_port: dict[int, list[str]] = {}
    for hp in hps:
        hosts = by_port.setdefault(hp.port, [])
        if hp.host not in hosts:
            hosts.append(hp.host)
    return [(", ".join(hosts), port) for port, hosts in by_port.items()]


def _login_service(setup: DovecotSetup, plain: ListenerKind, tls: ListenerKind) -> list[str]:
    lines = [f"service {plain}-login {{"]
    for kind, ssl in ((plain, False), (tls, True)):
        blocks = _addresses(setup.listeners.of(kind))
        if not blocks:
            # A listener Dovecot defines by itself is switched off by port 0.
            lines += [f"  inet_listener {kind} {{", "    port = 0", "  }"]
        for i, (addresses, port) in enumerate(blocks):
            name = kind if i == 0 else f"{kind}_{i + 1}"
            lines += [
                f"  inet_listener {name} {{",
                f"    address = {addresses}",
                f"    port = {port}",
            ]
            if ssl:
                lines.append("    ssl = yes")
            lines.append("  }")
    lines.append("}")
    return lines


def _postlogin_service(setup: DovecotSetup, protocol: GrantProtocol) -> list[str]:
    script = _path(setup.postlogin_script(protocol), "post-login script")
    return [
        f"service {protocol} {{",
        f"  executable = {protocol} {protocol}-postlogin",
        "}",
        f"service {protocol}-postlogin {{",
        f"  executable = script-login {script}",
        f"  user = {setup.user}",
        f"  unix_listener {protocol}-postlogin {{",
        "  }",
        "}",
    ]


def render_conf(setup: DovecotSetup) -> str:
    conf = _path(setup.out_dir / CONF_NAME, "config directory")
    sql = _path(setup.out_dir / SQL_NAME, "config directory")
    mail = _path(setup.mail_dir, "mail_dir").replace("%", "%%")
    protocols = " ".join(setup.protocols)
    lines = [
        f"# Dovecot 2.3 configuration written by `postvakt dovecot config` from {setup.source}.",
        "# Dovecot serves IMAP from postvakt's Maildirs to postvakt's users; postvakt",
        "# keeps SMTP, delivery and POP3. Write this file again after changing",
        f"# postvakt's config; put settings of your own into {LOCAL_NAME} next to it.",
        f"#   start: dovecot -c {conf}",
        f"#   check: doveconf -c {conf} -n",
        "",
        "# IMAP only: postvakt delivers (no LDA, no LMTP) and serves POP3 itself.",
        f"protocols = {protocols}",
        f"base_dir = {_path(setup.base_dir, 'base_dir')}/",
        "",
        "# Dovecot's own users run its login and internal processes; the auth worker",
        "# (it opens the user database) and the mail processes (they read and write",
        "# the Maildirs) run as postvakt's user, so those files stay private to it.",
        "default_internal_user = dovecot",
        "default_login_user = dovenull",
        f"mail_uid = {setup.user}",
        f"mail_gid = {setup.group}",
        f"first_valid_uid = {setup.uid}",
        f"last_valid_uid = {setup.uid}",
        f"first_valid_gid = {setup.gid}",
        f"last_valid_gid = {setup.gid}",
        "",
        "# postvakt's Maildirs: <mail_dir>/<domain>/<local part>, the inbox at the top,",
        "# folders as .Name/ beside it (Maildir++). Dovecot keeps its index files there;",
        "# postvakt reads only new/ and cur/ of the inbox.",
        f"mail_location = maildir:{mail}/%d/%n",
        "namespace inbox {",
        "  inbox = yes",
    ]
    for name in ("Drafts", "Sent", "Junk", "Trash"):
        lines += [
            f"  mailbox {name} {{",
            f"    special_use = \\{name}",
            "    auto = subscribe",
            "  }",
        ]
    lines += [
        "}",
        "",
        "# postvakt's certificate; no password ever crosses the network in clear.",
        "ssl = required",
        f"ssl_cert = <{_path(setup.cert, 'certificate')}",
        f"ssl_key = <{_path(setup.key, 'key')}",
        "ssl_min_protocol = TLSv1.2",
        "",
        "# postvakt's users and passwords: the stored Argon2id hashes as they are.",
        "# Login names as postvakt reads them (case does not matter); an alias is",
        "# no login here either: its mail is already in its target's Maildir.",
        "auth_mechanisms = plain login",
        "auth_username_format = %Lu",
        "auth_username_chars =",
        "# No cache: a password changed with `postvakt user passwd` counts at once.",
        "auth_cache_size = 0",
        "passdb {",
        "  driver = sql",
        f"  args = {sql}",
        "}",
        "userdb {",
        "  driver = sql",
        f"  args = {sql}",
        "}",
        "service auth-worker {",
        f"  user = {setup.user}",
        "}",
        "",
        "# Listeners (port 0: off).",
        *_login_service(setup, "imap", "imaps"),
        *(_login_service(setup, "pop3", "pop3s") if setup.listeners.pop3_wanted else []),
        "",
        "# Each login is reported to postvakt, whose POP-before-SMTP then lets the",
        "# client's address relay (`postvakt grants list` shows it).",
    ]
    for protocol in setup.protocols:
        lines += _postlogin_service(setup, protocol)
    if setup.listeners.pop3_wanted:
        lines += [
            "",
            "# Dovecot's POP3 UIDL is the Maildir file name before ':', as postvakt's is,",
            "# so clients see the same UIDLs from either server.",
            "pop3_uidl_format = %f",
        ]
    lines += ["", f"!include_try {LOCAL_NAME}", ""]
    return "\n".join(lines)


def render_sql(setup: DovecotSetup) -> str:
    src = setup.directory
    if isinstance(src, SqliteDirectory):
        driver, connect = "sqlite", _path(src.path, "user directory")
    else:
        driver, connect = "pgsql", postgres_conninfo(src.url)
    return "\n".join(
        [
            "# Dovecot's view of postvakt's user directory; written by `postvakt dovecot config`.",
            f"driver = {driver}",
            f"connect = {connect}",
            "default_pass_scheme = ARGON2ID",
            f"password_query = {PASSWORD_QUERY}",
            f"user_query = {USER_QUERY}",
            f"iterate_query = {ITERATE_QUERY}",
            "",
        ]
    )


def render_postlogin(setup: DovecotSetup, protocol: GrantProtocol) -> str:
    """The post-login script with this setup's interpreter, socket and protocol filled in."""
    template = resources.files(__package__).joinpath("postlogin.py").read_text(encoding="utf-8")
    out: list[str] = []
    for line in template.splitlines():
        if line.startswith("#!"):
            line = f"#!{setup.python} -IS"
        elif line.startswith("SOCKET = "):
            line = f"SOCKET = {str(setup.grant_socket)!r}"
        elif line.startswith("PROTOCOL = "):
            line = f"PROTOCOL = {protocol!r}"
        out.append(line)
    return "\n".join(out) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is cut by the umask
    os.replace(tmp, path)


# The SQL file may hold a PostgreSQL password: only root (Dovecot's master reads it) and the owner.
SQL_MODE = 0o600
CONF_MODE = 0o644
SCRIPT_MODE = 0o755


def write(setup: DovecotSetup) -> list[Path]:
    """Write every file; returns their paths. Raises DovecotSetupError or OSError."""
    texts: list[tuple[Path, str, int]] = [
        (setup.out_dir / CONF_NAME, render_conf(setup), CONF_MODE),
        (setup.out_dir / SQL_NAME, render_sql(setup), SQL_MODE),
    ]
    for protocol in setup.protocols:
        texts.append(
            (setup.postlogin_script(protocol), render_postlogin(setup, protocol), SCRIPT_MODE)
        )
    if not setup.out_dir.is_dir():
        setup.out_dir.mkdir(parents=True)
        # Dovecot's processes (the post-login script, as [server] user) must enter it,
        # whatever the umask (027 in every postvakt command).
        os.chmod(setup.out_dir, 0o755)
    for path, text, mode in texts:
        _write(path, text, mode)
    return [p for p, _, _ in texts]
