"""POP3 through postvakt and IMAP through Dovecot on one mailbox: nothing lost, nothing twice.

A seeded random run of 100 operations on one Maildir: postvakt delivers (and
messages also arrive with Dovecot-style names, `,S=<size>,W=<size>`, as
postvakt's delivery may write them), postvakt's POP3 lists and deletes,
Dovecot's IMAP flags, deletes and looks, through one long-lived session and
fresh ones. After every look, each side shows exactly the messages the model
says exist, each once; a message keeps its POP3 UIDL from the first time POP3
saw it to the end, whatever IMAP did to its flags; Dovecot's own POP3 (asked
for here) gives the same UIDLs.
"""

from __future__ import annotations

import email
import imaplib
import json
import os
import poplib
import random
import socket
import time
from collections.abc import Iterator

import pytest
from imap_client import imap_login
from stack import Stack, tls_context

from support import free_port

USER = "mix@pv.test"
# The other tests' own mailboxes: the tests run in any order, and the big one
# knows every message in its mailbox.
NAMES_USER = "names@pv.test"
DOVECOT_POP3_USER = "dpop@pv.test"
PASSWORD = "interleaved"
OPERATIONS = 100
SEED = 1717


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack.create(users={u: PASSWORD for u in (USER, NAMES_USER, DOVECOT_POP3_USER)})
    try:
        s.start_postvakt()
        s.start_dovecot("--pop3", f"127.0.0.1:{free_port()}")
        yield s
    finally:
        s.close()


def message_id_marker(header_bytes: bytes) -> str:
    mid = email.message_from_bytes(header_bytes)["Message-ID"] or ""
    return mid.strip().strip("<>").split("@")[0]


def pop3_view(port: int, *, dovecot: bool = False, user: str = USER) -> dict[str, str]:
    """marker -> UIDL, as a POP3 server lists the mailbox (asserting no marker twice)."""
    p = (
        poplib.POP3("127.0.0.1", port, timeout=30)
        if dovecot
        else poplib.POP3_SSL("127.0.0.1", port, context=tls_context(), timeout=30)
    )
    try:
        if dovecot:
            p.stls(context=tls_context())
        p.user(user)
        p.pass_(PASSWORD)
        return _listing(p)
    finally:
        p.quit()


def _listing(p: poplib.POP3) -> dict[str, str]:
    view: dict[str, str] = {}
    for line in p.uidl()[1]:
        num, uidl = line.decode().split()
        marker = message_id_marker(b"\n".join(p.top(int(num), 0)[1]))
        assert marker not in view, f"{marker} listed twice by POP3"
        view[marker] = uidl
    return view


def pop3_delete(port: int, marker: str) -> None:
    p = poplib.POP3_SSL("127.0.0.1", port, context=tls_context(), timeout=30)
    try:
        p.user(USER)
        p.pass_(PASSWORD)
        for line in p.uidl()[1]:
            num = int(line.decode().split()[0])
            if message_id_marker(b"\n".join(p.top(num, 0)[1])) == marker:
                p.dele(num)
                break
        else:
            raise AssertionError(f"{marker} not found by POP3 to delete")
    finally:
        p.quit()  # the deletion happens here (RFC 1939 UPDATE state)


def imap_view(m: imaplib.IMAP4) -> dict[str, str]:
    """marker -> IMAP UID in INBOX (asserting no marker twice)."""
    m.noop()
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    view: dict[str, str] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        head = item[0].decode()
        uid = head[head.index("UID ") + 4 :].split()[0].rstrip(")")
        marker = message_id_marker(item[1])
        assert marker not in view, f"{marker} listed twice by IMAP"
        view[marker] = uid
    return view


def drop_dovecot_style(stack: Stack, marker: str, user: str = USER) -> None:
    """A message arriving with ',S=,W=' sizes in its name (written tmp/ -> new/, as delivery does)."""
    body = (
        f"From: <s@other.example>\nTo: <{user}>\nSubject: sized\n"
        f"Message-ID: <{marker}@other.example>\n\n{marker}\n"
    ).encode()
    wire = body.replace(b"\n", b"\r\n")
    now = time.time_ns()
    name = (
        f"{now // 10**9}.M{(now // 1000) % 10**6}P{os.getpid()}Q{marker}.test"
        f",S={len(body)},W={len(wire)}"
    )
    root = stack.maildir(user)
    tmp = root / "tmp" / name
    tmp.write_bytes(body)
    os.chown(tmp, stack.uid, stack.gid)
    os.chmod(tmp, 0o600)
    os.rename(tmp, root / "new" / name)


