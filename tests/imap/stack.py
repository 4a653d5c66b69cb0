"""postvakt and Debian's Dovecot side by side on loopback, as an admin would run them.

    stack = Stack.create(users={"alice@pv.test": "secret"})
    stack.start_postvakt()          # `postvakt serve` as the server user
    stack.start_dovecot()           # `postvakt dovecot config`, then `dovecot -F -c ...`
    ...
    stack.close()                   # SIGTERM to both, wait, remove the files

Who runs as whom, and why:
- Dovecot's master runs as root (it needs to, to start its processes as
  other users); the config runs its auth worker and mail processes as
  `[server] user`. The test uses the contract's default, `postvakt`, and
  creates that system user when the machine lacks it (as a package would on
  install): running as an existing account such as `nobody` would share the
  Maildirs with every other daemon that runs as `nobody`.
- `postvakt serve` and the user commands run as that same user, as `serve`
  will after dropping privileges: the Maildirs, the user database and the
  grant socket are theirs, with modes no one else can use.
- The Python that runs them must be one that user can execute and import
  postvakt with; when the test's own interpreter lives where that user
  cannot go (a private venv), the system's Python of the same version runs
  this source tree with the test's site-packages on PYTHONPATH.
- Everything lives in one temporary directory anyone may enter (pytest's
  own are private to root), with short paths (a Unix socket path holds at
  most 107 bytes). Dovecot gets its own base_dir, state_dir and log file, so
  nothing of a system-wide Dovecot is touched, and it is stopped at the end.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import postvakt
from support import HOSTNAME, LOCAL_DOMAIN, RawClient, base_config, free_port, to_toml

SERVER_USER = "postvakt"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def dovecot_missing() -> str | None:
    """Why the Dovecot tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "Dovecot's master must run as root to run its processes as the server user"
    if not os.access(DOVECOT, os.X_OK):
        return "Debian's dovecot-core is not installed"
    if not Path("/usr/lib/dovecot/modules/auth/libdriver_sqlite.so").exists():
        return "Debian's dovecot-sqlite is not installed"
    if not os.access("/usr/lib/dovecot/imap-login", os.X_OK):
        return "Debian's dovecot-imapd is not installed"
    return None


def ensure_server_user(name: str = SERVER_USER) -> tuple[int, int]:
    """The user's uid and gid, creating a system user of that name if there is none."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            check=False,  # another test may have created it meanwhile: look again
        )
        pw = pwd.getpwnam(name)
    return pw.pw_uid, grp.getgrnam(name).gr_gid


def _as_user(uid: int, gid: int) -> dict[str, Any]:
    return {"user": uid, "group": gid, "extra_groups": []}


def python_for(uid: int, gid: int, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment that run `python -m postvakt` as uid:gid."""
    src = Path(postvakt.__file__).resolve().parent.parent
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates: list[tuple[list[str], dict[str, str]]] = [([sys.executable], {})]
    system = Path("/usr/bin") / version
    if system.exists():
        candidates.append(([str(system)], {"PYTHONPATH": os.pathsep.join([str(src), *deps])}))
        copy = scratch / "src"
        candidates.append(([str(system)], {"PYTHONPATH": os.pathsep.join([str(copy), *deps])}))
    probe = "import postvakt.cli, argon2, click, cryptography"
    for i, (cmd, env) in enumerate(candidates):
        if i == 2 and not (scratch / "src").exists():
            shutil.copytree(src / "postvakt", scratch / "src" / "postvakt")
        try:
            r = subprocess.run(
                [*cmd, "-c", probe],
                env={**os.environ, **env},
                capture_output=True,
                cwd="/",
                **_as_user(uid, gid),
            )
        except OSError:
            continue  # that user may not execute this interpreter
        if r.returncode == 0:
            return cmd, env
    pytest.skip(f"no Python that user {uid} may run with postvakt and its dependencies")


