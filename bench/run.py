#!/usr/bin/env python3
"""postvakt side by side with Postfix, in one run on one machine.

    python3 bench/run.py            # default run, about 2 minutes on 2 cores
    python3 bench/run.py --quick    # smaller counts, under 45 seconds

What is measured (see bench/README.md for the meaning of every number):

1. durable accept: Postfix's smtp-source, 1 KiB messages, 50 sessions, against
   a private Postfix instance and against postvakt, each with its real queue
   and delivering into a local Maildir (Postfix's virtual agent; with
   --postfix-local discard, Postfix discards instead); wall time until the
   last 250. Three variants: one message per connection, connection reuse
   (smtp-source -d), and connection reuse with PIPELINING (our own client,
   because smtp-source does not pipeline).
2. relay: smtp-source into each server, each relaying to its own smtp-sink;
   wall time until the sink has counted every message.
3. idle connections: 10,000 connections that only read the greeting; the
   server's resident memory from /proc.
4. AUTH: logins of one user on separate connections; the first pays Argon2,
   the later ones should hit the credential cache.

Only the Python standard library is used, so the benchmark runs wherever
postvakt and Debian's postfix package are installed. Everything listens on
127.0.0.1 and lives in one temporary directory (same filesystem for both
queues), removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import json
import os
import platform
import pty
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"

# The DESIGN targets: 50 parallel sessions of 1 KiB messages, as smtp-source -s 50 -l 1024.
SESSIONS = 50
MESSAGE_SIZE = 1024
IDLE_CONNECTIONS = 10_000
# Targets from DESIGN.md ("Targets"), checked only here, never in a unit test.
TARGET_ACCEPT_RATIO = 2.0
TARGET_RELAY_RATIO = 1.5
TARGET_IDLE_MB = 100.0
TARGET_POP3_RATIO = 1.0
TARGET_BIG_MESSAGE_RSS_MB = 5.0

# POP3: sessions (TLS handshake, USER/PASS, STAT, RETR 1, QUIT) on the
# implicit-TLS port, this many at once, against postvakt and a private Dovecot
# serving the same Maildir files to a user with the same password.
POP3_MESSAGES = 10
POP3_CONCURRENCY = 10
# One user per concurrent session: postvakt locks a mailbox for one session
# at a time (RFC 1939 §8), as Dovecot does with pop3_lock_session = yes.
POP3_USERS = [f"pop{i}@bench.test" for i in range(POP3_CONCURRENCY)]
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
# The front's memory while one message of this size comes in (DESIGN: < 5 MB growth).
BIG_MESSAGE_MB = 50
# AUTH submissions: new implicit-TLS connections, each AUTH PLAIN + one message, this many at once.
AUTH_CONCURRENCY = 10

LOCAL_DOMAIN = "bench.test"
SINK_DOMAIN = "sink.test"
CLIENT_NAME = "client.test"
SENDER = f"sender@{CLIENT_NAME}"
USER = f"user@{LOCAL_DOMAIN}"
PASSWORD = "bench-password-1"
# Client source addresses for the idle connections: 10,000 connections from one
# address would use a third of the ephemeral port range; spread them out.
IDLE_SOURCES = [f"127.0.0.{i}" for i in range(10, 20)]
# Connections opened at once while building the idle set (the server's backlog is 1024).
CONNECT_CONCURRENCY = 200
# Warm-up messages per server before the first timed run: Postfix forks its
# smtpd/cleanup processes and postvakt fills its thread pool on first use.
WARMUP_MESSAGES = 100

# smtp-sink -c writes "sess=N quit=N mesg=N\r" after every session, QUIT and ".".
SINK_COUNTER = re.compile(rb"mesg=(\d+)")

START_TIMEOUT = 60.0
# The front processes of the second postvakt server ([server] workers).
WORKERS = 2
DRAIN_TIMEOUT = 180.0


@dataclass
class Profile:
    accept_messages: int
    relay_messages: int
    idle_connections: int
    auth_logins: int
    pop3_sessions: int
    auth_submissions: int
    # Each throughput scenario runs this often per server, alternating; the median counts.
    repeat: int


DEFAULT = Profile(
    accept_messages=2000,
    relay_messages=1500,
    idle_connections=IDLE_CONNECTIONS,
    auth_logins=30,
    pop3_sessions=1000,
    auth_submissions=600,
    repeat=3,
)
QUICK = Profile(
    accept_messages=800,
    relay_messages=500,
    idle_connections=IDLE_CONNECTIONS,
    auth_logins=10,
    pop3_sessions=300,
    auth_submissions=200,
    repeat=1,
)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BenchError(f"the server for port {port} exited while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def wait_until(cond: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def count_files(*dirs: Path) -> int:
    n = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            for _, _, files in os.walk(d):
                n += len(files)
    return n


def tree_pids(root_pid: int) -> list[int]:
    """root_pid and all its descendants, from /proc (worker processes count too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS of one process (/proc/PID/smaps_rollup), in KiB.

    RSS counts every page the process maps, so pages two processes share (the
    interpreter's and the libraries' code) count once per process in a sum of
    RSS; PSS divides each shared page among the processes that map it, so the
    PSS of all processes adds up to what they cost the machine."""
    out = {"rss": 0, "pss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0])
    return out


def resident_pages(pid: int) -> set[int]:
    """The physical page numbers (PFNs) a process has in memory, from
    /proc/PID/pagemap (root only: others read zeros). Two processes that share a
    page (a library's code, the interpreter's) name the same PFN."""
    pages: set[int] = set()
    present, pfn_mask = 1 << 63, (1 << 55) - 1
    page = os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError):
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                if line.endswith("[vsyscall]"):
                    continue
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                pagemap.seek(lo // page * 8)
                entries = array.array("Q", pagemap.read((hi - lo) // page * 8))
                pages.update(e & pfn_mask for e in entries if e & present)
    pages.discard(0)
    return pages


def process_role(pid: int) -> str:
    """front, queue-manager, worker or commit-helper, from a postvakt process's
    command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if b"postvakt.server.commit_process" in args:
        return "commit-helper"
    if b"--role" in args and args.index(b"--role") + 1 < len(args):
        return args[args.index(b"--role") + 1].decode()
    return "front"


def memory_breakdown(pids: list[int]) -> dict[str, Any]:
    """Per process (role, RSS, PSS in MB) and the sums over all of them."""
    procs = []
    for pid in pids:
        m = memory_kib(pid)
        procs.append(
            {
                "pid": pid,
                "role": process_role(pid),
                "rss_mb": round(m["rss"] / 1024, 1),
                "pss_mb": round(m["pss"] / 1024, 1),
            }
        )
    # Every page some server process holds, counted once: what the server costs
    # a machine where nothing else maps its files (PSS less the share that
    # other programs using the same interpreter and libraries take over).
    distinct: set[int] = set()
    for pid in pids:
        distinct |= resident_pages(pid)
    return {
        "processes": procs,
        "rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
        "pss_mb": round(sum(p["pss_mb"] for p in procs), 1),
        "distinct_mb": round(len(distinct) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
    }


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, and cutime, cstime of reaped children
            total += sum(int(x) for x in fields_[11:15])
    return total / tick


# Filesystems where fsync does not reach a disk.
VOLATILE_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem(path: Path) -> dict[str, str]:
    """The mount that holds `path` (longest matching mount point in /proc/mounts)."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return {"mount": best[0], "type": best[1], "device": best[2]}


def ext4_journal(device: str) -> str:
    """ "yes", "no" or "?": whether the ext4 file system on `device` has a journal
    (the kernel names its journal thread in sysfs, "<none>" without one)."""
    try:
        task = Path(f"/sys/fs/ext4/{Path(device).name}/journal_task").read_text().strip()
    except OSError:
        return "?"
    return "no" if task == "<none>" else "yes"


def separate_block_groups(root: Path) -> bool:
    """Make the directories made in `root` start in block groups of their own
    (ext2/3/4's "top of directory hierarchy" flag, `chattr +T`), as they would on
    a machine that runs one mail server. On ext4 without a journal a new inode
    skips every inode of its block group freed in the last minutes (the kernel's
    `recently_deleted`); sharing groups, each server paid for the other's
    deleted queue files. False where the flag cannot be set."""
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, "+T", str(root)], capture_output=True, check=False)
    return done.returncode == 0


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
    new = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def run_with_tty(cmd: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run a Postfix command with a terminal on stderr: it tells errors only to a tty
    (and to syslog, which a test machine may not run)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, timeout=timeout
        )
    finally:
        os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.returncode, out.decode(errors="replace").replace("\r", "")


# ---------------------------------------------------------------- Postfix


MASTER_CF = """\
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Debian's defaults except where a private, loopback-only instance needs
# otherwise. The queue is Postfix's real one: cleanup fsyncs every queue file
# before smtpd says 250. Mail for bench.test then goes where postvakt puts it
# (LOCAL_MAILDIR, or POSTFIX_DISCARD with --postfix-local discard);
# everything else goes to the sink through relayhost.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.{local}
mydomain = {local}
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
{local_delivery}
default_transport = smtp
relayhost = [127.0.0.1]:{sink_port}
smtp_host_lookup = native
smtpd_peername_lookup = no
biff = no
"""


# The job postvakt does with local mail: into the user's Maildir, by virtual(8)
# (one Maildir for every recipient of the domain, as the bench has one user;
# it runs as `nobody`, above virtual_minimum_uid). virtual(8) fsyncs the
# file before it counts the message as delivered; it does not fsync new/.
LOCAL_MAILDIR = """\
mydestination =
virtual_mailbox_domains = {local}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:{local}/user/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}"""
# The setup of earlier runs: local mail is discarded once queued.
POSTFIX_DISCARD = """\
mydestination = {local}
local_transport = discard:"""


class Postfix:
    """A private Postfix instance: own config directory, queue and port."""

    name = "postfix"

    def __init__(self, root: Path, sink_port: int, local: str = "maildir") -> None:
        self.root = root
        self.conf = root / "conf"
        self.port = free_port()
        self.sink_port = sink_port
        self.version = ""
        # "maildir" (delivered as postvakt delivers) or "discard".
        self.local = local
        # Messages the Maildir holds from earlier runs (see Postvakt.delivered_base).
        self.delivered_base = 0

    def start(self) -> None:
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            raise BenchError("no 'postfix' user: install Debian's postfix package") from None
        self.conf.mkdir(parents=True)
        (self.root / "queue").mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        nobody = pwd.getpwnam("nobody")
        (self.root / "mail").mkdir()
        os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)
        local = LOCAL_MAILDIR if self.local == "maildir" else POSTFIX_DISCARD
        local = local.format(
            root=self.root, local=LOCAL_DOMAIN, uid=nobody.pw_uid, gid=nobody.pw_gid
        )
        (self.conf / "main.cf").write_text(
            MAIN_CF.format(
                root=self.root, local=LOCAL_DOMAIN, sink_port=self.sink_port, local_delivery=local
            )
        )
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self.version = subprocess.run(
            [POSTCONF, "-c", str(self.conf), "-h", "mail_version"], capture_output=True, text=True
        ).stdout.strip()
        rc, out = run_with_tty([POSTFIX, "-c", str(self.conf), "start"])
        if rc != 0:
            raise BenchError(f"postfix start failed ({rc}):\n{out}{self.log_tail()}")
        wait_port(self.port, START_TIMEOUT)

    def stop(self) -> None:
        if (self.root / "queue" / "pid" / "master.pid").exists():
            run_with_tty([POSTFIX, "-c", str(self.conf), "stop"])

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        pid = self.master_pid()
        return tree_pids(pid) if pid is not None else []

    def queued(self) -> int:
        q = self.root / "queue"
        return count_files(*(q / d for d in ("maildrop", "incoming", "active", "deferred", "hold")))

    def delivered(self) -> int:
        box = self.root / "mail" / LOCAL_DOMAIN / USER.partition("@")[0]
        return count_files(box / "new", box / "cur")

    def wait_drained(self, expected: int | None = None) -> float:
        def done() -> bool:
            if self.local == "maildir" and expected is not None and self.delivered() < expected:
                return False
            return self.queued() == 0  # discarded or relayed: an empty queue is the whole story

        return wait_until(done, DRAIN_TIMEOUT, "the Postfix queue to empty")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.root / "maillog").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------- postvakt


class Daemon:
    """A server the bench starts in the foreground: stopped by SIGTERM (killed after 30 s),
    measured over its process tree."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid) if self.proc is not None else []


class Postvakt(Daemon):
    """`postvakt serve` from this checkout, configured like the Postfix instance."""

    # How to run the `postvakt` command: this interpreter, this checkout.
    command = [sys.executable, "-m", "postvakt"]

    def __init__(
        self,
        root: Path,
        sink_port: int,
        workers: int = 1,
        state: str = "sqlite",
        name: str = "",
        count_loopback: bool = False,
    ) -> None:
        # The one-worker server keeps the name the table and the JSON always used.
        self.name = name or ("postvakt" if workers == 1 else f"postvakt-w{workers}")
        self.workers = workers
        # [store] state: "sqlite" or "redis://HOST:PORT/DB".
        self.state = state
        # Count every message of the loopback clients (by default exempt) against
        # a [limits.networks] quota far above any run, so that each one reads and
        # writes the state store.
        self.count_loopback = count_loopback
        self.root = root
        self.data = root / "data"
        self.config = root / "postvakt.toml"
        self.sink_port = sink_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.submissions_port = 0
        self.pop3s_port = 0
        self.delivered_base = 0

    def cli(self, *args: str, input: str | None = None) -> str:
        r = subprocess.run(
            [*self.command, *args, "--config", str(self.config)],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise BenchError(f"postvakt {' '.join(args)} failed: {r.stderr or r.stdout}")
        return r.stdout

    def start(self) -> None:
        self.write_config()
        self._launch()

    def write_config(self) -> None:
        """The configuration and the user, without starting anything."""
        self.root.mkdir(parents=True)
        # Equivalent to the Postfix instance: loopback is our network (so relaying
        # is allowed), no per-client connection limit, and as many parallel
        # deliveries to the sink as Postfix's default_destination_concurrency_limit.
        self.config.write_text(
            f"""\
hostname = "postvakt.{LOCAL_DOMAIN}"
data_dir = "{self.data}"
log_level = "info"

[listen]
smtp = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]

[domains]
local = ["{LOCAL_DOMAIN}"]

[relay]
networks = ["127.0.0.0/8"]

[store]
state = "{self.state}"
{self._limits()}
[smtp]
max_connections_per_client = 0
max_message_size = {BIG_MESSAGE_MB * 2 * 1024 * 1024}

[delivery]
routes = {{ "{SINK_DOMAIN}" = "127.0.0.1:{self.sink_port}" }}
concurrency_per_destination = 20
tls = "none"

[server]
workers = {self.workers}
drop_privileges = false   # run as started, in this temporary directory
"""
        )
        self.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")

    def _launch(self) -> None:
        ready = self.data / "listening.json"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        wait_until(
            lambda: ready.exists() or self.proc is None or self.proc.poll() is not None,
            START_TIMEOUT,
            "postvakt to listen",
        )
        if self.proc.poll() is not None:
            raise BenchError(
                f"postvakt serve exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        time.sleep(0.05)
        bound = json.loads(ready.read_text())
        self.port = int(bound["smtp"][0].rsplit(":", 1)[1])
        self.submissions_port = int(bound["submissions"][0].rsplit(":", 1)[1])
        self.pop3s_port = int(bound["pop3s"][0].rsplit(":", 1)[1])

    def _limits(self) -> str:
        # The AUTH rows send hundreds of messages as one login: far over the
        # default [limits.user] quota of 200 an hour, which would hold them.
        user = (
            f'\n[limits.users."{USER}"]\nmessages_per_hour = 100000000\n'
            "messages_per_day = 100000000\n"
        )
        if not self.count_loopback:
            return user
        return (
            "\n[limits]\nexempt = []\n\n[limits.networks]\nmessages_per_hour = 100000000\n" + user
        )

    def delivered(self) -> int:
        local, _, domain = USER.partition("@")
        box = self.data / "mail" / domain / local
        return count_files(box / "new", box / "cur")

    def queued(self) -> int:
        q = self.data / "queue"
        return count_files(*(q / d for d in ("tmp", "incoming", "active", "deferred", "hold")))

    def wait_drained(self, expected: int | None = None) -> float:
        def done() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"postvakt serve died:\n{self.log_tail()}")
            if expected is not None and self.delivered() < expected:
                return False
            return self.queued() == 0

        return wait_until(done, DRAIN_TIMEOUT, "the postvakt queue to empty")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(
                (self.root / "server.log").read_text(errors="replace").splitlines()[-n:]
            )
        except OSError:
            return ""


# ---------------------------------------------------------------- load generators


def smtp_source(port: int, count: int, rcpt: str, reuse: bool) -> float:
    """Postfix's own load generator; returns wall seconds until the last 250.
    smtp-source stops with an error at the first reply that is not positive."""
    cmd = [
        SMTP_SOURCE,
        "-s",
        str(SESSIONS),
        "-l",
        str(MESSAGE_SIZE),
        "-m",
        str(count),
        "-f",
        SENDER,
        "-t",
        rcpt,
        "-M",
        CLIENT_NAME,
    ]
    if reuse:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{port}")
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=DRAIN_TIMEOUT)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise BenchError(
            f"smtp-source failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
        )
    return elapsed


def message_body(n: int) -> bytes:
    """Headers like smtp-source's, then MESSAGE_SIZE bytes of payload in short lines."""
    head = (
        f"From: <{SENDER}>\r\nTo: <{USER}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@{CLIENT_NAME}>\r\n\r\n"
    ).encode()
    line = b"x" * 62 + b"\r\n"
    return head + line * (MESSAGE_SIZE // len(line))


class SMTPFailure(BenchError):
    pass


async def _reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPFailure("connection closed by the server")
        lines.append(line.decode(errors="replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return "\n".join(lines)


def _expect(reply: str, code: str, what: str) -> None:
    if not reply.startswith(code):
        raise SMTPFailure(f"{what}: expected {code}, got {reply!r}")


async def _pipelined_session(port: int, todo: list[int], rcpt: str) -> None:
    """One session: EHLO, then messages with MAIL/RCPT/DATA sent as one group and
    the end of each message grouped with the next MAIL/RCPT/DATA (RFC 2920 §3.1)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        _expect(await _reply(reader), "220", "greeting")
        writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        ehlo = await _reply(reader)
        _expect(ehlo, "250", "EHLO")
        if "PIPELINING" not in ehlo.upper():
            raise SMTPFailure("the server does not offer PIPELINING")
        envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        if not todo:
            return
        n = todo.pop()
        writer.write(envelope)
        while True:
            _expect(await _reply(reader), "250", "MAIL")
            _expect(await _reply(reader), "250", "RCPT")
            _expect(await _reply(reader), "354", "DATA")
            nxt = todo.pop() if todo else None
            writer.write(message_body(n) + b".\r\n" + (envelope if nxt is not None else b""))
            _expect(await _reply(reader), "250", "end of data")
            if nxt is None:
                break
            n = nxt
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(SMTPFailure):
            await _reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def pipelined(port: int, count: int, rcpt: str) -> float:
    """SESSIONS connections with PIPELINING sharing `count` messages; wall seconds."""

    async def main() -> float:
        todo = list(range(count))
        start = time.perf_counter()
        await asyncio.gather(*(_pipelined_session(port, todo, rcpt) for _ in range(SESSIONS)))
        return time.perf_counter() - start

    return asyncio.run(main())


class Sink:
    """smtp-sink with its running counter (-c) read from a pipe: the number of
    messages it has taken (the "." received and answered)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages = 0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        cmd = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += [f"127.0.0.1:{self.port}", "256"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port, 10, alive=lambda: self.proc is not None and self.proc.poll() is None)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            *records, buf = buf.split(b"\r")
            for rec in records:
                m = SINK_COUNTER.search(rec)
                if m:
                    self.messages = int(m.group(1))

    def wait_for(self, count: int, timeout: float) -> None:
        wait_until(lambda: self.messages >= count, timeout, f"smtp-sink to count {count} messages")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def relay(server: Postfix | Postvakt, sink: Sink, count: int) -> float:
    """Wall seconds from the first connection to the sink's last message."""
    base = sink.messages
    start = time.perf_counter()
    smtp_source(server.port, count, f"user@{SINK_DOMAIN}", reuse=False)
    sink.wait_for(base + count, DRAIN_TIMEOUT)
    return time.perf_counter() - start


# ---------------------------------------------------------------- idle connections


async def _open_idle(port: int, count: int) -> tuple[list[asyncio.StreamWriter], int]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            src = IDLE_SOURCES[i % len(IDLE_SOURCES)]
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0), limit=4096), 30
                )
                greeting = await asyncio.wait_for(reader.readline(), 30)
            except (TimeoutError, OSError):
                failed += 1
                return
            if not greeting.startswith(b"220"):
                failed += 1
                writer.close()
                return
            writers.append(writer)

    await asyncio.gather(*(one(i) for i in range(count)))
    return writers, failed


def idle_connections(server: Postvakt, count: int) -> dict[str, Any]:
    pids = server.pids()
    before = memory_breakdown(pids)

    async def main() -> dict[str, Any]:
        start = time.perf_counter()
        writers, failed = await _open_idle(server.port, count)
        opened = time.perf_counter() - start
        await asyncio.sleep(1.0)  # let the server settle (timers, buffers)
        held = memory_breakdown(server.pids())
        # The server must still answer while it holds them all.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        live = (await reader.readline()).startswith(b"220")
        writer.close()
        for w in writers:
            w.close()
        n = max(len(writers), 1)
        return {
            "connections": len(writers),
            "failed": failed,
            "open_seconds": round(opened, 2),
            # Sums over every server process; PSS is what the target is judged on.
            "rss_before_mb": before["rss_mb"],
            "rss_held_mb": held["rss_mb"],
            "pss_before_mb": before["pss_mb"],
            "pss_held_mb": held["pss_mb"],
            "distinct_before_mb": before["distinct_mb"],
            "distinct_held_mb": held["distinct_mb"],
            "per_connection_kb": round((held["rss_mb"] - before["rss_mb"]) * 1024 / n, 2),
            "before": before["processes"],
            "held": held["processes"],
            "still_answering": live,
        }

    return asyncio.run(main())


def print_memory(idle: dict[str, Any]) -> None:
    """The idle row's processes, one line each, before and while holding the connections."""
    held = {p["pid"]: p for p in idle["held"]}
    for p in idle["before"]:
        h = held.get(p["pid"], {"rss_mb": 0.0, "pss_mb": 0.0})
        print(
            f"    {p['role']:<14} pid {p['pid']:<7} RSS {p['rss_mb']:6.1f} -> {h['rss_mb']:6.1f} MB"
            f"   PSS {p['pss_mb']:6.1f} -> {h['pss_mb']:6.1f} MB"
        )
    print(
        f"    {'all':<14} {'':<11} RSS {idle['rss_before_mb']:6.1f} -> {idle['rss_held_mb']:6.1f} MB"
        f"   PSS {idle['pss_before_mb']:6.1f} -> {idle['pss_held_mb']:6.1f} MB"
        f"   pages held, each once {idle['distinct_before_mb']:6.1f} -> "
        f"{idle['distinct_held_mb']:6.1f} MB"
    )


def idle_rows(idle: dict[str, Any], target_count: int) -> list[Row]:
    """The target is judged on PSS: what the processes cost the machine together."""
    row = Row(
        f"{idle['connections']} idle connections, server PSS",
        "MB",
        None,
        idle["pss_held_mb"],
        f"< {TARGET_IDLE_MB:g} MB",
    )
    row.met = idle["connections"] == target_count and idle["pss_held_mb"] < TARGET_IDLE_MB
    return [
        row,
        Row("  the same, each page once (no PSS sharing)", "MB", None, idle["distinct_held_mb"]),
        Row("  the same as a sum of RSS", "MB", None, idle["rss_held_mb"]),
        Row("  per idle connection (RSS)", "KiB", None, idle["per_connection_kb"]),
    ]


# ---------------------------------------------------------------- AUTH


def _sync_reply(f: Any) -> str:
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise SMTPFailure("connection closed by the server")
        lines.append(line.decode().rstrip("\r\n"))
        if line[3:4] != b"-":
            return "\n".join(lines)


def auth_logins(server: Postvakt, count: int) -> dict[str, Any]:
    """`count` logins of one user, each on a new implicit-TLS connection; the time
    of the AUTH command alone (TLS handshake and EHLO excluded)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    times = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", server.submissions_port), timeout=30)
        with ctx.wrap_socket(raw) as s:
            f = s.makefile("rb")
            _expect(_sync_reply(f), "220", "greeting")
            s.sendall(f"EHLO {CLIENT_NAME}\r\n".encode())
            _expect(_sync_reply(f), "250", "EHLO")
            t0 = time.perf_counter()
            s.sendall(f"AUTH PLAIN {token}\r\n".encode())
            _expect(_sync_reply(f), "235", "AUTH")
            times.append(time.perf_counter() - t0)
            s.sendall(b"QUIT\r\n")
            with contextlib.suppress(SMTPFailure, OSError):
                _sync_reply(f)
    rest = times[1:]
    return {
        "logins": len(times),
        "first_ms": round(times[0] * 1000, 2),
        "rest_median_ms": round(statistics.median(rest) * 1000, 3) if rest else None,
        "rest_max_ms": round(max(rest) * 1000, 3) if rest else None,
    }


# ---------------------------------------------------------------- POP3, Dovecot


DOVECOT_CONF = """\
protocols = pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain
auth_cache_size = 1M
first_valid_uid = 1
mail_location = maildir:{root}/mail/%n
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/home/%n
}}
service pop3-login {{
  # Dovecot's documented high-performance mode: login processes serve many
  # connections each instead of one process per connection.
  service_count = 0
  process_min_avail = 2
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = {port}
    ssl = yes
  }}
}}
"""


class Dovecot(Daemon):
    """A private Dovecot (Debian's dovecot-pop3d): own config, loopback port,
    the postvakt server's certificate, passwd-file users with `doveadm pw`'s
    default scheme (SHA512-CRYPT), and Dovecot's auth cache on."""

    name = "dovecot"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    def start(self, cert: Path, key: Path, maildirs: dict[str, Path]) -> None:
        if not (os.access(DOVECOT, os.X_OK) and os.access("/usr/lib/dovecot/pop3", os.X_OK)):
            raise BenchError("Dovecot's POP3 server not found: install Debian's dovecot-pop3d")
        for d in ("run", "state", "home", "mail"):
            (self.root / d).mkdir(parents=True)
        # The same Maildir files as postvakt's users have, owned by the mail user.
        for user, maildir in maildirs.items():
            shutil.copytree(maildir, self.root / "mail" / user.partition("@")[0])
        shutil.chown(self.root / "home", "nobody", "nogroup")
        for dirpath, dirnames, filenames in os.walk(self.root / "mail"):
            for n in (dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)):
                shutil.chown(n, "nobody", "nogroup")
        hashed = subprocess.run(
            [DOVEADM, "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD], capture_output=True, text=True
        ).stdout.strip()
        if not hashed.startswith("{SHA512-CRYPT}"):
            raise BenchError(f"doveadm pw gave no hash: {hashed!r}")
        (self.root / "passwd").write_text("".join(f"{u}:{hashed}::::::\n" for u in maildirs))
        conf = self.root / "dovecot.conf"
        conf.write_text(DOVECOT_CONF.format(root=self.root, cert=cert, key=key, port=self.port))
        self.version = subprocess.run(
            [DOVECOT, "--version"], capture_output=True, text=True
        ).stdout.strip()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "dovecot.stderr", "ab"),  # noqa: SIM115
        )
        wait_port(
            self.port,
            START_TIMEOUT,
            alive=lambda: self.proc is not None and self.proc.poll() is None,
        )

    def log_tail(self, n: int = 20) -> str:
        out = []
        for name in ("dovecot.log", "dovecot.stderr"):
            with contextlib.suppress(OSError):
                out += (self.root / name).read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)