# 100 operations, each a POP3 or IMAP session or a delivery, on a machine others share.
@pytest.mark.timeout(900)
def test_pop3_and_imap_interleaved_lose_nothing_and_keep_uidls(stack: Stack) -> None:
    rng = random.Random(SEED)
    pop3s = stack.port("pop3s")
    present: set[str] = set()
    uidls: dict[str, str] = {}
    counter = 0
    imap: imaplib.IMAP4 = imap_login(stack.imaps_port, USER, PASSWORD)
    imap.select("INBOX")
    done: list[str] = []

    def check_pop3() -> None:
        view = pop3_view(pop3s)
        assert set(view) == present, done[-5:]
        for marker, uidl in view.items():
            assert uidls.setdefault(marker, uidl) == uidl, f"UIDL of {marker} changed"

    def check_imap() -> None:
        assert set(imap_view(imap)) == present, done[-5:]

    for _ in range(OPERATIONS):
        choices = ["deliver", "deliver", "pop3", "imap", "reconnect"]
        if present:
            choices += ["pop3_delete", "imap_delete", "imap_flag", "imap_flag"]
        op = rng.choice(choices)
        done.append(op)
        if op == "deliver":
            counter += 1
            marker = f"mix-{counter}"
            if rng.random() < 0.3:
                drop_dovecot_style(stack, marker)
            else:
                stack.deliver(USER, marker)
            present.add(marker)
        elif op == "pop3":
            check_pop3()
        elif op == "imap":
            check_imap()
        elif op == "reconnect":
            imap.logout()
            imap = imap_login(stack.imaps_port, USER, PASSWORD)
            imap.select("INBOX")
        elif op == "pop3_delete":
            marker = rng.choice(sorted(present))
            pop3_delete(pop3s, marker)
            present.discard(marker)
            check_imap()  # what POP3 deleted is gone from IMAP
        elif op == "imap_delete":
            marker = rng.choice(sorted(present))
            uid = imap_view(imap)[marker]
            imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
            imap.expunge()
            present.discard(marker)
            check_pop3()  # what IMAP expunged is gone from POP3
        elif op == "imap_flag":
            marker = rng.choice(sorted(present))
            uid = imap_view(imap)[marker]
            flags = rng.sample([r"\Seen", r"\Flagged", r"\Answered", r"\Draft"], 2)
            imap.uid("STORE", uid, rng.choice(["+FLAGS", "-FLAGS"]), f"({' '.join(flags)})")
    check_pop3()
    check_imap()
    imap.logout()
    # Every message POP3 ever saw kept its UIDL; Dovecot's POP3 agrees on each.
    assert stack.pop3_port
    assert pop3_view(stack.pop3_port, dovecot=True) == pop3_view(pop3s)
    assert counter > 20 and "pop3_delete" in done and "imap_delete" in done


def test_maildir_files_keep_their_unique_names_across_imap_flag_changes(stack: Stack) -> None:
    """What makes the UIDLs stable: Dovecot changes only the info part after ':2,'."""
    stack.deliver(NAMES_USER, "names-1")
    drop_dovecot_style(stack, "names-2", NAMES_USER)
    before = {
        p.name.split(":")[0] for p in stack.maildir_files(NAMES_USER) if b"names-" in p.read_bytes()
    }
    m = imap_login(stack.imaps_port, NAMES_USER, PASSWORD)
    try:
        m.select("INBOX")
        view = imap_view(m)
        for marker in ("names-1", "names-2"):
            m.uid("STORE", view[marker], "+FLAGS", r"(\Seen \Flagged)")
    finally:
        m.logout()
    after = [p for p in stack.maildir_files(NAMES_USER) if b"names-" in p.read_bytes()]
    assert {p.name.split(":")[0] for p in after} == before
    assert all(p.parent.name == "cur" and p.name.endswith(":2,FS") for p in after)
    assert any(",S=" in n and ",W=" in n for n in before)


class POP3From(poplib.POP3):
    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def test_dovecot_pop3_when_asked_reports_pop3_grants(stack: Stack) -> None:
    p = POP3From(stack.pop3_port, "127.0.0.6")
    try:
        p.stls(context=tls_context())
        p.user(DOVECOT_POP3_USER)
        p.pass_(PASSWORD)
    finally:
        p.quit()
    rows = json.loads(stack.cli("grants", "list", "--json").stdout)
    assert {"ip": "127.0.0.6", "protocol": "pop3", "login": DOVECOT_POP3_USER} in [
        {k: r[k] for k in ("ip", "protocol", "login")} for r in rows
    ]
