"""`postvakt check`: what would go wrong on this machine before it goes wrong.

Like `postfix check`, run before a start or a reload: the files the server
keeps (present, owned by the user it runs as, closed to others), the TLS
certificate (readable, not expired, covering the names mail programs use),
each listener's address (free, or held by this server already), and where
postmaster's mail ends up. Each finding is one line that names the file or
key and the fix; an error means the server would fail or be unsafe, a
warning means it would run but something is off.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from postvakt.config import Config, ConfigError, HostPort
from postvakt.directory import Directory
from postvakt.permissions import loose_modes
from postvakt.server.privileges import ServerIdentity, owned_paths, server_identity
from postvakt.server.tls import certificate_names, covers, self_signed_paths

Severity = Literal["error", "warning"]
# A certificate closer than this to its end is worth a warning (Let's Encrypt renews at 30 days).
EXPIRY_WARNING = datetime.timedelta(days=14)
LISTENER_KINDS = ("smtp", "submission", "submissions", "pop3", "pop3s")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.where}: {self.problem} (fix: {self.fix})"


def _runs_as(config: Config) -> tuple[int, int, str]:
    """uid, gid and name the server will run as, as far as this machine says."""
    if os.geteuid() == 0 and config.server.drop_privileges:
        ident: ServerIdentity = server_identity(config)  # ConfigError when missing
        return ident.uid, ident.gid, f"{ident.user}:{ident.group}"
    if config.server.drop_privileges:
        try:
            pw = pwd.getpwnam(config.server.user)
            return pw.pw_uid, pw.pw_gid, f"{config.server.user}:{config.server.group}"
        except KeyError:
            pass
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return uid, gid, name


def check_files(config: Config) -> list[Finding]:
    out: list[Finding] = []
    for name, d in (("data_dir", config.data_dir), ("queue_dir", config.queue_root)):
        if not d.is_dir():
            if name == "queue_dir" and not config.data_dir.is_dir():
                continue  # the data_dir finding says it
            out.append(
                Finding(
                    "error" if name == "data_dir" else "warning",
                    str(d),
                    f"{name} does not exist",
                    f"postvakt init --system, or mkdir -m 750 {d}"
                    f" && chown {config.server.user}:{config.server.group} {d}",
                )
            )
    for f in loose_modes(config):
        out.append(
            Finding(
                "error",
                str(f.path),
                f"mode {stat.S_IMODE(f.mode):04o} lets every local user in",
                f"chmod {stat.S_IMODE(f.mode) & ~0o007 & f.want:o} {f.path}",
            )
        )
    try:
        uid, gid, who = _runs_as(config)
    except ConfigError as e:
        out.append(Finding("error", e.key, e.reason, "create the user, or name another"))
        return out
    wrong = [p for p in owned_paths(config) if _owner(p) not in (None, (uid, gid))]
    for top in _tops(wrong):
        out.append(
            Finding(
                "error",
                str(top),
                f"not owned by {who}, whom the server runs as",
                f"chown -R {who} {top}" if ":" in who else f"chown -R {uid}:{gid} {top}",
            )
        )
    key = config.tls.key
    if key is not None and key.exists() and not _readable_by(key, uid, gid):
        out.append(
            Finding(
                "error",
                str(key),
                f"the TLS key is not readable by {who}: the server cannot load it or reload it",
                f"chgrp {gid} {key} && chmod 640 {key}",
            )
        )
    return out


def _owner(p: Path) -> tuple[int, int] | None:
    try:
        st = p.lstat()
    except OSError:
        return None
    return st.st_uid, st.st_gid


def _tops(paths: list[Path]) -> list[Path]:
    """The outermost of these paths: one finding per tree, not one per file."""
    chosen: list[Path] = []
    for p in sorted(paths, key=lambda q: len(q.parts)):
        if not any(c == p or c in p.parents for c in chosen):
            chosen.append(p)
    return chosen


def _readable_by(p: Path, uid: int, gid: int) -> bool:
    st = p.stat()
    if uid == 0 or st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def check_certificate(config: Config, now: datetime.datetime | None = None) -> list[Finding]:
    now = now or datetime.datetime.now(datetime.UTC)
    if config.tls.cert is not None:
        cert, where = config.tls.cert, "[tls] cert"
    else:
        cert, _ = self_signed_paths(config)
        where = "self-signed certificate"
        if not cert.exists():
            return []  # made at the first start
    # Here, not at the top: `postvakt serve` imports this module with the
    # command line, and the server never loads `cryptography` (server/tls.py).
    from cryptography import x509

    try:
        pem = cert.read_bytes()
        parsed = x509.load_pem_x509_certificate(pem)
    except OSError as e:
        return [Finding("error", str(cert), f"{where}: cannot read: {e.strerror}", "fix the path")]
    except ValueError:
        return [Finding("error", str(cert), f"{where}: not a PEM certificate", "fix the path")]
    out: list[Finding] = []
    end = parsed.not_valid_after_utc
    renew = (
        "renew it, then systemctl reload postvakt"
        if config.tls.cert is not None
        else f"remove {cert} and restart: a new one is made"
    )
    if end <= now:
        out.append(Finding("error", str(cert), f"certificate expired on {end:%Y-%m-%d}", renew))
    elif end - now < EXPIRY_WARNING:
        out.append(Finding("warning", str(cert), f"certificate expires on {end:%Y-%m-%d}", renew))
    names = certificate_names(pem)
    for host in dict.fromkeys((config.hostname, *config.tls.names)):
        if not covers(names, host):
            out.append(
                Finding(
                    "warning",
                    str(cert),
                    f"does not cover {host} (it covers {', '.join(names) or 'no names'}):"
                    " mail programs connecting by that name will refuse it",
                    "a certificate for that name, or remove it from [tls] names",
                )
            )
    return out


def _ours(config: Config) -> set[str]:
    """The addresses a running server of this config says it holds."""
    try:
        bound = json.loads((config.data_dir / "listening.json").read_text())
    except (OSError, ValueError):
        return set()
    return {a for addrs in bound.values() if isinstance(addrs, list) for a in addrs}


def check_listeners(config: Config) -> list[Finding]:
    out: list[Finding] = []
    ours = _ours(config)
    wanted = [(kind, hp) for kind in LISTENER_KINDS for hp in getattr(config.listen, kind)]
    wanted += [("web", hp) for hp in config.web.listen]
    for kind, hp in wanted:
        if hp.port == 0:
            continue
        problem = _try_bind(hp)
        where = f"[listen] {kind}" if kind != "web" else "[web] listen"
        if problem is None:
            continue
        if problem == errno.EADDRINUSE:
            if str(hp) in ours:
                continue  # this server holds it
            out.append(
                Finding(
                    "error",
                    where,
                    f"{hp} is in use by another program",
                    f"stop it (ss -ltnp 'sport = :{hp.port}' names it), or listen elsewhere",
                )
            )
        elif problem == errno.EACCES:
            out.append(
                Finding(
                    "warning",
                    where,
                    f"{hp}: this user may not bind ports below 1024",
                    "start as root (the server drops to [server] user) or with"
                    " CAP_NET_BIND_SERVICE (contrib/systemd/postvakt.service)",
                )
            )
        elif problem == errno.EADDRNOTAVAIL:
            out.append(Finding("error", where, f"{hp}: this machine has no such address", "fix"))
        else:
            out.append(Finding("error", where, f"{hp}: {os.strerror(problem)}", "fix the address"))
    return out


def _try_bind(hp: HostPort) -> int | None:
    try:
        infos = socket.getaddrinfo(hp.host, hp.port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return errno.EADDRNOTAVAIL
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.errno
    return None


def check_postmaster(config: Config) -> list[Finding]:
    db = config.data_dir / "directory.sqlite3"
    pm = config.postmaster_address
    if not db.exists():
        return [
            Finding(
                "warning",
                str(db),
                f"no user database yet: mail to {pm} is kept but nobody can read it",
                f"postvakt user add {pm}",
            )
        ]
    directory = Directory.for_config(config)
    try:
        targets = directory.resolve(pm)
        readable = [
            t
            for t in targets
            if directory.user_exists(t) or not config.is_local_domain(t.rpartition("@")[2])
        ]
    finally:
        directory.close()
    if readable:
        return []
    return [
        Finding(
            "warning",
            "postmaster",
            f"mail to {pm} reaches no user's mailbox (kept, but nobody can read it)",
            f"postvakt user add {pm}, or set postmaster to an existing user",
        )
    ]


def run_checks(config: Config) -> list[Finding]:
    return [
        *check_files(config),
        *check_certificate(config),
        *check_listeners(config),
        *check_postmaster(config),
    ]
