"""The state table is complete, and the connection follows it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from smtp_harness import Driver, settings

import postvakt.smtp
from postvakt.smtp import State
from postvakt.smtp._state import ALLOWED, COMMANDS, ON_POSITIVE, REFUSED, refusal

COMMAND_STATES = sorted(ALLOWED, key=lambda s: s.value)

SETUP = {
    State.GREETED: b"",
    State.READY: b"EHLO client.test\r\n",
    State.MAIL: b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\n",
    State.RCPT: b"EHLO client.test\r\nMAIL FROM:<a@other.example>\r\nRCPT TO:<u@pv.test>\r\n",
}

# A well-formed line for each command.
LINES = {
    "HELO": b"HELO client.test",
    "EHLO": b"EHLO client.test",
    "MAIL": b"MAIL FROM:<b@other.example>",
    "RCPT": b"RCPT TO:<v@pv.test>",
    "DATA": b"DATA",
    "RSET": b"RSET",
    "NOOP": b"NOOP",
    "QUIT": b"QUIT",
    "VRFY": b"VRFY bob",
    "EXPN": b"EXPN staff",
    "HELP": b"HELP",
    "STARTTLS": b"STARTTLS",
    "AUTH": b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
}


@pytest.mark.parametrize("state", COMMAND_STATES, ids=lambda s: s.value)
def test_every_command_is_either_allowed_or_refused(state: State) -> None:
    allowed = ALLOWED[state]
    refused = set(REFUSED.get(state, {}))
    assert not allowed & refused
    assert allowed | refused == COMMANDS


def test_positive_answers_lead_to_command_states() -> None:
    for (before, verb), after in ON_POSITIVE.items():
        assert verb in ALLOWED[before]
        assert after in ALLOWED or after is State.DATA


@pytest.mark.parametrize("verb", sorted(COMMANDS))
@pytest.mark.parametrize("state", COMMAND_STATES, ids=lambda s: s.value)
def test_connection_follows_the_table(state: State, verb: str) -> None:
    d = Driver(settings(tls_active=True))
    if SETUP[state]:
        d.feed(SETUP[state])
    assert d.conn.state is state
    d.take()
    d.feed(LINES[verb] + b"\r\n")
    out = d.lines()
    expected = refusal(state, verb)
    if expected is None:
        assert out and not out[0].startswith("500"), out
        assert not any(line.startswith("503") for line in out), out
    else:
        assert out == [str(expected)]
        assert d.conn.state is state


def test_unknown_verbs_are_not_recognized_in_any_state() -> None:
    for state in COMMAND_STATES:
        assert str(refusal(state, "XYZZY")).startswith("500 5.5.2")


PURE_FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time"}


def test_core_imports_no_io_modules() -> None:
    package = Path(postvakt.smtp.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in PURE_FORBIDDEN, f"{path.name} imports {name}"
