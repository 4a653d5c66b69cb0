"""`[server] workers = 2`: two front processes that agree, and a parent that keeps them.

Which front served a connection is read from the log: with several workers
each line carries its process id (`postvakt.smtp[PID]`), and each test uses
addresses of its own (MAIL FROM, login, client address) to find its lines.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from support import (
    LOCAL_DOMAIN,
    RawClient,
    Running,
    base_config,
    eventually,
    pop3_pass_on,
    rcpt_on,
    start_server,
    to_toml,
)

USER = f"bob@{LOCAL_DOMAIN}"
PASSWORD = "workers-secret-1"
# Enough fresh connections that the kernel's spread reaches both workers
# (each goes to either with even odds: 2^-60 that one is never chosen).
ATTEMPTS = 60
LINE = re.compile(r"postvakt(?:\.(\w+))?\[(\d+)\] (\w+) (.*)")

SECTIONS: dict[str, dict[str, object]] = {
    "listen": {"submission": [], "submissions": [], "pop3s": []},
    "server": {"workers": 2},
    "relay": {"pop_before_smtp": "30m"},
    "limits": {"store": "sqlite", "auth_failures": 3, "auth_delay": "0s", "auth_delay_max": "0s"},
    "pop3": {"plaintext": "always", "fail_delay": "0s", "fail_delay_max": "0s"},
}


def lines(srv: Running, needle: str) -> list[tuple[int, str]]:
    """(pid, message) of every log line whose message contains `needle`."""
    out = []
    for ln in srv.log().splitlines():
        m = LINE.search(ln)
        if m and needle in m.group(4):
            out.append((int(m.group(2)), m.group(4)))
    return out


def worker_pids(srv: Running) -> dict[int, int]:
    """worker index -> pid of the one serving now (the last started)."""
    out: dict[int, int] = {}
    for _, msg in lines(srv, " serving (pid "):
        m = re.match(r"worker (\d+) serving \(pid (\d+)\)", msg)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(tmp_path: Path, users: dict[str, str] | None = None) -> Running:
    # Three interpreters start (parent, two workers) besides the queue manager:
    # on a loaded machine that takes longer than one does.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(support, "START_TIMEOUT", 120.0)
        return start_server(tmp_path, users=users, **SECTIONS)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    s = start(tmp_path_factory.mktemp("workers"), users={USER: PASSWORD})
    try:
        assert len(worker_pids(s)) == 2, s.log()
        yield s
    finally:
        s.stop()


def pop3_login(srv: Running, source: str, password: str) -> str:
    return pop3_pass_on(RawClient(srv.port("pop3"), source), USER, password)


def rcpt_foreign(srv: Running, source: str, sender: str) -> str:
    return rcpt_on(RawClient(srv.port("smtp"), source), sender, "friend@foreign.example")


def rcpt_pid(srv: Running, sender: str) -> int:
    found: list[int] = []

    def logged() -> None:
        found[:] = [pid for pid, _ in lines(srv, "RCPT client=") if f"from=<{sender}>" in _]
        assert found

    eventually(logged, timeout=10)
    return found[0]


def test_a_pop3_login_on_one_front_lets_the_address_relay_through_the_other(
    srv: Running,
) -> None:
    source = "127.0.0.3"
    assert pop3_login(srv, source, PASSWORD).startswith("+OK")
    eventually(lambda: lines(srv, f"pop3 login client={source}")[0], timeout=10)
    login_pid = lines(srv, f"pop3 login client={source}")[0][0]
    seen: set[int] = set()
    for i in range(ATTEMPTS):
        sender = f"grant{i}-{time.monotonic_ns()}@elsewhere.example"
        reply = rcpt_foreign(srv, source, sender)
        assert reply.startswith("250"), reply
        seen.add(rcpt_pid(srv, sender))
        if seen - {login_pid}:
            break
    assert seen - {login_pid}, "every SMTP connection landed on the front that saw the login"
    # The commands read the same state the fronts share.
    assert source in srv.cli("grants", "list").stdout
    r = srv.cli(
        "explain", "--client", source, "--from", "x@elsewhere.example", "--to", "y@foreign.example"
    )
    assert "permit_pop_before_smtp" in r.stdout and USER in r.stdout, r.stdout
    # Another address is still refused, on either front.
    assert rcpt_foreign(srv, "127.0.0.4", "x@elsewhere.example").startswith("550 5.7.1")


def test_login_failures_are_counted_once_across_fronts(srv: Running) -> None:
    source = "127.0.0.6"
    needle = f"pop3 login failed client={source}"
    for i in range(ATTEMPTS):
        assert pop3_login(srv, source, f"wrong-{i}").startswith("-ERR")
        eventually(lambda n=i: _at_least(lines(srv, needle), n + 1), timeout=10)
        pids = {pid for pid, _ in lines(srv, needle)}
        if i >= 3 and len(pids) == 2:
            break
    got = lines(srv, needle)
    assert len({pid for pid, _ in got}) == 2, "all attempts landed on one front"
    counted = [msg for _, msg in got if "refused" not in msg]
    refused = [msg for _, msg in got if "refused: too many failures" in msg]
    # One count for the node: two fronts with counts of their own would check more passwords.
    assert len(counted) == 3, counted
    assert refused
    # The right password is refused too now: the pair is at its ceiling.
    assert pop3_login(srv, source, PASSWORD).startswith("-ERR")


def _at_least(items: list[tuple[int, str]], n: int) -> None:
    assert len(items) >= n


def test_sighup_reloads_every_front(srv: Running) -> None:
    source = "127.0.0.8"
    assert rcpt_foreign(srv, source, "before-hup@elsewhere.example").startswith("550")
    before = len(lines(srv, "reloaded "))
    raw = base_config(srv.data_dir)
    for name, values in SECTIONS.items():
        raw.setdefault(name, {}).update(values)
    raw["relay"]["networks"] = ["127.0.0.1/32", f"{source}/32"]
    srv.config_path.write_text(to_toml(raw))
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    pids = set(worker_pids(srv).values())
    # Parent, both workers (and the queue manager, which logs nothing on success).
    eventually(lambda: _reloaded_by(srv, before, pids), timeout=20)
    seen: set[int] = set()
    for i in range(ATTEMPTS):
        sender = f"hup{i}-{time.monotonic_ns()}@elsewhere.example"
        reply = rcpt_foreign(srv, source, sender)
        assert reply.startswith("250"), reply
        seen.add(rcpt_pid(srv, sender))
        if seen == pids:
            break
    assert seen == pids


def _reloaded_by(srv: Running, before: int, pids: set[int]) -> None:
    assert pids <= {pid for pid, _ in lines(srv, "reloaded ")[before:]}


def test_a_killed_front_is_started_again(srv: Running) -> None:
    old = worker_pids(srv)
    victim = old[1]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> None:
        now = worker_pids(srv)
        assert now[1] != victim and alive(now[1])

    eventually(restarted, timeout=30)
    assert lines(srv, f"worker 1 (pid {victim}) exited with signal SIGKILL")
    assert worker_pids(srv)[0] == old[0] and alive(old[0])
    # Both fronts serve: the new one took over the dead one's sockets.
    new_pids = set(worker_pids(srv).values())
    seen: set[int] = set()
    for i in range(ATTEMPTS):
        sender = f"kill{i}-{time.monotonic_ns()}@elsewhere.example"
        assert rcpt_foreign(srv, "127.0.0.9", sender).startswith("550")
        seen.add(rcpt_pid(srv, sender))
        if seen == new_pids:
            break
    assert seen == new_pids


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    s = start(tmp_path)
    pids = list(worker_pids(s).values())
    assert len(pids) == 2
    # The queue manager starts beside the workers; its first line may come after theirs.
    eventually(lambda: _at_least(lines(s, "queue recovery"), 1), timeout=60)
    manager = [pid for pid, _ in lines(s, "queue recovery")]
    assert s.stop() == 0
    for pid in [*pids, *manager]:
        eventually(lambda p=pid: _gone(p), timeout=10)
    assert lines(s, "worker 0 stopped") and lines(s, "worker 1 stopped")


def _gone(pid: int) -> None:
    assert not alive(pid)
