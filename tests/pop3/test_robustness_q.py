"""robustness.md §7 (Q1-Q10) and §4 T3/T7, against the POP3 listeners on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pop3_server_harness import (
    ALICE,
    OTHER_OUTSIDE_IP,
    OUTSIDE_IP,
    PASSWORD,
    LiveServer,
    POP3Raw,
    make_throttle,
)

IN_USE = "-ERR [IN-USE] Mailbox is locked by another session"
AUTH_FAILED = "-ERR [AUTH] Authentication failed"
PLAINTEXT = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


def login_tls(server: LiveServer, source_ip: str = "127.0.0.1") -> POP3Raw:
    c = POP3Raw(server.port("pop3s"), source_ip, tls=True)
    assert c.line().startswith("+OK")
    reply = c.login()
    assert reply.startswith("+OK Logged in"), reply
    return c


def uidl(c: POP3Raw) -> list[str]:
    assert c.cmd("UIDL") == "+OK"
    return [line.split(" ", 1)[1] for line in c.multiline()]


def wait_until(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def retry_login(server: LiveServer) -> str:
    """Log in until the server has noticed a dropped session (connection_lost is asynchronous)."""
    reply = ""
    for _ in range(50):
        c = POP3Raw(server.port("pop3s"), tls=True)
        c.line()
        reply = c.login()
        if reply != IN_USE:
            c.cmd("QUIT")
            c.close()
            return reply
        c.close()
        time.sleep(0.05)
    return reply


# ---------------------------------------------------------------- Q1


def test_q1_mailbox_lock_in_use(server: LiveServer) -> None:
    a = login_tls(server)
    b = POP3Raw(server.port("pop3s"), tls=True)
    b.line()
    assert b.login() == IN_USE
    # [IN-USE] is not a password failure: the session may try again.
    assert a.cmd("QUIT").startswith("+OK")
    assert b.login().startswith("+OK Logged in")
    b.cmd("QUIT")


def test_q1_lock_released_when_session_drops(server: LiveServer) -> None:
    a = login_tls(server)
    a.sock.close()  # no QUIT
    assert retry_login(server).startswith("+OK Logged in")


def test_q1_lock_released_when_holder_process_dies(server: LiveServer, tmp_path: Path) -> None:
    """The lock is an flock: another process holding it blocks us; its death frees it."""
    md = server.maildir()
    md.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from postvakt.mailbox.maildir import MaildirMailbox
                mb = MaildirMailbox.open(Path({str(md)!r}))
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        c = POP3Raw(server.port("pop3s"), tls=True)
        c.line()
        assert c.login() == IN_USE
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        holder.wait(10)
        assert c.login().startswith("+OK Logged in")
        c.cmd("QUIT")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# ---------------------------------------------------------------- Q2


def test_q2_dele_then_drop_keeps_message(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    c = login_tls(server)
    assert c.cmd("DELE 1").startswith("+OK")
    c.sock.close()
    assert retry_login(server) == "+OK Logged in, 1 messages (19 octets)"
    assert len(server.files()) == 1


def test_q2_dele_rset_quit_keeps_message(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    c = login_tls(server)
    assert c.cmd("DELE 1").startswith("+OK")
    assert c.cmd("RSET") == "+OK 1 messages (19 octets)"
    assert c.cmd("QUIT") == "+OK Logging out, 1 messages left"
    assert len(server.files()) == 1


def test_q2_dele_quit_removes_message(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    server.deliver(b"Subject: 2\n\ntwo\n")
    c = login_tls(server)
    assert c.cmd("DELE 1") == "+OK Message 1 deleted"
    assert c.cmd("RETR 1") == "-ERR Message is deleted"
    assert c.cmd("DELE 1") == "-ERR Message is deleted"
    assert c.cmd("STAT") == "+OK 1 19"
    assert c.cmd("LIST") == "+OK 1 messages (19 octets)"
    assert c.multiline() == ["2 19"]
    assert c.cmd("QUIT") == "+OK Logging out, 1 messages left"
    assert c.closed_by_server()
    files = server.files()
    assert len(files) == 1
    assert (server.maildir() / "cur" / files[0]).read_bytes() == b"Subject: 2\n\ntwo\n"


# ---------------------------------------------------------------- Q3


def test_q3_uidl_stable_unique_never_reused(server: LiveServer, tmp_path: Path) -> None:
    for i in range(3):
        server.deliver(f"Subject: {i}\n\nbody {i}\n".encode())
    # A unique name that is no valid UIDL (spaces, too long) gets a stable stand-in.
    server.deliver(b"Subject: odd\n\nodd\n", name="1700000000.odd name " + "x" * 80)
    c = login_tls(server)
    first = uidl(c)
    assert len(first) == 4 and len(set(first)) == 4
    for uid in first:
        assert re.fullmatch(r"[\x21-\x7e]{1,70}", uid), uid
    # Mail that arrives during the session stays invisible until the next one.
    late = server.deliver(b"Subject: late\n\nlate\n")
    assert uidl(c) == first
    assert c.cmd("STAT").startswith("+OK 4 ")
    assert c.cmd("DELE 2").startswith("+OK")
    assert c.cmd("QUIT").startswith("+OK")

    c = login_tls(server)
    second = uidl(c)
    assert sorted(second) == sorted([first[0], first[2], first[3], late])
    assert second.index(late) > second.index(first[0])  # delivery order
    c.cmd("QUIT")
    assert first[1] not in second  # the deleted UID does not come back

    # Across a restart of the server the same UIDs come back.
    server.stop()
    again = LiveServer(tmp_path, users={})
    try:
        c = login_tls(again)
        assert uidl(c) == second
        c.cmd("QUIT")
    finally:
        again.stop()


# ---------------------------------------------------------------- Q4


def test_q4_message_removed_behind_our_back(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    server.deliver(b"Subject: 2\n\ntwo\n")
    c = login_tls(server)
    for f in (server.maildir() / "cur").iterdir():
        if f.read_bytes().startswith(b"Subject: 1"):
            f.unlink()
    assert c.cmd("RETR 1") == "-ERR [SYS/TEMP] Message was removed by another process"
    assert c.cmd("TOP 1 0").startswith("-ERR")
    assert c.cmd("NOOP") == "+OK"
    assert c.cmd("RETR 2") == "+OK 19 octets"
    assert c.multiline() == ["Subject: 2", "", "two"]
    assert c.cmd("DELE 1").startswith("+OK")
    assert c.cmd("QUIT").startswith("+OK")  # deleting what is gone already is no error
    assert len(server.files()) == 1


def test_q4_flags_changed_behind_our_back_still_found(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    c = login_tls(server)
    (f,) = (server.maildir() / "cur").iterdir()
    f.rename(f.with_name(f.name.split(":")[0] + ":2,S"))  # another reader marked it seen
    assert c.cmd("RETR 1") == "+OK 19 octets"
    assert c.multiline()[-1] == "one"
    c.cmd("QUIT")


# ---------------------------------------------------------------- Q5


def capa(c: POP3Raw) -> list[str]:
    assert c.cmd("CAPA").startswith("+OK")
    return c.multiline()


def test_q5_plaintext_refused_before_stls(server: LiveServer) -> None:
    runs_before = server.authenticator.argon2_runs
    c = POP3Raw(server.port("pop3"))
    assert c.line().startswith("+OK")
    caps = capa(c)
    assert "USER" not in caps and not any(x.startswith("SASL") for x in caps)
    assert "STLS" in caps
    assert c.cmd(f"USER {ALICE}") == PLAINTEXT
    assert c.cmd(f"PASS {PASSWORD}") == PLAINTEXT
    assert c.cmd("AUTH PLAIN AGFsaWNlQHB2LnRlc3QAc2VjcmV0") == PLAINTEXT
    # The password was never checked, and no failure was counted against the client.
    assert server.authenticator.argon2_runs == runs_before
    assert server.throttle.failures("127.0.0.1", time.time()) == 0
    assert server.grants.lookup("127.0.0.1", time.time()) is None
    # After STLS the same login works.
    assert c.cmd("STLS") == "+OK Begin TLS negotiation"
    c.starttls()
    caps = capa(c)
    assert "USER" in caps and "SASL PLAIN" in caps and "STLS" not in caps
    assert c.login().startswith("+OK Logged in")
    c.cmd("QUIT")
    # And on 995.
    login_tls(server).cmd("QUIT")


def test_q5_plaintext_allowed_for_networks_only(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, pop3={"plaintext": "networks"})
    try:
        inside = POP3Raw(srv.port("pop3"), "127.0.0.1")
        inside.line()
        assert "USER" in capa(inside)
        assert inside.login().startswith("+OK Logged in")
        inside.cmd("QUIT")
        outside = POP3Raw(srv.port("pop3"), OUTSIDE_IP)
        outside.line()
        assert "USER" not in capa(outside)
        assert outside.cmd(f"USER {ALICE}") == PLAINTEXT
    finally:
        srv.stop()


# ---------------------------------------------------------------- Q6, T3, T7


def test_q6_stls_pipelined_capa_not_answered(server: LiveServer) -> None:
    c = POP3Raw(server.port("pop3"))
    c.line()
    c.send(b"STLS\r\nCAPA\r\n")
    assert c.line() == "+OK Begin TLS negotiation"
    c.starttls()
    c.sock.settimeout(0.7)
    with pytest.raises(TimeoutError):
        c.sock.recv(100)  # nothing unprompted after the handshake
    c.sock.settimeout(10)
    assert c.cmd("NOOP") == "-ERR Command not valid in this state"
    assert c.cmd("CAPA") == "+OK Capability list follows"
    assert "STLS" not in c.multiline()


def test_t3_plaintext_after_stls_fails_handshake(server: LiveServer) -> None:
    c = POP3Raw(server.port("pop3"))
    c.line()
    assert c.cmd("STLS") == "+OK Begin TLS negotiation"
    c.send(b"CAPA\r\n")
    c.sock.settimeout(5)
    data = b""
    try:
        while chunk := c.sock.recv(4096):
            data += chunk
    except (ConnectionError, TimeoutError):
        pass
    assert b"+OK" not in data and b"Capability" not in data


def test_t7_plaintext_to_pop3s_gets_no_banner(server: LiveServer) -> None:
    s = socket.create_connection(("127.0.0.1", server.port("pop3s")), timeout=5)
    s.sendall(b"CAPA\r\n")
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (ConnectionError, TimeoutError):
        pass
    s.close()
    assert b"+OK" not in data


# ---------------------------------------------------------------- Q7


def test_q7_apop_disabled_no_timestamp(server: LiveServer) -> None:
    c = POP3Raw(server.port("pop3s"), tls=True)
    greeting = c.line()
    assert greeting == "+OK POP3 server ready"
    assert not re.search(r"<[^>]*@[^>]*>", greeting)
    assert c.cmd(f"APOP {ALICE} 0123456789abcdef0123456789abcdef") == "-ERR APOP is not enabled"
    assert "APOP" not in " ".join(capa(c))
    assert server.grants.lookup("127.0.0.1", time.time()) is None


# ---------------------------------------------------------------- Q8


def test_q8_failed_login_delay_grows_per_address(tmp_path: Path) -> None:
    """The defaults: a bad PASS answers after >= 2 s, the next one from the same address later still."""
    srv = LiveServer(
        tmp_path, pop3={"fail_delay": 2.0, "fail_delay_max": 15.0}, throttle=make_throttle()
    )
    try:
        times = []
        for _ in range(2):
            c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
            c.line()
            assert c.cmd(f"USER {ALICE}") == "+OK"
            t0 = time.monotonic()
            assert c.cmd("PASS wrong") == AUTH_FAILED
            times.append(time.monotonic() - t0)
            c.close()
        assert times[0] >= 2.0
        assert times[1] >= 4.0 - 0.05
    finally:
        srv.stop()


def test_q8_disconnect_after_max_failures(server: LiveServer) -> None:
    c = POP3Raw(server.port("pop3s"), OUTSIDE_IP, tls=True)
    c.line()
    for _ in range(server.config.pop3.max_failures):
        assert c.cmd(f"USER {ALICE}") == "+OK"
        assert c.cmd("PASS wrong") == AUTH_FAILED
    assert c.closed_by_server()


def test_q8_unknown_user_and_wrong_password_look_alike(tmp_path: Path) -> None:
    srv = LiveServer(
        tmp_path,
        pop3={"fail_delay": 0.4, "fail_delay_max": 0.4},
        throttle=make_throttle(delay_start=0.4, delay_max=0.4),
    )
    try:
        results = []
        for ip, user in ((OUTSIDE_IP, "nosuch@pv.test"), (OTHER_OUTSIDE_IP, ALICE)):
            c = POP3Raw(srv.port("pop3s"), ip, tls=True)
            c.line()
            user_reply = c.cmd(f"USER {user}")
            t0 = time.monotonic()
            pass_reply = c.cmd("PASS wrong")
            results.append((user_reply, pass_reply, time.monotonic() - t0))
            c.close()
        (u1, p1, t1), (u2, p2, t2) = results
        assert u1 == u2 == "+OK"
        assert p1 == p2 == AUTH_FAILED
        # Both wait out the same failure delay before the same reply: the delay
        # the server adds is what is measured, not a round trip on a busy machine.
        assert t1 >= 0.4 and t2 >= 0.4
    finally:
        srv.stop()


def test_q8_guessed_login_refused_from_that_address_fine_from_another(tmp_path: Path) -> None:
    srv = LiveServer(
        tmp_path, throttle=make_throttle(delay_start=0.01, delay_max=0.02, per_login=3)
    )
    try:
        for i in range(3):
            c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
            c.line()
            c.login(password=f"wrong{i}")  # three different guesses (a repeat is no new guess)
            c.close()
        runs = srv.authenticator.argon2_runs
        c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
        c.line()
        assert c.login() == AUTH_FAILED  # the right password, but this login was guessed too often
        assert srv.authenticator.argon2_runs == runs  # refused without checking
        assert srv.grants.lookup(OUTSIDE_IP, time.time()) is None
        other = login_tls(srv, OTHER_OUTSIDE_IP)
        other.cmd("QUIT")
    finally:
        srv.stop()


def test_q8_sys_perm_when_mailbox_is_broken(server: LiveServer) -> None:
    """RFC 3206: [SYS/PERM] for what needs an admin (here: the Maildir is a file), not [AUTH]."""
    md = server.maildir()
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("not a directory")
    c = POP3Raw(server.port("pop3s"), tls=True)
    c.line()
    assert c.login() == "-ERR [SYS/PERM] Mailbox cannot be opened, please contact the administrator"
    assert server.throttle.failures("127.0.0.1", time.time()) == 0
    assert server.grants.lookup("127.0.0.1", time.time()) is None


def test_q8_sys_temp_when_user_database_fails(server: LiveServer) -> None:
    """RFC 3206: [SYS/TEMP] when the check itself failed; the client's password is not blamed."""
    server.directory.close()  # every lookup now raises
    c = POP3Raw(server.port("pop3s"), OUTSIDE_IP, tls=True)
    c.line()
    assert c.login() == "-ERR [SYS/TEMP] Temporary server failure, try again later"
    assert server.throttle.failures(OUTSIDE_IP, time.time()) == 0
    assert c.cmd("QUIT") == "+OK Logging out"


