"""Any input to the POP3 core parses or gets a -ERR; never a traceback, never a malformed reply."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_core_driver import CoreDriver

import postvakt.pop3
from postvakt.pop3 import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    Fetch,
    MessageInfo,
    Settings,
    StartTLS,
    Update,
)
from postvakt.pop3 import replies as R
from postvakt.pop3.connection import MAX_BAD_COMMANDS

VERBS = [
    "USER",
    "PASS",
    "STAT",
    "LIST",
    "RETR",
    "DELE",
    "NOOP",
    "RSET",
    "QUIT",
    "TOP",
    "UIDL",
    "CAPA",
    "STLS",
    "AUTH",
    "APOP",
    "AUTH PLAIN",
    "*",
    "",
]
ARGS = st.one_of(
    st.sampled_from(
        ["", "1", "2", "0", "-1", "99999999999", "alice@pv.test", "secret", "PLAIN", "="]
    ),
    st.text(max_size=30),
)
LINE = st.builds(
    lambda v, a, end: f"{v} {a}".encode("utf-8", "surrogatepass") + end,
    st.sampled_from(VERBS),
    ARGS,
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
)
CHUNKS = st.lists(st.one_of(LINE, st.binary(max_size=300)), max_size=40)
SETTINGS = st.builds(
    Settings,
    tls_active=st.booleans(),
    tls_available=st.booleans(),
    plaintext_allowed=st.booleans(),
    max_failures=st.integers(1, 5),
)


def _check_output(out: bytes) -> None:
    assert out.startswith(b"+OK POP3 server ready\r\n")
    assert out == b"" or out.endswith(b"\r\n")


@settings(max_examples=400, deadline=None)
@given(chunks=CHUNKS, s=SETTINGS)
def test_fuzz_any_bytes_never_raise(chunks: list[bytes], s: Settings) -> None:
    d = CoreDriver(settings=s)
    for c in chunks:
        d.feed(c)
    _check_output(bytes(d.out))
    before = len(d.out)
    d.feed(b"")
    if d.closed:
        d.feed(b"NOOP\r\n")  # after close nothing more is answered
        assert len(d.out) == before or d.out[before:].startswith((b"+OK", b"-ERR"))
        after = len(d.out)
        d.feed(b"NOOP\r\n")
        assert len(d.out) == after


@settings(max_examples=200, deadline=None)
@given(chunks=CHUNKS)
def test_fuzz_after_login(chunks: list[bytes]) -> None:
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\n")
    for c in chunks:
        d.feed(c)
    out = bytes(d.out)
    _check_output(out)
    for line in out.split(b"\r\n"):
        # Every status line carries a known response code, or none.
        if line.startswith(b"-ERR ["):
            code = line[6 : line.index(b"]")]
            assert code in (b"AUTH", b"SYS/TEMP", b"SYS/PERM", b"IN-USE")


# ---------------------------------------------------------------- any application answer
#
# The adapter answers Authenticate, Fetch and Update with whatever the world
# gave it (a locked mailbox, a vanished file, a failed rename, a backend
# error); the core still answers every line with +OK or -ERR and never raises.

LOGIN_OUTCOMES = st.sampled_from(["ok", "failed", "in-use", "sys-temp", "sys-perm", "delay"])


class AnyAnswerDriver(CoreDriver):
    """A CoreDriver whose application answers from drawn lists instead of its users."""

    def __init__(
        self, settings: Settings, logins: list[str], fetched: list[bool], updated: list[bool]
    ) -> None:
        super().__init__(settings=settings)
        self.logins, self.fetched, self.updated = logins, fetched, updated

    def pump(self) -> None:
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            self.events.append(ev)
            if isinstance(ev, Authenticate):
                outcome = self.logins.pop(0) if self.logins else "failed"
                if outcome == "ok":
                    conn.login_ok(ev.login, [MessageInfo(u, n) for u, _, n in self.messages])
                elif outcome == "failed":
                    conn.login_failed()
                else:
                    reply = {
                        "in-use": R.IN_USE,
                        "sys-temp": R.SYS_TEMP,
                        "sys-perm": R.SYS_PERM,
                        "delay": R.LOGIN_DELAY,
                    }[outcome]
                    conn.login_failed(reply, counts=False)
            elif isinstance(ev, StartTLS):
                self.out += conn.data_to_send()
                conn.tls_started()
            elif isinstance(ev, Fetch):
                found = self.fetched.pop(0) if self.fetched else True
                data = {u: d for u, d, _ in self.messages}.get(ev.uid)
                conn.message(data if found else None)
            elif isinstance(ev, Update):
                conn.update_done(self.updated.pop(0) if self.updated else True)
            elif isinstance(ev, Close):
                self.closed = True
        self.out += conn.data_to_send()


@settings(max_examples=300, deadline=None)
@given(
    chunks=CHUNKS,
    s=SETTINGS,
    logins=st.lists(LOGIN_OUTCOMES, max_size=6),
    fetched=st.lists(st.booleans(), max_size=10),
    updated=st.lists(st.booleans(), max_size=2),
)
def test_fuzz_any_application_answer(
    chunks: list[bytes], s: Settings, logins: list[str], fetched: list[bool], updated: list[bool]
) -> None:
    d = AnyAnswerDriver(s, logins, fetched, updated)
    d.feed(b"USER alice@pv.test\r\nPASS x\r\n")
    for c in chunks:
        d.feed(c)
    d.feed(b"")
    out = bytes(d.out)
    _check_output(out)
    for line in out.split(b"\r\n"):
        if line.startswith(b"-ERR ["):
            code = line[6 : line.index(b"]")]
            assert code in (b"AUTH", b"SYS/TEMP", b"SYS/PERM", b"IN-USE", b"LOGIN-DELAY"), line


GOOD_LINES = [b"NOOP\r\n", b"STAT\r\n", b"LIST\r\n", b"UIDL 1\r\n", b"RSET\r\n", b"CAPA\r\n"]
BAD_LINES = [b"LIST 9999\r\n", b"RETR 0\r\n", b"BOGUS\r\n", b"DELE x\r\n", b"TOP 1\r\n"]


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.lists(st.sampled_from(BAD_LINES), max_size=MAX_BAD_COMMANDS - 1),
            st.sampled_from(GOOD_LINES),
        ),
        max_size=12,
    )
)
def test_bad_commands_never_close_while_good_ones_come_between(
    runs: list[tuple[list[bytes], bytes]],
) -> None:
    """Fewer than MAX_BAD_COMMANDS bad commands in a row, then a good one: the
    session goes on however long it runs (issue 16 point 10)."""
    d = CoreDriver()
    d.feed(b"USER alice@pv.test\r\nPASS secret\r\n")
    for bad, good in runs:
        d.feed(b"".join(bad) + good)
    assert not d.closed
    assert R.TOO_MANY_BAD.encode() not in bytes(d.out)


def test_pure_modules_import_no_io() -> None:
    """pop3/ is sans-IO: none of asyncio, socket, ssl, os, time."""
    forbidden = {"asyncio", "socket", "ssl", "os", "time"}
    pkg = Path(postvakt.pop3.__file__).parent
    for f in sorted(pkg.glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not forbidden.intersection(names), f"{f.name} imports {names}"
