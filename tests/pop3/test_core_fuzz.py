"""Any input to the POP3 core parses or gets a -ERR; never a traceback, never a malformed reply."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_core_driver import CoreDriver

import postvakt.pop3
from postvakt.pop3 import Settings

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
