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


# The replies written out, not taken from the code under test: RFC 5321 §4.3.2
# (503 for a bad sequence of commands, 502 not implemented, 252 for VRFY as
# §3.5.3 allows, 214 for HELP, 221 for QUIT), RFC 3463 enhanced codes (5.5.1
# invalid command, 5.5.2 syntax) and the Postfix wording DESIGN.md follows.
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NESTED = "503 5.5.1 Error: nested MAIL command"
IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
NOT_IMPLEMENTED = "502 5.5.1 Error: command not implemented"
HELP = "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
VRFY = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
OK = "250 2.0.0 Ok"
BYE = "221 2.0.0 Bye"
TLS_ACTIVE = "554 5.5.1 Error: TLS already active"  # RFC 3207 §4: no second STARTTLS
EHLO_REPLY = "250-mx.pv.test"  # the first line; the keywords have tests of their own
UNKNOWN = "500 5.5.2 Error: command not recognized"

# (state, command) -> (the first reply line, the state after it). The session
# runs with TLS active and the harness's application, which accepts everything.
EXPECTED: dict[tuple[State, str], tuple[str, State]] = {
    (State.GREETED, "AUTH"): (NEED_HELO, State.GREETED),
    (State.GREETED, "DATA"): (NEED_RCPT, State.GREETED),
    (State.GREETED, "EHLO"): (EHLO_REPLY, State.READY),
    (State.GREETED, "EXPN"): (NOT_IMPLEMENTED, State.GREETED),
    (State.GREETED, "HELO"): ("250 mx.pv.test", State.READY),
    (State.GREETED, "HELP"): (HELP, State.GREETED),
    (State.GREETED, "MAIL"): (NEED_HELO, State.GREETED),
    (State.GREETED, "NOOP"): (OK, State.GREETED),
    (State.GREETED, "QUIT"): (BYE, State.CLOSED),
    (State.GREETED, "RCPT"): (NEED_MAIL, State.GREETED),
    (State.GREETED, "RSET"): (OK, State.GREETED),
    (State.GREETED, "STARTTLS"): (TLS_ACTIVE, State.GREETED),
    (State.GREETED, "VRFY"): (VRFY, State.GREETED),
    (State.MAIL, "AUTH"): (IN_TRANSACTION, State.MAIL),
    (State.MAIL, "DATA"): (NEED_RCPT, State.MAIL),
    (State.MAIL, "EHLO"): (EHLO_REPLY, State.READY),
    (State.MAIL, "EXPN"): (NOT_IMPLEMENTED, State.MAIL),
    (State.MAIL, "HELO"): ("250 mx.pv.test", State.READY),
    (State.MAIL, "HELP"): (HELP, State.MAIL),
    (State.MAIL, "MAIL"): (NESTED, State.MAIL),
    (State.MAIL, "NOOP"): (OK, State.MAIL),
    (State.MAIL, "QUIT"): (BYE, State.CLOSED),
    (State.MAIL, "RCPT"): ("250 2.1.5 Ok", State.RCPT),
    (State.MAIL, "RSET"): (OK, State.READY),
    (State.MAIL, "STARTTLS"): (IN_TRANSACTION, State.MAIL),
    (State.MAIL, "VRFY"): (VRFY, State.MAIL),
    (State.RCPT, "AUTH"): (IN_TRANSACTION, State.RCPT),
    (State.RCPT, "DATA"): ("354 End data with <CR><LF>.<CR><LF>", State.DATA),
    (State.RCPT, "EHLO"): (EHLO_REPLY, State.READY),
    (State.RCPT, "EXPN"): (NOT_IMPLEMENTED, State.RCPT),
    (State.RCPT, "HELO"): ("250 mx.pv.test", State.READY),
    (State.RCPT, "HELP"): (HELP, State.RCPT),
    (State.RCPT, "MAIL"): (NESTED, State.RCPT),
    (State.RCPT, "NOOP"): (OK, State.RCPT),
    (State.RCPT, "QUIT"): (BYE, State.CLOSED),
    (State.RCPT, "RCPT"): ("250 2.1.5 Ok", State.RCPT),
    (State.RCPT, "RSET"): (OK, State.READY),
    (State.RCPT, "STARTTLS"): (IN_TRANSACTION, State.RCPT),
    (State.RCPT, "VRFY"): (VRFY, State.RCPT),
    (State.READY, "AUTH"): ("235 2.7.0 Authentication successful", State.READY),
    (State.READY, "DATA"): (NEED_RCPT, State.READY),
    (State.READY, "EHLO"): (EHLO_REPLY, State.READY),
    (State.READY, "EXPN"): (NOT_IMPLEMENTED, State.READY),
    (State.READY, "HELO"): ("250 mx.pv.test", State.READY),
    (State.READY, "HELP"): (HELP, State.READY),
    (State.READY, "MAIL"): ("250 2.1.0 Ok", State.MAIL),
    (State.READY, "NOOP"): (OK, State.READY),
    (State.READY, "QUIT"): (BYE, State.CLOSED),
    (State.READY, "RCPT"): (NEED_MAIL, State.READY),
    (State.READY, "RSET"): (OK, State.READY),
    (State.READY, "STARTTLS"): (TLS_ACTIVE, State.READY),
    (State.READY, "VRFY"): (VRFY, State.READY),
}


def test_expected_table_covers_every_state_and_command() -> None:
    assert set(EXPECTED) == {(s, v) for s in COMMAND_STATES for v in COMMANDS}


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
    reply, after = EXPECTED[(state, verb)]
    assert out[0] == reply
    if verb != "EHLO":
        assert len(out) == 1, out
    assert d.conn.state is after
    # The table in _state.py agrees: a refused command is one it lists as refused.
    refused = refusal(state, verb)
    assert (refused is not None) == reply.startswith("503"), (state, verb)
    if refused is not None:
        assert str(refused) == reply


@pytest.mark.parametrize("state", COMMAND_STATES, ids=lambda s: s.value)
def test_unknown_verbs_are_not_recognized_in_any_state(state: State) -> None:
    d = Driver(settings(tls_active=True))
    if SETUP[state]:
        d.feed(SETUP[state])
    d.take()
    d.feed(b"XYZZY\r\n")
    assert d.lines() == [UNKNOWN]
    assert d.conn.state is state


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