# ---------------------------------------------------------------- Q9


def test_q9_retr_dot_stuffs_and_sends_crlf(server: LiveServer) -> None:
    server.deliver(b"Subject: dots\n\n.leading\n..two\nbare\rcr\nlast line no newline")
    c = login_tls(server)
    c.send(b"RETR 1\r\n")
    raw = b""
    c.sock.settimeout(5)
    while not raw.endswith(b"\r\n.\r\n"):
        raw += c.sock.recv(65536)
    head, _, body = raw.partition(b"\r\n")
    expected = (
        b"Subject: dots\r\n\r\n..leading\r\n...two\r\nbare\r\ncr\r\nlast line no newline\r\n.\r\n"
    )
    assert body == expected
    unstuffed = len(expected) - len(b".\r\n") - 2
    assert head == f"+OK {unstuffed} octets".encode()
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_q9_bad_numbers_and_long_line(server: LiveServer) -> None:
    server.deliver(b"Subject: 1\n\none\n")
    c = login_tls(server)
    for cmd in ("RETR 0", "RETR -1", "RETR 99999999999", "RETR 2", "TOP 1 x", "DELE abc"):
        assert c.cmd(cmd).startswith("-ERR"), cmd
    assert c.cmd("A" * 10_000) == "-ERR Line too long"
    assert c.cmd("RETR 1") == "+OK 19 octets"
    c.multiline()
    c.cmd("QUIT")