@dataclass
class Stack:
    root: Path
    uid: int
    gid: int
    python: list[str]
    python_env: dict[str, str]
    config_path: Path
    data_dir: Path
    mail_dir: Path
    serve: subprocess.Popen[bytes] | None = None
    dovecot: subprocess.Popen[bytes] | None = None
    ports: dict[str, list[int]] = field(default_factory=dict)
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    conf_dir: Path | None = None

    # ------------------------------------------------------------ setup

    @classmethod
    def create(cls, users: dict[str, str] | None = None, **sections: dict[str, Any]) -> Stack:
        missing = dovecot_missing()
        if missing:
            pytest.skip(missing)
        uid, gid = ensure_server_user()
        root = Path(tempfile.mkdtemp(prefix="pvdc-"))
        try:
            os.chmod(root, 0o755)
            python, env = python_for(uid, gid, root)
            data_dir, mail_dir = root / "data", root / "mail"
            for d in (data_dir, mail_dir):
                d.mkdir(mode=0o750)
                os.chown(d, uid, gid)
            config_path = root / "postvakt.toml"
            cfg = base_config(data_dir, **sections)
            cfg = {"mail_dir": str(mail_dir), **cfg}  # Maildirs outside data_dir: mail_dir is used
            config_path.write_text(to_toml(cfg))
            stack = cls(root, uid, gid, python, env, config_path, data_dir, mail_dir)
            for address, password in (users or {}).items():
                stack.cli("user", "add", address, "--password-stdin", input=password + "\n")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return stack

    def cli(
        self, *args: str, input: str | None = None, check: bool = True, as_root: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """A `postvakt` command with this stack's config, as the server user (or as root)."""
        cmd = [*self.python, "-m", "postvakt", *args, "--config", str(self.config_path)]
        kwargs = {} if as_root else _as_user(self.uid, self.gid)
        return subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            cwd="/",
            env={**os.environ, **self.python_env},
            **kwargs,
        )

    # ------------------------------------------------------------ postvakt

    def start_postvakt(self) -> None:
        ready = self.data_dir / "listening.json"
        log = open(self.root / "postvakt.log", "ab")  # noqa: SIM115 - handed to the child
        self.serve = subprocess.Popen(
            [*self.python, "-m", "postvakt", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env={**os.environ, **self.python_env, "PYTHONUNBUFFERED": "1"},
            **_as_user(self.uid, self.gid),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.serve.poll() is not None:
                raise RuntimeError(f"postvakt serve exited:\n{self.postvakt_log()}")
            try:
                bound = json.loads(ready.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            self.ports = {k: [int(a.rsplit(":", 1)[1]) for a in v] for k, v in bound.items()}
            return
        raise RuntimeError(f"postvakt serve did not start:\n{self.postvakt_log()}")

    def port(self, kind: str) -> int:
        return self.ports[kind][0]

    def postvakt_log(self) -> str:
        p = self.root / "postvakt.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def deliver(
        self, rcpt: str, marker: str, subject: str = "hello", mailbox: str | None = None
    ) -> Path:
        """Mail for a local address through port 25, waited for in `mailbox` (default: rcpt)."""
        c = RawClient(self.port("smtp"))
        try:
            assert c.reply().startswith("220")
            assert c.cmd("EHLO client.pv.test").startswith("250")
            assert c.cmd("MAIL FROM:<sender@other.example>").startswith("250")
            assert c.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            c.send(
                f"From: <sender@other.example>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{marker}@other.example>\r\n\r\n{marker}\r\n.\r\n"
            )
            assert c.reply().startswith("250")
            c.cmd("QUIT")
        finally:
            c.close()
        return self.wait_in_maildir(mailbox or rcpt, marker)

    def maildir(self, address: str) -> Path:
        local, _, domain = address.lower().rpartition("@")
        return self.mail_dir / domain / local

    def maildir_files(self, address: str) -> list[Path]:
        root = self.maildir(address)
        return [
            p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()
        ]

    def wait_in_maildir(self, address: str, marker: str, timeout: float = 30.0) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.maildir_files(address):
                try:
                    if marker.encode() in p.read_bytes():
                        return p
                except FileNotFoundError:
                    continue
            time.sleep(0.05)
        raise AssertionError(f"{marker} never reached {address}:\n{self.postvakt_log()}")

    # ------------------------------------------------------------ dovecot

    def start_dovecot(self, *extra: str) -> None:
        self.write_dovecot_config(*extra)
        self.run_dovecot()

    def write_dovecot_config(self, *extra: str) -> None:
        """The real command, as root (as an admin would), on ports of this test's own."""
        self.conf_dir = self.root / "dovecot"
        self.imap_port, self.imaps_port = free_port(), free_port()
        args = [
            "dovecot",
            "config",
            str(self.conf_dir),
            "--imap",
            f"127.0.0.1:{self.imap_port}",
            "--imaps",
            f"127.0.0.1:{self.imaps_port}",
            "--base-dir",
            str(self.root / "run"),
            *extra,
        ]
        if "--pop3" in extra:
            self.pop3_port = int(extra[extra.index("--pop3") + 1].rsplit(":", 1)[1])
        self.cli(*args, as_root=True)
        state = self.root / "dovecot-state"
        state.mkdir(exist_ok=True)
        # The machine's own settings, not postvakt's: where this test's Dovecot logs and keeps state.
        (self.conf_dir / "local.conf").write_text(
            f"log_path = {self.root / 'dovecot.log'}\nstate_dir = {state}\n"
        )

    def run_dovecot(self) -> None:
        assert self.conf_dir is not None
        self.dovecot = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf_dir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "dovecot.stderr", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.dovecot.poll() is not None:
                raise RuntimeError(f"dovecot exited:\n{self.dovecot_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.imaps_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start:\n{self.dovecot_log()}")

    def dovecot_log(self) -> str:
        out = []
        for name in ("dovecot.log", "dovecot.stderr"):
            p = self.root / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        for proc in (self.dovecot, self.serve):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.dovecot, self.serve):
            if proc is None:
                continue
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def tls_context() -> ssl.SSLContext:
    """Clients trust the self-signed certificate postvakt made (and Dovecot shows)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


__all__ = ["HOSTNAME", "LOCAL_DOMAIN", "Stack", "dovecot_missing", "tls_context"]
