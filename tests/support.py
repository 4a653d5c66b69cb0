"""Helpers for end-to-end tests: write a config, start the real `postvakt serve`
in a subprocess on loopback ports chosen by the kernel, and talk to it.

    srv = start_server(tmp_path, users={"alice@pv.test": "secret"})
    srv.port("submission")   # the bound port
    srv.stop()               # SIGTERM, wait

Port 0 in the config means "any free port"; the server writes what it bound to
data_dir/listening.json once every listener is up, which is how we know it is ready.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_DOMAIN = "pv.test"
HOSTNAME = "mx.pv.test"
# The outside client of the relay tests: loopback, but not in `networks`.
OUTSIDE_IP = "127.0.0.2"
OTHER_OUTSIDE_IP = "127.0.0.3"
START_TIMEOUT = 20.0


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
        for k, v in data.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def base_config(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A test config: only 127.0.0.1 is our network, so 127.0.0.2 is outside."""
    cfg: dict[str, Any] = {
        "hostname": HOSTNAME,
        "data_dir": str(data_dir),
        "listen": {
            "smtp": ["127.0.0.1:0"],
            "submission": ["127.0.0.1:0"],
            "submissions": ["127.0.0.1:0"],
            "pop3": ["127.0.0.1:0"],
            "pop3s": ["127.0.0.1:0"],
        },
        "domains": {"local": [LOCAL_DOMAIN]},
        "relay": {"networks": ["127.0.0.1/32"]},
        "smtp": {"error_sleep": 0},
        "delivery": {"retry_initial": "1s", "retry_max": "2s"},
        # Tests run as root in CI; the privilege drop has tests of its own (tests/ops).
        "server": {"drop_privileges": False},
    }
    for name, values in sections.items():
        if values is None:
            cfg.pop(name, None)
        else:
            cfg.setdefault(name, {}).update(values)
    return cfg


def postvakt(
    *args: str, config: Path | None = None, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "postvakt", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, check=check)


@dataclass
class Running:
    config_path: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ports: dict[str, list[int]] = field(default_factory=dict)
    # RLIMIT_NOFILE (soft and hard) for the server process; None: inherited.
    nofile: int | None = None
    # What each listener bound, as "host:port" / "[v6]:port".
    addresses: dict[str, list[str]] = field(default_factory=dict)

    def port(self, kind: str = "smtp") -> int:
        return self.ports[kind][0]

    def port_on(self, kind: str, host: str) -> int:
        """The port of the `kind` listener bound to `host` ("127.0.0.1", "::1")."""
        want = f"[{host}]" if ":" in host else host
        for address in self.addresses[kind]:
            h, _, port = address.rpartition(":")
            if h == want:
                return int(port)
        raise KeyError(f"no {kind} listener on {host}: {self.addresses[kind]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def add_user(self, address: str, password: str) -> None:
        postvakt(
            "user",
            "add",
            address,
            "--password-stdin",
            config=self.config_path,
            input=password + "\n",
        )

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return postvakt(*args, config=self.config_path, input=input, check=check)

    def start(self) -> Running:
        ready = self.data_dir / "listening.json"
        ready.unlink(missing_ok=True)
        self.log_path = self.data_dir.parent / "server.log"
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postvakt", "serve", "--config", str(self.config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if self.nofile is None else self._limit_descriptors,
        )
        logf.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postvakt serve exited with {self.proc.returncode}:\n{self.log()}"
                )
            if ready.exists():
                try:
                    bound = json.loads(ready.read_text())
                except ValueError:
                    time.sleep(0.05)
                    continue
                self.ports = {k: [int(a.rsplit(":", 1)[1]) for a in v] for k, v in bound.items()}
                self.addresses = bound
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"postvakt serve did not start in {START_TIMEOUT} s:\n{self.log()}")

    def _limit_descriptors(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> Running:
        self.stop()
        return self.start()


def write_server_config(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Path, Path]:
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir, **sections)))
    return cfg_path, data_dir


def start_server(
    tmp_path: Path, users: dict[str, str] | None = None, **sections: dict[str, Any]
) -> Running:
    cfg_path, data_dir = write_server_config(tmp_path, **sections)
    srv = Running(cfg_path, data_dir)
    for address, password in (users or {}).items():
        srv.add_user(address, password)
    return srv.start()


def connect_from(
    source_ip: str, port: int, host: str = "127.0.0.1", timeout: float = 10.0
) -> socket.socket:
    """A raw client socket bound to `source_ip` (127.0.0.2 looks like an outside client)."""
    s = socket.create_connection((host, port), timeout=timeout, source_address=(source_ip, 0))
    return s