# ---------------------------------------------------------------- Q10


def test_q10_login_grants_relay_to_that_address(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, relay={"pop_before_smtp": "2s"})
    try:
        # USER alone and a failed PASS grant nothing.
        c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
        c.line()
        assert c.cmd(f"USER {ALICE}") == "+OK"
        assert srv.grants.lookup(OUTSIDE_IP, time.time()) is None
        assert c.cmd("PASS wrong") == AUTH_FAILED
        assert srv.grants.lookup(OUTSIDE_IP, time.time()) is None
        c.close()
        before = time.time()
        login_tls(srv, OUTSIDE_IP).cmd("QUIT")
        g = srv.grants.lookup(OUTSIDE_IP, time.time())
        assert g is not None and g.login == ALICE
        assert before + 2.0 <= g.expires <= time.time() + 2.0
        assert srv.grants.lookup(OTHER_OUTSIDE_IP, time.time()) is None
        # Renewed by each login.
        time.sleep(0.3)
        login_tls(srv, OUTSIDE_IP).cmd("QUIT")
        g2 = srv.grants.lookup(OUTSIDE_IP, time.time())
        assert g2 is not None and g2.expires > g.expires
        assert wait_until(lambda: srv.grants.lookup(OUTSIDE_IP, time.time()) is None, 4.0)
    finally:
        srv.stop()


