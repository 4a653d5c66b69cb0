"""IMAP through Debian's Dovecot, configured by `postvakt dovecot config`, beside `postvakt serve`.

One stack for the module (postvakt and Dovecot each started once); every
test uses its own users and client addresses, so the tests do not meet.
"""

from __future__ import annotations

import imaplib
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imap_client import IMAPFrom, IMAPSFrom, flags_of, imap_login, login_fails, uid_of
from stack import Stack, tls_context

from support import RawClient

PASSWORD = "correct horse"
USERS = {
    f"{name}@pv.test": PASSWORD
    for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace")
}
DENIED = "550 5.7.1 <friend@other.example>: Relaying denied"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack.create(users=USERS)
    try:
        s.cli("alias", "add", "sales@pv.test", "erin@pv.test")
        s.start_postvakt()
        s.start_dovecot()
        yield s
    finally:
        s.close()


def rcpt_reply(stack: Stack, source: str) -> str:
    c = RawClient(stack.port("smtp"), source)
    try:
        assert c.reply().startswith("220")
        assert c.cmd("EHLO client.other.example").startswith("250")
        assert c.cmd("MAIL FROM:<someone@other.example>").startswith("250")
        reply = c.cmd("RCPT TO:<friend@other.example>")
        c.cmd("QUIT")
        return reply
    finally:
        c.close()


def grants(stack: Stack) -> dict[str, tuple[str, str]]:
    rows = json.loads(stack.cli("grants", "list", "--json").stdout)
    return {r["ip"]: (r["protocol"], r["login"]) for r in rows}


# ---------------------------------------------------------------- the config and the certificate


def test_dovecot_presents_postvakts_certificate(stack: Stack) -> None:
    cert = (stack.data_dir / "tls" / "cert.pem").read_text()
    ctx = ssl.create_default_context(cafile=str(stack.data_dir / "tls" / "cert.pem"))
    ctx.check_hostname = False  # the self-signed certificate names mx.pv.test
    m = IMAPSFrom(stack.imaps_port, ssl_context=ctx)  # verified against postvakt's own file
    try:
        der = m.sock.getpeercert(binary_form=True)
        assert der is not None and ssl.DER_cert_to_PEM_cert(der).split() == cert.split()
    finally:
        m.logout()


def test_only_imap_is_served_and_plaintext_login_needs_tls(stack: Stack) -> None:
    assert stack.conf_dir is not None
    conf = stack.conf_dir / "dovecot.conf"
    shown = subprocess.run(
        ["doveconf", "-c", str(conf), "-h", "protocols"], capture_output=True, text=True
    )
    assert shown.stdout.strip() == "imap"
    m = IMAPFrom(stack.imap_port, "127.0.0.2")
    try:
        assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice@pv.test", PASSWORD)
    finally:
        m.shutdown()


# ---------------------------------------------------------------- users, mail, flags


def test_user_added_with_postvakt_sees_flags_and_deletes_what_postvakt_delivered(
    stack: Stack,
) -> None:
    path = stack.deliver("alice@pv.test", "m-alice-1")
    m = IMAPFrom(stack.imap_port)
    try:
        m.starttls(ssl_context=tls_context())
        m.login("Alice@PV.test", PASSWORD)  # login names are read as postvakt reads them
        assert m.select("INBOX")[0] == "OK"
        uid = uid_of(m, "m-alice-1")
        assert uid is not None
        typ, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
        assert typ == "OK" and b"m-alice-1" in data[0][1]
        m.uid("STORE", uid, "+FLAGS", r"(\Seen \Flagged)")
        assert flags_of(m, uid) >= {r"\Seen", r"\Flagged"}
        # Flags are the Maildir info part: the file name before ':' is untouched.
        (now,) = [p for p in stack.maildir_files("alice@pv.test") if b"m-alice-1" in p.read_bytes()]
        assert now.name.split(":")[0] == path.name.split(":")[0]
        assert now.name.endswith(":2,FS")
        m.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
        m.expunge()
        assert uid_of(m, "m-alice-1") is None
    finally:
        m.logout()
    assert not any(b"m-alice-1" in p.read_bytes() for p in stack.maildir_files("alice@pv.test"))