class RawClient:
    """Line-oriented raw SMTP/POP3 client for byte-exact tests."""

    def __init__(
        self, port: int, source_ip: str = "127.0.0.1", timeout: float = 10.0, host: str = ""
    ) -> None:
        # The server's address: 127.0.0.1, or ::1 for a client on ::1.
        host = host or ("::1" if ":" in source_ip else "127.0.0.1")
        self.sock = connect_from(source_ip, port, host=host, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def reply(self) -> str:
        """One whole SMTP reply (multi-line joined by newlines)."""
        lines = [self.line()]
        while len(lines[-1]) >= 4 and lines[-1][3] == "-":
            lines.append(self.line())
        return "\n".join(lines)

    def cmd(self, text: str) -> str:
        self.send(text + "\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """Postfix's smtp-sink as a remote MX on loopback; every message dumped to a file.

    `extra` passes smtp-sink options (see `man smtp-sink`), e.g. ["-B", "550 5.1.1 no", "-r", "rcpt"]
    to make RCPT fail hard.
    """

    BINARY = "/usr/sbin/smtp-sink"

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT" or "[::1]:PORT", as smtp-sink and routes write it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __init__(
        self,
        tmp_path: Path,
        extra: list[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        # smtp-sink drops root and runs as nobody, who cannot enter pytest's
        # private temporary directories: dump into a world-writable one of its own.
        self.dir = Path(tempfile.mkdtemp(prefix="postvakt-sink-"))
        os.chmod(self.dir, 0o777)
        self.host = host  # "::1": an IPv6 peer
        self.port = port or free_port(host)
        args = [self.BINARY]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [*(extra or []), "-d", f"{self.dir}/%Y%m%d%H%M%S.", self.address, "100"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"smtp-sink failed: {err!r}") from None
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def messages(self) -> list[str]:
        return [p.read_text(errors="replace") for p in sorted(self.dir.iterdir()) if p.is_file()]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages()
            if len(msgs) >= count:
                time.sleep(0.1)  # let the dump finish writing
                return self.messages()
            time.sleep(0.1)
        return self.messages()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def maildir_messages(data_dir: Path, mailbox: str) -> list[bytes]:
    local, _, domain = mailbox.lower().rpartition("@")
    root = data_dir / "mail" / domain / local
    out = []
    for sub in ("new", "cur"):
        d = root / sub
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.iterdir())]
    return out


def wait_maildir(
    data_dir: Path, mailbox: str, count: int = 1, timeout: float = 20.0, containing: bytes = b""
) -> list[bytes]:
    """The mailbox's messages once there are `count` of them (counting only
    those containing `containing`, when given: other tests share the mailbox)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = [m for m in maildir_messages(data_dir, mailbox) if containing in m]
        if len(msgs) >= count:
            return msgs
        time.sleep(0.1)
    return [m for m in maildir_messages(data_dir, mailbox) if containing in m]


def clock_inside_one_hour() -> str:
    """A POSTVAKT_CLOCK_OFFSET that puts the limit clock of the server (and of
    `postvakt limits`) 5 minutes past the next full hour: a test of an hourly
    limit then has 55 minutes before its counters could reset at HH:00."""
    return str(3600 - time.time() % 3600 + 300)


def eventually(check: Callable[[], None], timeout: float = 5.0) -> None:
    """Retry `check` until it stops failing or time runs out: for state that a
    server records after its reply (counters, views the CLI reads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, IndexError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def rcpt_on(c: RawClient, sender: str, rcpt: str, helo: str = "client.example") -> str:
    """Greeting, EHLO and MAIL on an open raw SMTP client, then the reply to RCPT (QUIT
    sent, the client closed): whether this connection's client may send to `rcpt`."""
    try:
        assert c.reply().startswith("220 ")
        assert c.cmd(f"EHLO {helo}").startswith("250")
        assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250")
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        c.cmd("QUIT")
        return reply
    finally:
        c.close()


def pop3_pass_on(c: RawClient, user: str, password: str) -> str:
    """USER and PASS on an open raw POP3 client: the reply to PASS (QUIT sent, closed)."""
    try:
        assert c.line().startswith("+OK")
        assert c.cmd(f"USER {user}").startswith("+OK")
        reply = c.cmd(f"PASS {password}")
        c.cmd("QUIT")
        return reply
    finally:
        c.close()