def test_q10_in_use_login_grants_nothing(server: LiveServer) -> None:
    a = login_tls(server)
    b = POP3Raw(server.port("pop3s"), OUTSIDE_IP, tls=True)
    b.line()
    assert b.login() == IN_USE
    assert server.grants.lookup(OUTSIDE_IP, time.time()) is None
    a.cmd("QUIT")


def test_q10_zero_disables_granting(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, relay={"pop_before_smtp": 0})
    try:
        login_tls(srv, OUTSIDE_IP).cmd("QUIT")
        assert srv.grants.lookup(OUTSIDE_IP, time.time()) is None
    finally:
        srv.stop()


def test_idle_timeout_closes_without_deleting(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, pop3={"idle_timeout": 0.5})
    try:
        srv.deliver(b"Subject: 1\n\none\n")
        c = login_tls(srv)
        assert c.cmd("DELE 1").startswith("+OK")
        assert c.line() == "-ERR Disconnected for inactivity"
        assert c.closed_by_server()
        assert retry_login(srv).startswith("+OK Logged in, 1 messages")
    finally:
        srv.stop()


def test_login_delay_advertised_and_enforced(tmp_path: Path) -> None:
    """RFC 2449 LOGIN-DELAY: an ISP's polling policy, enforced rather than only advertised."""
    srv = LiveServer(tmp_path, login_delay=1.5)
    try:
        c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
        c.line()
        assert "LOGIN-DELAY 2" in capa(c)
        assert c.login().startswith("+OK Logged in")
        c.cmd("QUIT")
        first = srv.grants.lookup(OUTSIDE_IP, time.time())
        assert first is not None
        c = POP3Raw(srv.port("pop3s"), OUTSIDE_IP, tls=True)
        c.line()
        assert (
            c.login() == "-ERR [LOGIN-DELAY] Logged in too recently, wait before logging in again"
        )
        assert srv.grants.lookup(OUTSIDE_IP, time.time()) == first  # not renewed
        assert srv.throttle.failures(OUTSIDE_IP, time.time()) == 0  # not a guess
        time.sleep(1.6)
        assert c.login().startswith("+OK Logged in")
        c.cmd("QUIT")
    finally:
        srv.stop()