def test_curl_reads_the_message_over_imaps(stack: Stack) -> None:
    stack.deliver("bob@pv.test", "m-bob-1", subject="for curl")
    m = imap_login(stack.imaps_port, "bob@pv.test", PASSWORD)
    try:
        m.select("INBOX", readonly=True)
        uid = uid_of(m, "m-bob-1")
    finally:
        m.logout()
    out = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--cacert",
            str(stack.data_dir / "tls" / "cert.pem"),
            "--resolve",
            f"mx.pv.test:{stack.imaps_port}:127.0.0.1",
            "--user",
            f"bob@pv.test:{PASSWORD}",
            f"imaps://mx.pv.test:{stack.imaps_port}/INBOX;UID={uid}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Subject: for curl" in out.stdout and "m-bob-1" in out.stdout
    wrong = subprocess.run(
        [
            "curl",
            "--silent",
            "--insecure",
            "--user",
            "bob@pv.test:wrong",
            f"imaps://127.0.0.1:{stack.imaps_port}/INBOX",
        ],
        capture_output=True,
        timeout=60,
    )
    assert wrong.returncode == 67  # CURLE_LOGIN_DENIED


def test_wrong_password_unknown_user_and_alias_logins_fail(stack: Stack) -> None:
    assert login_fails(stack.imaps_port, "carol@pv.test", "wrong")
    assert login_fails(stack.imaps_port, "nobody@pv.test", PASSWORD)
    # An alias is no login (as in postvakt's POP3); its mail is in the target's Maildir.
    assert login_fails(stack.imaps_port, "sales@pv.test", PASSWORD)
    stack.deliver("sales@pv.test", "m-sales-1", mailbox="erin@pv.test")
    m = imap_login(stack.imaps_port, "erin@pv.test", PASSWORD)
    try:
        m.select("INBOX", readonly=True)
        assert uid_of(m, "m-sales-1") is not None
    finally:
        m.logout()


def test_password_changed_with_postvakt_counts_at_once(stack: Stack) -> None:
    imap_login(stack.imaps_port, "carol@pv.test", PASSWORD).logout()
    stack.cli("user", "passwd", "carol@pv.test", "--password-stdin", input="new secret\n")
    assert login_fails(stack.imaps_port, "carol@pv.test", PASSWORD)
    imap_login(stack.imaps_port, "carol@pv.test", "new secret").logout()


def test_files_dovecot_writes_belong_to_the_server_user(stack: Stack) -> None:
    """Dovecot's mail and auth processes run as postvakt's user: nothing of root's in its data."""
    imap_login(stack.imaps_port, "alice@pv.test", PASSWORD).logout()
    for top in (stack.mail_dir, stack.data_dir):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                assert (st.st_uid, st.st_gid) == (stack.uid, stack.gid), p
                parent = Path(dirpath).stat().st_mode & 0o777
                if name.startswith("dovecot"):
                    # Dovecot's files are no more open than the Maildir they live in: what
                    # the group or others may do with a file counts only where the directory
                    # lets them in (Dovecot makes its empty uidvalidity marker 0444 whatever
                    # the Maildir's mode).
                    reach = (0o070 if parent & 0o010 else 0) | (0o007 if parent & 0o001 else 0)
                    assert st.st_mode & reach & ~parent == 0, p
    assert (stack.data_dir / "directory.sqlite3-shm").exists()


def dovecot_children(master: int) -> dict[str, set[int]]:
    """Dovecot's processes under its master: process title -> the real uids they run as."""
    out: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid != master:
            continue
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
        out.setdefault(" ".join(title.split()), set()).add(uid)
    return out


def test_auth_worker_and_mail_processes_run_as_the_server_user(stack: Stack) -> None:
    """The processes that open the user database and the Maildirs are postvakt's user's."""
    assert stack.dovecot is not None
    m = imap_login(stack.imaps_port, "grace@pv.test", PASSWORD)
    try:
        m.select("INBOX", readonly=True)
        procs = dovecot_children(stack.dovecot.pid)
    finally:
        m.logout()
    # Titles as Dovecot sets them: "dovecot/auth -w", "dovecot/imap imap-postlogin".
    workers = {t: u for t, u in procs.items() if t.split()[:2] == ["dovecot/auth", "-w"]}
    mail = {t: u for t, u in procs.items() if t.split()[0] == "dovecot/imap"}
    assert workers and mail, sorted(procs.items())
    for title, uids in {**workers, **mail}.items():
        assert uids == {stack.uid}, (title, uids)