async def _pop3_line(reader: asyncio.StreamReader, what: str) -> bytes:
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise BenchError(f"POP3 {what}: {line!r}")
    return line


async def _pop3_session(port: int, ctx: ssl.SSLContext, user: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        await _pop3_line(reader, "greeting")
        writer.write(f"USER {user}\r\n".encode())
        await _pop3_line(reader, "USER")
        writer.write(f"PASS {PASSWORD}\r\n".encode())
        await _pop3_line(reader, "PASS")
        writer.write(b"STAT\r\n")
        stat = await _pop3_line(reader, "STAT")
        if int(stat.split()[1]) != POP3_MESSAGES:
            raise BenchError(f"POP3 STAT: {stat!r}, expected {POP3_MESSAGES} messages")
        writer.write(b"RETR 1\r\n")
        await _pop3_line(reader, "RETR")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"QUIT\r\n")
        await _pop3_line(reader, "QUIT")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def pop3_sessions(port: int, count: int) -> float:
    """`count` POP3 sessions over TLS, POP3_CONCURRENCY at once; wall seconds.
    No TLS session is resumed: every session pays a full handshake, as new clients do."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def main() -> float:
        todo = iter(range(count))

        async def worker(user: str) -> None:
            for _ in todo:
                await _pop3_session(port, ctx, user)

        start = time.perf_counter()
        await asyncio.gather(*(worker(user) for user in POP3_USERS))
        return time.perf_counter() - start

    return asyncio.run(main())


def pop3_setup(server: Postvakt) -> dict[str, Path]:
    """The POP3 users' mailboxes on postvakt: POP3_MESSAGES 1 KiB messages each,
    delivered through SMTP. Returns their Maildirs, for Dovecot to copy."""
    boxes = {}
    for user in POP3_USERS:
        server.cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")
        local, _, domain = user.partition("@")
        boxes[user] = server.data / "mail" / domain / local
        smtp_source(server.port, POP3_MESSAGES, user, reuse=True)
        wait_until(
            lambda: count_files(*boxes.values()) == len(boxes) * POP3_MESSAGES,
            DRAIN_TIMEOUT,
            "the POP3 mailboxes",
        )
    return boxes


def auth_submissions(server: Postvakt, count: int) -> float:
    """`count` submissions on new implicit-TLS connections, AUTH_CONCURRENCY at
    once: TLS, EHLO, AUTH PLAIN (a credential cache hit after the first), one
    1 KiB message to the local user, QUIT. Returns wall seconds."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    # From: the user's own address, as [sender] header_from wants of a login.
    body = message_body(0).replace(f"From: <{SENDER}>".encode(), f"From: <{USER}>".encode())

    async def one() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.submissions_port, ssl=ctx
        )
        try:
            _expect(await _reply(reader), "220", "greeting")
            for cmd, code in (
                (f"EHLO {CLIENT_NAME}", "250"),
                (f"AUTH PLAIN {token}", "235"),
                (f"MAIL FROM:<{USER}>", "250"),
                (f"RCPT TO:<{USER}>", "250"),
                ("DATA", "354"),
            ):
                writer.write(cmd.encode() + b"\r\n")
                _expect(await _reply(reader), code, cmd.split()[0])
            writer.write(body + b".\r\n")
            _expect(await _reply(reader), "250", "end of data")
            writer.write(b"QUIT\r\n")
            with contextlib.suppress(SMTPFailure, OSError):
                await _reply(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def main() -> float:
        await one()  # the first login pays Argon2id, not timed
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                await one()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(AUTH_CONCURRENCY)))
        return time.perf_counter() - start

    seconds = asyncio.run(main())
    server.delivered_base += count + 1
    return seconds


