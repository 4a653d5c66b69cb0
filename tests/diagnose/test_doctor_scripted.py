"""The doctor against scripted servers on loopback: cases that need a server
we cannot start here (a firewall that swallows port 25, an expired
certificate, qmail's wording), and a recording server that proves no DATA is sent.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from doctor_fakeserver import FakeServer, Script

from postvakt.cli.diagnose import doctor
from postvakt.diagnose.client import POP3_ALLOWED, SMTP_ALLOWED, SMTPProbe, check_command
from postvakt.diagnose.doctor import DoctorOptions, diagnose
from support import free_port

OUTSIDE = "127.0.0.2"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA, *names: str, expired: bool = False) -> ssl.SSLContext:
    kwargs: dict[str, datetime.datetime] = {}
    if expired:
        now = datetime.datetime.now(datetime.UTC)
        kwargs = {
            "not_before": now - datetime.timedelta(days=400),
            "not_after": now - datetime.timedelta(days=3),
        }
    cert = ca.issue_cert(*(names or ("fake.test",)), **kwargs)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for s in started:
        s.stop()


def start(
    servers: list[FakeServer], script: Script, ctx: ssl.SSLContext | None = None
) -> FakeServer:
    s = FakeServer(script, tls_context=ctx)
    servers.append(s)
    return s


def options(port: int, **kw: object) -> DoctorOptions:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "alice@fake.test",
        "rcpt": "bob@elsewhere.example",
        "ports": {"smtp": port, "submission": free_port(), "submissions": free_port()},
        "timeout": 2.0,
        "source": OUTSIDE,
    }
    base.update(kw)
    return DoctorOptions(**base)  # type: ignore[arg-type]


def test_client_has_no_way_to_send_data() -> None:
    assert not {"DATA", "BDAT"} & SMTP_ALLOWED
    c = SMTPProbe("127.0.0.1", 1)
    for line in ("DATA", "data", "BDAT 10 LAST", "VRFY root"):
        with pytest.raises(ValueError, match="never sends"):
            c.command(line)


@pytest.mark.parametrize(
    ("line", "bare_cr_ok"),
    [
        ("MAIL FROM:<x@y>\r\nDATA", True),
        ("RCPT TO:<x@y>\nDATA", True),
        ("RCPT TO:<v@x\rDATA>", True),
        ("RCPT TO:<v@x\r bdat 10>", True),
        ("RCPT TO:<v@x\r>", False),
    ],
)
def test_no_second_line_can_be_smuggled_into_a_command(line: str, bare_cr_ok: bool) -> None:
    with pytest.raises(ValueError, match="never sends"):
        check_command(line, SMTP_ALLOWED, allow_bare_cr=bare_cr_ok)


def test_relay_trick_with_bare_cr_is_allowed_only_for_the_relay_test() -> None:
    check_command("RCPT TO:<v@x.example\r>", SMTP_ALLOWED, allow_bare_cr=True)
    with pytest.raises(ValueError):
        check_command("PASS secret\rDELE 1", POP3_ALLOWED)


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "x@y.example>\r\nDATA"],
        ["--to", "<x@y.example>"],
        ["--from", "a b@c.example"],
        ["--user", "alice\x00"],
    ],
)
def test_cli_refuses_addresses_that_are_not_bare(args: list[str]) -> None:
    base = {"--server": "127.0.0.1:1", "--from": "a@b.example", "--to": "c@d.example"}
    base[args[0]] = args[1]
    argv = [x for kv in base.items() for x in kv]
    r = CliRunner().invoke(doctor, argv)
    assert r.exit_code == 2, r.output


def test_cli_refuses_password_with_control_characters() -> None:
    argv = ["--server", "127.0.0.1:1", "--from", "a@b.example", "--to", "c@d.example"]
    r = CliRunner().invoke(
        doctor, [*argv, "--user", "a", "--password-stdin"], input="pw\x00DELE 1\n"
    )
    assert r.exit_code == 2


def test_recording_server_sees_no_data_on_a_full_run(
    servers: list[FakeServer], ca: trustme.CA
) -> None:
    fake = start(
        servers,
        Script(starttls=True, auth_plain="PLAIN LOGIN", auth_after_tls_only=True),
        server_ctx(ca),
    )
    d = diagnose(options(fake.port, login="alice@fake.test", password="pw", tls_name="fake.test"))
    assert d.case == "ok" and d.accepted and d.exit_code == 0
    assert fake.connections >= 2
    verbs = set(fake.verbs())
    assert "DATA" not in verbs and "BDAT" not in verbs
    assert verbs <= SMTP_ALLOWED, verbs - SMTP_ALLOWED
    assert {"MAIL", "RCPT", "QUIT"} <= verbs
    for p in d.probes:
        assert not any(line.startswith("C: DATA") for line in p.transcript)


def test_password_never_appears_in_transcript(servers: list[FakeServer], ca: trustme.CA) -> None:
    fake = start(servers, Script(starttls=True, auth_plain="PLAIN"), server_ctx(ca))
    d = diagnose(options(fake.port, login="alice@fake.test", password="hunter2-secret"))
    text = json.dumps([p.transcript for p in d.probes])
    assert "hunter2-secret" not in text
    assert base64.b64encode(b"\0alice@fake.test\0hunter2-secret").decode() not in text
    assert "AUTH PLAIN <credentials hidden>" in text


def test_swallowed_connection_is_port_blocked(servers: list[FakeServer]) -> None:
    fake = start(servers, Script(silent=True))
    d = diagnose(options(fake.port, timeout=1.0))
    assert d.case == "port_blocked"
    assert d.exit_code == 1
    assert any(f.id == "port_no_banner" for f in d.findings)


def test_syn_timeout_is_port_blocked_and_names_the_open_ports(servers: list[FakeServer]) -> None:
    """A full accept queue drops SYNs: the connect times out, as behind a filtering firewall."""
    blocked = socket.socket()
    blocked.bind(("127.0.0.1", 0))
    blocked.listen(0)
    port = blocked.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        submission = start(servers, Script())
        d = diagnose(
            options(
                port,
                timeout=1.5,
                ports={"smtp": port, "submission": submission.port, "submissions": free_port()},
            )
        )
        assert d.case == "port_blocked"
        assert d.exit_code == 1
        assert any(f.id == "port25_blocked" for f in d.findings)
        assert str(submission.port) in d.to_text("en")
    finally:
        for c in fillers:
            c.close()
        blocked.close()


def test_nothing_listening_is_connection_refused() -> None:
    port = free_port()
    d = diagnose(options(port))
    assert d.case == "connection_refused" and d.exit_code == 1


def test_plaintext_on_the_ssl_port_is_a_tls_problem(servers: list[FakeServer]) -> None:
    fake = start(servers, Script())
    d = diagnose(options(fake.port, security="ssl"))
    assert d.case == "tls_problem" and d.exit_code == 1


def test_starttls_demanded_but_not_offered_is_a_tls_problem(servers: list[FakeServer]) -> None:
    fake = start(servers, Script(starttls=False))
    d = diagnose(options(fake.port, security="starttls"))
    assert d.case == "tls_problem"
    assert any(f.id == "starttls_missing" for f in d.findings)


def test_expired_and_misnamed_certificate_are_findings(
    servers: list[FakeServer], ca: trustme.CA, tmp_path: Path
) -> None:
    fake = start(servers, Script(starttls=True), server_ctx(ca, "other.test", expired=True))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    d = diagnose(options(fake.port, tls_name="fake.test", cafile=cafile))
    ids = {f.id for f in d.findings}
    assert {"cert_expired", "cert_name_mismatch"} <= ids
    # The mail itself was accepted (the doctor tells, the client decides).
    assert d.case == "ok"


def test_trusted_certificate_is_ok(
    servers: list[FakeServer], ca: trustme.CA, tmp_path: Path
) -> None:
    fake = start(servers, Script(starttls=True), server_ctx(ca, "fake.test"))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    d = diagnose(options(fake.port, tls_name="fake.test", cafile=cafile))
    ids = {f.id for f in d.findings}
    assert "cert_ok" in ids
    assert not ids & {"cert_expired", "cert_name_mismatch", "cert_untrusted", "cert_self_signed"}


def test_untrusted_certificate_without_cafile(servers: list[FakeServer], ca: trustme.CA) -> None:
    fake = start(servers, Script(starttls=True), server_ctx(ca, "fake.test"))
    d = diagnose(options(fake.port, tls_name="fake.test"))
    assert "cert_untrusted" in {f.id for f in d.findings}


@pytest.mark.parametrize(
    ("script", "kw", "case"),
    [
        (
            Script(
                rcpt_reply="553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
            ),
            {},
            "relay_denied_no_auth",
        ),
        (Script(rcpt_reply="550 relay not permitted"), {}, "relay_denied_no_auth"),
        (
            Script(rcpt_reply="454 4.7.1 <bob@elsewhere.example>: Relay access denied"),
            {},
            "relay_denied_no_auth",
        ),
        (
            Script(
                rcpt_reply="550 5.1.1 <bob@elsewhere.example>: Recipient address rejected: User unknown"
            ),
            {},
            "recipient_unknown",
        ),
        (Script(mail_reply="530 5.7.0 Must issue a STARTTLS command first"), {}, "tls_required"),
        (
            Script(mail_reply="530 5.7.0 Authentication required", auth_plain="PLAIN"),
            {},
            "auth_not_used",
        ),
        (
            Script(auth_plain="PLAIN", auth_reply="535 Incorrect authentication data"),
            {"login": "alice@fake.test", "password": "x"},
            "auth_failed",
        ),
        (
            Script(
                auth_plain="PLAIN",
                rcpt_reply="554 5.7.1 <bob@elsewhere.example>: Relay access denied",
            ),
            {"login": "alice@fake.test", "password": "x"},
            "relay_denied_after_auth",
        ),
        (
            Script(auth_reply="503 5.5.1 Error: authentication not enabled"),
            {"login": "alice@fake.test", "password": "x"},
            "auth_unavailable",
        ),
        (
            Script(banner="554 5.7.1 fake.test: your address is listed"),
            {},
            "server_rejects_connection",
        ),
        (Script(mail_reply="451 4.3.0 try later"), {}, "temporary_failure"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_case_named_from_the_reply(
    servers: list[FakeServer], script: Script, kw: dict[str, object], case: str
) -> None:
    fake = start(servers, script)
    d = diagnose(options(fake.port, **kw))
    assert d.case == case, d.to_text("en", verbose=True)
    assert d.exit_code == 1 and not d.accepted
    assert "DATA" not in fake.verbs()


def test_auth_after_tls_only_with_tls_off(servers: list[FakeServer], ca: trustme.CA) -> None:
    fake = start(
        servers,
        Script(starttls=True, auth_plain="PLAIN", auth_after_tls_only=True),
        server_ctx(ca),
    )
    d = diagnose(options(fake.port, security="none", login="alice@fake.test", password="pw"))
    assert d.case == "auth_requires_tls" and d.exit_code == 1
    assert "auth_after_tls_only" in {f.id for f in d.findings}


def test_cli_json_and_swedish(servers: list[FakeServer]) -> None:
    fake = start(
        servers, Script(rcpt_reply="554 5.7.1 <bob@elsewhere.example>: Relay access denied")
    )
    args = [
        "--server",
        f"127.0.0.1:{fake.port}",
        "--from",
        "alice@fake.test",
        "--to",
        "bob@elsewhere.example",
        "--source-address",
        OUTSIDE,
        "--timeout",
        "2",
        "--ports",
        f"smtp={fake.port},submission={free_port()},submissions={free_port()}",
    ]
    r = CliRunner().invoke(doctor, [*args, "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["case"] == "relay_denied_no_auth" and doc["accepted"] is False
    assert any(p["name"] == "as_configured" for p in doc["probes"])
    assert all(f["id"] and f["text"] for f in doc["findings"])
    r = CliRunner().invoke(doctor, [*args, "--lang", "sv"])
    assert r.exit_code == 1
    assert "Vidarebefordran nekad" in r.output
    assert "Inget brev skickades" in r.output


def test_cli_needs_server_or_explain() -> None:
    r = CliRunner().invoke(doctor, ["--from", "a@b.test"])
    assert r.exit_code == 2
    assert "--server" in r.output


def test_cli_refuses_password_without_stdin(servers: list[FakeServer]) -> None:
    r = CliRunner().invoke(
        doctor, ["--server", "127.0.0.1:1", "--from", "a@b.test", "--to", "c@d.test", "--user", "a"]
    )
    assert r.exit_code == 2


def test_hangup_mid_session_names_the_stage(servers: list[FakeServer]) -> None:
    fake = start(servers, Script(hangup_on="MAIL"))
    d = diagnose(options(fake.port))
    assert d.case == "rejected_other" and d.exit_code == 1
    main = next(p for p in d.probes if p.name == "as_configured")
    assert (main.stage, main.outcome) == ("mail", "closed")


def test_too_many_errors(servers: list[FakeServer]) -> None:
    fake = start(servers, Script(mail_reply="421 4.7.0 fake.test Error: too many errors"))
    assert diagnose(options(fake.port)).case == "too_many_errors"