def test_server_stop_ends_sessions_without_deleting(server: LiveServer) -> None:
    from postvakt.server.pop3 import stop_pop3

    server.deliver(b"Subject: 1\n\none\n")
    c = login_tls(server)
    assert c.cmd("DELE 1").startswith("+OK")

    async def stop() -> None:
        stop_pop3(server.servers)

    server.call(stop())
    assert c.line() == "-ERR [SYS/TEMP] Server shutting down, try again later"
    assert c.closed_by_server()
    assert len(server.files()) == 1
    with pytest.raises(OSError):
        POP3Raw(server.port("pop3s"), tls=True).line()


def test_idle_timeout_does_not_fire_while_the_server_checks_a_login(tmp_path: Path) -> None:
    srv = LiveServer(
        tmp_path,
        pop3={"idle_timeout": 0.3, "fail_delay": 0.8, "fail_delay_max": 0.8},
        throttle=make_throttle(delay_start=0.8, delay_max=0.8),
    )
    try:
        c = POP3Raw(srv.port("pop3s"), tls=True)
        c.line()
        assert c.cmd(f"USER {ALICE}") == "+OK"
        assert c.cmd("PASS wrong") == AUTH_FAILED  # 0.8 s of our own delay, no idle cut
        assert c.line() == "-ERR Disconnected for inactivity"  # now the client is idle
    finally:
        srv.stop()