def big_message_rss(server: Postvakt) -> dict[str, Any]:
    """Peak RSS growth of the front process (the one that accepts: with
    workers = 1, the `serve` process) while one BIG_MESSAGE_MB message comes in
    over SMTP, from /proc VmHWM after resetting it (clear_refs)."""
    assert server.proc is not None
    pid = server.proc.pid
    status = Path(f"/proc/{pid}/status")

    def field_kib(name: str) -> int:
        for line in status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise BenchError(f"no {name} in {status}")

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = field_kib("VmRSS")
    line = b"y" * 76 + b"\r\n"
    piece = line * (1024 * 1024 // len(line))
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        f = s.makefile("rb")
        _expect(_sync_reply(f), "220", "greeting")
        for cmd, code in (
            (f"EHLO {CLIENT_NAME}", "250"),
            (f"MAIL FROM:<{SENDER}>", "250"),
            (f"RCPT TO:<{USER}>", "250"),
            ("DATA", "354"),
        ):
            s.sendall(cmd.encode() + b"\r\n")
            _expect(_sync_reply(f), code, cmd.split()[0])
        s.sendall(f"Subject: big\r\nFrom: <{SENDER}>\r\n\r\n".encode())
        for _ in range(BIG_MESSAGE_MB):
            s.sendall(piece)
        s.sendall(b".\r\n")
        _expect(_sync_reply(f), "250", "end of data")
        s.sendall(b"QUIT\r\n")
    peak = field_kib("VmHWM")
    server.delivered_base += 1
    server.wait_drained(server.delivered_base)
    return {
        "size_mb": BIG_MESSAGE_MB,
        "rss_before_mb": round(before / 1024, 1),
        "peak_mb": round(peak / 1024, 1),
        "growth_mb": round((peak - before) / 1024, 2),
    }


# ---------------------------------------------------------------- the run


@dataclass
class Row:
    name: str
    unit: str
    postfix: float | None
    postvakt: float | None
    target: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.postfix and self.postvakt is not None:
            return self.postvakt / self.postfix
        return None


def measure(srv: Postfix | Postvakt, count: int, run: Any, delivered: int) -> dict[str, Any]:
    """One timed run: wall time to the last 250 (or the sink's last message), then
    the server's CPU time from the start until its queue is empty again."""
    pids = srv.pids()
    cpu0 = cpu_seconds(pids)
    load = os.getloadavg()[0]
    seconds = run(srv, count)
    srv.delivered_base += delivered
    drain = srv.wait_drained(srv.delivered_base)
    # Processes that exited meanwhile were reaped by the root process: their CPU
    # time is in its children's counters, which cpu_seconds includes.
    cpu = cpu_seconds(pids + [p for p in srv.pids() if p not in pids]) - cpu0
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds, 1),
        "drain_after_seconds": round(drain, 2),
        "cpu_ms_per_message": round(cpu / count * 1000, 3),
        "loadavg_before": round(load, 2),
    }