# ---------------------------------------------------------------- IMAP-before-SMTP


def test_imap_login_opens_pop_before_smtp_for_that_address_only(stack: Stack) -> None:
    assert rcpt_reply(stack, "127.0.0.2").startswith(DENIED)
    # A login from 127.0.0.3 does not help 127.0.0.2.
    imap_login(stack.imaps_port, "dave@pv.test", PASSWORD, source="127.0.0.3").logout()
    assert rcpt_reply(stack, "127.0.0.2").startswith(DENIED)
    assert rcpt_reply(stack, "127.0.0.3").startswith("250")
    # A failed login from 127.0.0.2 grants nothing.
    assert login_fails(stack.imaps_port, "dave@pv.test", "wrong", source="127.0.0.2")
    assert rcpt_reply(stack, "127.0.0.2").startswith(DENIED)
    # Dovecot runs the post-login script before it answers the login, so the
    # grant is there when the client hears OK: no waiting.
    m = IMAPFrom(stack.imap_port, "127.0.0.2")
    m.starttls(ssl_context=tls_context())
    m.login("dave@pv.test", PASSWORD)
    try:
        assert rcpt_reply(stack, "127.0.0.2").startswith("250")
    finally:
        m.logout()
    assert grants(stack)["127.0.0.2"] == ("imap", "dave@pv.test")
    assert grants(stack)["127.0.0.3"] == ("imap", "dave@pv.test")
    # The table an admin reads: the protocol column says imap.
    listed = stack.cli("grants", "list").stdout.splitlines()
    assert any(line.split()[:3] == ["127.0.0.2", "imap", "dave@pv.test"] for line in listed), listed
    assert "imap login client=127.0.0.2 user=dave@pv.test" in stack.postvakt_log()
    explained = stack.cli(
        "explain", "--client", "127.0.0.2", "--from", "x@other.example", "--to", "y@other.example"
    ).stdout
    assert "IMAP login by dave@pv.test from 127.0.0.2" in explained


FORGER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror)
    raise SystemExit(0)
s.sendall(sys.argv[2].encode() + b"\\n")
print(s.recv(512).decode().strip())
"""


def forge(stack: Stack, line: str, user: str | int) -> str:
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", FORGER, str(stack.data_dir / "grants.sock"), line],
        capture_output=True,
        text=True,
        timeout=60,
        user=user,
        group=stack.gid if user == stack.uid else "nogroup",
        extra_groups=[],
    )
    return out.stdout.strip()


def test_forged_grant_reports_are_refused(stack: Stack) -> None:
    report = "GRANT imap 127.0.0.4 frank@pv.test"
    # Another local user cannot reach the socket at all.
    assert forge(stack, report, "nobody") == "connect: Permission denied"
    # The user Dovecot runs the script as may report, but only real users' logins.
    assert forge(stack, "GRANT imap 127.0.0.4 nosuch@pv.test", stack.uid) == "NO no such user"
    assert forge(stack, "GRANT smtp 127.0.0.4 frank@pv.test", stack.uid).startswith("NO ")
    assert "127.0.0.4" not in grants(stack)
    assert rcpt_reply(stack, "127.0.0.4").startswith(DENIED)
    log = stack.postvakt_log()
    assert "grant report refused" in log and "no such user" in log


def test_the_generated_config_starts_as_written_without_local_settings() -> None:
    """`dovecot -c DIR/dovecot.conf` with nothing beside the generated files (no
    local.conf): it starts, offers STARTTLS on the IMAP port and TLS on the IMAPS port."""
    s = Stack.create(users={"henry@pv.test": PASSWORD})
    try:
        s.write_dovecot_config()
        assert s.conf_dir is not None
        (s.conf_dir / "local.conf").unlink()
        s.run_dovecot()
        m = IMAPFrom(s.imap_port)
        try:
            assert "STARTTLS" in m.capabilities
            m.starttls(ssl_context=tls_context())
            m.login("henry@pv.test", PASSWORD)
        finally:
            m.logout()
        imap_login(s.imaps_port, "henry@pv.test", PASSWORD).logout()
    finally:
        s.close()