def throughput(
    label: str, servers: list[Postfix | Postvakt], count: int, run: Any, delivered: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """Run one scenario `repeat` times against each server, alternating, so that a
    burst of other load on the machine hits both; the median counts."""
    runs: dict[str, list[dict[str, Any]]] = {srv.name: [] for srv in servers}
    for i in range(repeat):
        for srv in servers:
            print(f"  {label} [{i + 1}/{repeat}] {srv.name:<8} ...", end="", flush=True)
            r = measure(srv, count, run, delivered)
            runs[srv.name].append(r)
            print(
                f" {r['per_second']:7.1f} msg/s ({r['seconds']:.2f} s, "
                f"{r['cpu_ms_per_message']:.2f} ms CPU/msg, load {r['loadavg_before']:.1f})",
                flush=True,
            )
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        out[name] = {
            "per_second": round(statistics.median(r["per_second"] for r in rs), 1),
            "cpu_ms_per_message": round(statistics.median(r["cpu_ms_per_message"] for r in rs), 3),
            "runs": rs,
        }
    return out


def cpu_row(res: dict[str, dict[str, Any]], name: str = "postvakt") -> Row:
    """Server CPU per message: every process of the server, accept through disposal."""
    return Row(
        "  server CPU per message",
        "ms",
        res["postfix"]["cpu_ms_per_message"],
        res[name]["cpu_ms_per_message"],
    )


def workers_rows(
    res: dict[str, dict[str, Any]], name: str, workers: int, target: float
) -> list[Row]:
    """The same scenario against postvakt with several front processes."""
    row = Row(
        f"  postvakt with workers = {workers}",
        "msg/s",
        res["postfix"]["per_second"],
        res[name]["per_second"],
        f">= {target:g}x",
    )
    row.met = row.ratio is not None and row.ratio >= target
    return [row, cpu_row(res, name)]


def machine() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": loop,
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
    }


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if abs(v) >= 10 or digits > 1 else f"{v:.2f}"


def print_table(rows: list[Row]) -> None:
    head = f"{'benchmark':<44} {'unit':<7} {'postfix':>9} {'postvakt':>9} {'ratio':>6}  {'target':<12} result"
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        met = "" if r.met is None else ("met" if r.met else "MISSED")
        print(
            f"{r.name:<44} {r.unit:<7} {fmt(r.postfix):>9} {fmt(r.postvakt):>9} "
            f"{fmt(r.ratio, 2):>6}  {r.target:<12} {met}"
        )


def check_tools() -> None:
    for tool in (POSTFIX, SMTP_SOURCE, SMTP_SINK, DOVECOT):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"{tool} not found: install Debian's postfix and dovecot-pop3d")
    if os.geteuid() != 0:
        raise BenchError("run as root: a private Postfix instance must be started as root")


def idle_only(args: argparse.Namespace) -> int:
    """The idle-connection row alone: a fresh postvakt (one worker), the warm-up
    messages delivered, then the connections. For comparing the server's
    resting size between changes without the throughput runs before it."""
    if not os.access(SMTP_SOURCE, os.X_OK):
        raise BenchError(f"{SMTP_SOURCE} not found: install Debian's postfix")
    fd_limit = raise_fd_limit(IDLE_CONNECTIONS * 2 + 1024)
    if fd_limit < IDLE_CONNECTIONS + 512:
        raise BenchError(
            f"RLIMIT_NOFILE is {fd_limit}; the idle test needs {IDLE_CONNECTIONS + 512}"
        )
    root = Path(tempfile.mkdtemp(prefix="postvakt-bench-", dir=args.dir))
    # Nothing is relayed here: the sink's port is only written into the config.
    postvakt = Postvakt(root / "postvakt", free_port())
    started = time.time()
    try:
        postvakt.start()
        smtp_source(postvakt.port, WARMUP_MESSAGES, USER, reuse=False)
        postvakt.wait_drained(WARMUP_MESSAGES)
        time.sleep(1.0)
        print(f"  idle connections: opening {IDLE_CONNECTIONS} ...", end="", flush=True)
        idle = idle_connections(postvakt, IDLE_CONNECTIONS)
        print(
            f" {idle['connections']} held, PSS {idle['pss_held_mb']} MB"
            f" (RSS {idle['rss_held_mb']} MB)",
            flush=True,
        )
        print_memory(idle)
    except BenchError as e:
        print(f"\nbench failed: {e}\npostvakt log:\n{postvakt.log_tail()}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        postvakt.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = idle_rows(idle, IDLE_CONNECTIONS)
    print_table(rows)
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "profile": "idle",
        "machine": machine(),
        "idle": idle,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-idle-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, once each, under 45 s")
    ap.add_argument(
        "--messages", type=int, help="messages per accept run (default 2000, quick 800)"
    )
    ap.add_argument("--repeat", type=int, help="runs per scenario and server (default 3, quick 1)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, queues)"
    )
    ap.add_argument(
        "--dir",
        type=Path,
        help="where to create the temporary directory (both queues); default $TMPDIR or /tmp",
    )
    ap.add_argument(
        "--shared-block-groups",
        action="store_true",
        help="leave the servers' directories in shared ext4 block groups (no chattr +T)",
    )
    ap.add_argument(
        "--postfix-local",
        choices=["maildir", "discard"],
        default="maildir",
        help="what Postfix does with local mail: into a Maildir as postvakt does (default), "
        "or discard it (the setup of runs before 2026-12-07 evening)",
    )
    ap.add_argument(
        "--only",
        choices=["idle"],
        help="idle: only the idle-connection row, on a fresh one-worker postvakt (no Postfix)",
    )
    args = ap.parse_args(argv)
    if args.only == "idle":
        return idle_only(args)
    profile = QUICK if args.quick else DEFAULT
    if args.messages:
        profile = replace(
            profile, accept_messages=args.messages, relay_messages=max(args.messages * 3 // 4, 1)
        )
    if args.repeat:
        profile = replace(profile, repeat=args.repeat)

    check_tools()
    fd_limit = raise_fd_limit(profile.idle_connections * 2 + 1024)
    if fd_limit < profile.idle_connections + 512:
        raise BenchError(
            f"RLIMIT_NOFILE is {fd_limit}; the idle test needs {profile.idle_connections + 512}"
        )

    root = Path(tempfile.mkdtemp(prefix="postvakt-bench-", dir=args.dir))
    os.chmod(root, 0o755)  # Postfix's unprivileged daemons walk into their queue
    own_groups = not args.shared_block_groups and separate_block_groups(root)
    pf_sink, pv_sink, w2_sink = Sink(free_port()), Sink(free_port()), Sink(free_port())
    postfix = Postfix(root / "postfix", pf_sink.port, args.postfix_local)
    postvakt = Postvakt(root / "postvakt", pv_sink.port)
    # The same server with [server] workers = 2: two front processes on the ports.
    postvakt_w2 = Postvakt(root / "postvakt-w2", w2_sink.port, workers=WORKERS)
    dovecot = Dovecot(root / "dovecot")
    started = time.time()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "profile": "quick" if args.quick else "default",
        "machine": machine(),
        "settings": {
            "sessions": SESSIONS,
            "message_size": MESSAGE_SIZE,
            "postfix_local": args.postfix_local,
            **asdict(profile),
        },
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "filesystem": filesystem(root),
    }
    fs_info = results["filesystem"]
    fs_info["separate_block_groups"] = "yes" if own_groups else "no"
    if fs_info["type"] == "ext4":
        fs_info["journal"] = ext4_journal(fs_info["device"])
    if results["filesystem"]["type"] in VOLATILE_FILESYSTEMS:
        print(
            f"note: {root} is on {results['filesystem']['type']}: fsync costs nothing there, "
            "so durable accept is not measured; use --dir on a disk"
        )
    rows: list[Row] = []
    try:
        print(f"starting Postfix and postvakt under {root}", flush=True)
        pf_sink.start()
        pv_sink.start()
        w2_sink.start()
        postfix.start()
        postvakt.start()
        postvakt_w2.start()
        results["machine"]["postfix"] = postfix.version
        servers: list[Postfix | Postvakt] = [postfix, postvakt, postvakt_w2]
        local_rcpt = USER

        for srv in servers:  # warm-up, not timed
            smtp_source(srv.port, WARMUP_MESSAGES, local_rcpt, reuse=False)
            srv.delivered_base += WARMUP_MESSAGES
            srv.wait_drained(srv.delivered_base)

        n = profile.accept_messages
        # Each scenario runs against anything with a .port: a server, or smtp-sink.
        scenarios: list[tuple[str, str, Callable[[Any, int], float]]] = [
            (
                "accept",
                "durable accept, 1 message per connection",
                lambda s, c: smtp_source(s.port, c, local_rcpt, reuse=False),
            ),
            (
                "accept_reuse",
                "durable accept, connection reuse",
                lambda s, c: smtp_source(s.port, c, local_rcpt, reuse=True),
            ),
            (
                "accept_pipelining",
                "durable accept, reuse + PIPELINING",
                lambda s, c: pipelined(s.port, c, local_rcpt),
            ),
        ]
        # The load generators alone, against smtp-sink (which queues nothing): far
        # above either server, or the comparison would measure the client.
        ceiling = {}
        for key, _, fn in scenarios:
            seconds = fn(pv_sink, n)
            ceiling[key] = round(n / seconds, 1)
        results["client_ceiling"] = ceiling
        print(
            "  load generators alone against smtp-sink: "
            + ", ".join(f"{k} {v:.0f} msg/s" for k, v in ceiling.items()),
            flush=True,
        )
        for key, label, fn in scenarios:
            res = throughput(label, servers, n, fn, n, profile.repeat)
            results[key] = res
            row = Row(
                label,
                "msg/s",
                res["postfix"]["per_second"],
                res["postvakt"]["per_second"],
                f">= {TARGET_ACCEPT_RATIO:g}x",
                detail=res,
            )
            row.met = row.ratio is not None and row.ratio >= TARGET_ACCEPT_RATIO
            rows.append(row)
            rows.append(cpu_row(res))
            rows += workers_rows(res, postvakt_w2.name, WORKERS, TARGET_ACCEPT_RATIO)

        m = profile.relay_messages
        sinks = {"postfix": pf_sink, "postvakt": pv_sink, postvakt_w2.name: w2_sink}
        res = throughput(
            "relay to smtp-sink, end to end",
            servers,
            m,
            lambda s, c: relay(s, sinks[s.name], c),
            0,
            profile.repeat,
        )
        results["relay"] = res
        row = Row(
            "relay to smtp-sink, end to end",
            "msg/s",
            res["postfix"]["per_second"],
            res["postvakt"]["per_second"],
            f">= {TARGET_RELAY_RATIO:g}x",
            detail=res,
        )
        row.met = row.ratio is not None and row.ratio >= TARGET_RELAY_RATIO
        rows.append(row)
        rows.append(cpu_row(res))
        rows += workers_rows(res, postvakt_w2.name, WORKERS, TARGET_RELAY_RATIO)

        print(f"  AUTH: {profile.auth_logins} logins ...", end="", flush=True)
        auth = auth_logins(postvakt, profile.auth_logins)
        results["auth"] = auth
        print(f" first {auth['first_ms']} ms, then {auth['rest_median_ms']} ms", flush=True)
        rows.append(Row("AUTH PLAIN, first login (Argon2)", "ms", None, auth["first_ms"]))
        row = Row(
            "AUTH PLAIN, later logins (median)", "ms", None, auth["rest_median_ms"], "cache hit"
        )
        # A cache hit answers in well under the cost of one Argon2 run.
        row.met = (
            auth["rest_median_ms"] is not None and auth["rest_median_ms"] < auth["first_ms"] / 5
        )
        rows.append(row)

        print(f"  AUTH submissions: {profile.auth_submissions} ...", end="", flush=True)
        seconds = auth_submissions(postvakt, profile.auth_submissions)
        postvakt.wait_drained(postvakt.delivered_base)
        rate = round(profile.auth_submissions / seconds, 1)
        results["auth_submissions"] = {"count": profile.auth_submissions, "per_second": rate}
        print(f" {rate} /s", flush=True)
        rows.append(Row("AUTH PLAIN submissions (cached), per second", "/s", None, rate))

        print(f"  {BIG_MESSAGE_MB} MB message: front RSS ...", end="", flush=True)
        big = big_message_rss(postvakt)
        results["big_message"] = big
        print(f" +{big['growth_mb']} MB", flush=True)
        row = Row(
            f"{BIG_MESSAGE_MB} MB message, front RSS growth",
            "MB",
            None,
            big["growth_mb"],
            f"< {TARGET_BIG_MESSAGE_RSS_MB:g} MB",
        )
        row.met = big["growth_mb"] < TARGET_BIG_MESSAGE_RSS_MB
        rows.append(row)

        print("  POP3: mailbox and a private Dovecot ...", flush=True)
        boxes = pop3_setup(postvakt)
        tls = postvakt.data / "tls"
        dovecot.start(tls / "cert.pem", tls / "key.pem", boxes)
        results["machine"]["dovecot"] = dovecot.version
        pop3_targets: list[Any] = [dovecot, postvakt]
        for srv in pop3_targets:  # warm-up: Argon2id once a user, Dovecot's index files
            pop3_sessions(srv.pop3s_port if srv is postvakt else srv.port, 2 * POP3_CONCURRENCY)
        pop3_runs: dict[str, list[dict[str, float]]] = {"dovecot": [], "postvakt": []}
        count = profile.pop3_sessions
        for i in range(profile.repeat):
            for srv in pop3_targets:
                port = srv.pop3s_port if srv is postvakt else srv.port
                print(f"  POP3 sessions [{i + 1}/{profile.repeat}] {srv.name:<8} ...", end="")
                pids = srv.pids()
                cpu0 = cpu_seconds(pids)
                seconds = pop3_sessions(port, count)
                cpu = cpu_seconds(pids + [p for p in srv.pids() if p not in pids]) - cpu0
                r = {
                    "per_second": round(count / seconds, 1),
                    "cpu_ms_per_session": round(cpu / count * 1000, 3),
                }
                pop3_runs[srv.name].append(r)
                print(
                    f" {r['per_second']:7.1f} sessions/s "
                    f"({r['cpu_ms_per_session']:.2f} ms CPU/session)",
                    flush=True,
                )
        pop3: dict[str, dict[str, Any]] = {
            name: {
                "per_second": round(statistics.median(r["per_second"] for r in rs), 1),
                "cpu_ms_per_session": round(
                    statistics.median(r["cpu_ms_per_session"] for r in rs), 3
                ),
                "runs": rs,
            }
            for name, rs in pop3_runs.items()
        }
        results["pop3"] = pop3
        row = Row(
            "POP3 over TLS (login, STAT, RETR, QUIT) vs Dovecot",
            "sess/s",
            pop3["dovecot"]["per_second"],
            pop3["postvakt"]["per_second"],
            f">= {TARGET_POP3_RATIO:g}x",
        )
        row.met = row.ratio is not None and row.ratio >= TARGET_POP3_RATIO
        rows.append(row)
        rows.append(
            Row(
                "  server CPU per session",
                "ms",
                pop3["dovecot"]["cpu_ms_per_session"],
                pop3["postvakt"]["cpu_ms_per_session"],
            )
        )

        print(f"  idle connections: opening {profile.idle_connections} ...", end="", flush=True)
        # Last: the big message's RSS is measured before this fills the heap.
        idle = idle_connections(postvakt, profile.idle_connections)
        results["idle"] = idle
        print(
            f" {idle['connections']} held, PSS {idle['pss_held_mb']} MB"
            f" (RSS {idle['rss_held_mb']} MB)",
            flush=True,
        )
        print_memory(idle)
        rows += idle_rows(idle, profile.idle_connections)
    except BenchError as e:
        print(f"\nbench failed: {e}", file=sys.stderr)
        print(
            f"postfix log:\n{postfix.log_tail()}\npostvakt log:\n{postvakt.log_tail()}"
            f"\npostvakt (workers = {WORKERS}) log:\n{postvakt_w2.log_tail()}"
            f"\ndovecot log:\n{dovecot.log_tail()}",
            file=sys.stderr,
        )
        args.keep = True
        return 1
    finally:
        for sink in (pf_sink, pv_sink, w2_sink):
            sink.stop()
        dovecot.stop()
        postvakt_w2.stop()
        postvakt.stop()
        postfix.stop()
        results["seconds_total"] = round(time.time() - started, 1)
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    results["table"] = [
        {
            "name": r.name,
            "unit": r.unit,
            "postfix": r.postfix,
            "postvakt": r.postvakt,
            "ratio": None if r.ratio is None else round(r.ratio, 3),
            "target": r.target,
            "met": r.met,
        }
        for r in rows
    ]
    print_table(rows)
    busy = max(results["loadavg_start"][0], results["loadavg_end"][0])
    if busy > (os.cpu_count() or 1):
        print(
            f"\nnote: load average reached {busy:.1f} on {os.cpu_count()} cores: other programs "
            "competed for the CPU and the numbers are noisy"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    fs = results["filesystem"]
    print(
        f"\n{results['machine']['cores']} cores, Postfix {results['machine'].get('postfix')} "
        f"(local mail: {results['settings']['postfix_local']}), queues on {fs['type']} ({fs['device']}"
        + (f", journal {fs['journal']}" if "journal" in fs else "")
        + f", separate block groups {fs['separate_block_groups']}), "
        f"{results['machine']['event_loop']}; {results['seconds_total']} s; results in {out}"
    )
    return 0


def report_instructions(
    totals: dict[int, int], messages: int, as_json: bool, who: str, per_what: str
) -> None:
    """callgrind totals of a run with no message and of one with `messages`,
    each on stderr, then the difference per message: "front: 3.00 million
    instructions per accepted message", or the same as JSON."""
    for n, t in totals.items():
        print(f"  {n} messages: {t:,} instructions", file=sys.stderr)
    per = (totals[messages] - totals[0]) / messages
    if as_json:
        print(json.dumps({"messages": messages, "instructions_per_message": round(per)}))
    else:
        print(f"{who}: {per / 1e6:.2f} million instructions per {per_what}")


def entry(main: Callable[[], int]) -> None:
    """Run a bench script's main: a BenchError is one line on stderr and exit code 2."""
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entry(main)
