"""The client matrix (issue 18): the mail programs people run, against the real
`postvakt serve`, with the settings the README gives them.

Submission: msmtp, s-nail, mutt (batch mode), swaks and curl on 587 (STARTTLS)
and 465 (implicit TLS), with each mechanism they offer for our PLAIN and LOGIN,
and with no mechanism named (their own default choice). Each message must
arrive with its body byte for byte (a SHA-256 of it), dot lines included.

POP3: fetchmail, getmail6, mpop, curl and poplib on 110 (STLS, where the
program can) and 995; the programs with a keep mode fetch twice and must not
fetch a message again.

Refusals: the server's text (or, where a program shows none, its own words for
it) must reach the program's output, e.g. "Sender address rejected: not owned
by user".

Every program trusts exactly our self-signed certificate (README: "Pointing
mail programs at a self-signed certificate") and connects to `localhost`,
which the certificate covers (s-nail and fetchmail ignore IP address entries).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, Running, free_port, start_server, wait_maildir

ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
NOT_ALICES = f"carol@{LOCAL_DOMAIN}"
PASSWORD = "Pass word 1"  # a space: passwords are not words
HOST = "localhost"
RUN_TIMEOUT = 90

# A body that exercises transparency: lone dots, dot-prefixed lines, a line
# that looks like an mbox separator, tabs, an empty line, a long line.
BODY_LINES = [
    "First line of the matrix test.",
    ".",
    "..two dots at the start",
    ".one dot at the start",
    "From the start of a line, as mbox would quote it",
    "\tindented with a tab",
    "",
    "x" * 200,
    "last line",
]
NOT_OWNED = f"Sender address rejected: not owned by user {ALICE}"
AUTH_INVALID = "Authentication credentials invalid"
POP3_AUTH_FAILED = "-ERR [AUTH] Authentication failed"
POP3_PLAINTEXT = "Plaintext authentication disallowed"


def have(program: str) -> bool:
    return shutil.which(program) is not None


def needs(program: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not have(program),
        reason=f"{program} (Debian package) is not installed; .ci/run installs it",
    )


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server for the matrix. Each listener is on 127.0.0.1 and, where the
    machine has it, on ::1 with the same port: `localhost` may be either."""
    hosts = ["127.0.0.1"] + (["[::1]"] if ipv6_loopback() else [])
    listen = {}
    for kind in ("smtp", "submission", "submissions", "pop3", "pop3s"):
        port = free_port()
        listen[kind] = [f"{h}:{port}" for h in hosts]
    srv = start_server(
        tmp_path_factory.mktemp("matrix"),
        users={ALICE: PASSWORD, BOB: PASSWORD},
        listen=listen,
        relay={"networks": ["127.0.0.1/32", "::1/128"]},
        # Wrong passwords are part of the matrix: no penalty worth waiting for.
        limits={"auth_failures": 1000, "auth_delay": 0.01, "auth_delay_max": 0.02},
        pop3={"fail_delay": 0.01, "fail_delay_max": 0.02},
    )
    try:
        yield srv
    finally:
        srv.stop()


def cert(srv: Running) -> str:
    return str(srv.data_dir / "tls" / "cert.pem")


def run(
    args: list[str], *, home: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "HOME": str(home), "LC_ALL": "C"},
        cwd=home,
    )
    return subprocess.CompletedProcess(
        r.args,
        r.returncode,
        r.stdout.decode("utf-8", "replace"),
        r.stderr.decode("utf-8", "replace"),
    )


def output(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout + r.stderr


# ---------------------------------------------------------------- messages


def body_text() -> str:
    return "\n".join(BODY_LINES) + "\n"


def body_digest(message: bytes) -> str:
    """SHA-256 of a message's body after its transfer encoding (s-nail and mutt
    choose quoted-printable for the long line), LF line endings, trailing
    newlines ignored."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert not parsed.is_multipart(), message[:500]
    body = parsed.get_payload(decode=True)
    assert isinstance(body, bytes), message[:500]
    return hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip(b"\n")).hexdigest()


EXPECTED = hashlib.sha256(body_text().rstrip("\n").encode()).hexdigest()


def whole_message(token: str, sender: str = ALICE) -> bytes:
    head = (
        f"From: {sender}\nTo: {BOB}\nSubject: matrix {token}\n"
        f"Message-ID: <{token}@pv.test>\nDate: Mon, 30 Nov 2026 12:00:00 +0100\n"
    )
    return (head + "\n" + body_text()).replace("\n", "\r\n").encode()


def arrived(srv: Running, token: str, mailbox: str = BOB) -> bytes:
    msgs = wait_maildir(srv.data_dir, mailbox, containing=token.encode())
    assert len(msgs) == 1, f"{len(msgs)} copies of {token} in {mailbox}\n{srv.log()[-3000:]}"
    return msgs[0]


# ---------------------------------------------------------------- submission programs


@dataclass(frozen=True)
class Send:
    srv: Running
    kind: str  # submission (587, STARTTLS) | submissions (465)
    mechanism: str | None  # None: the program's own choice
    token: str
    home: Path
    sender: str = ALICE
    password: str = PASSWORD

    @property
    def port(self) -> int:
        return self.srv.port(self.kind)

    @property
    def implicit(self) -> bool:
        return self.kind == "submissions"

    def message_file(self) -> Path:
        p = self.home / f"{self.token}.eml"
        p.write_bytes(whole_message(self.token, self.sender))
        return p


def msmtp(s: Send) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "msmtp",
            f"--host={HOST}",
            f"--port={s.port}",
            "--tls=on",
            f"--tls-starttls={'off' if s.implicit else 'on'}",
            f"--tls-trust-file={cert(s.srv)}",
            f"--auth={(s.mechanism or 'on').lower()}",
            f"--user={ALICE}",
            f"--passwordeval=printf '%s' '{s.password}'",
            f"--from={s.sender}",
            BOB,
        ],
        home=s.home,
        stdin=whole_message(s.token, s.sender),
    )


def s_nail(s: Send) -> subprocess.CompletedProcess[str]:
    user = ALICE.replace("@", "%40")
    password = s.password.replace(" ", "%20")
    scheme = "smtps" if s.implicit else "smtp"
    args = [
        "s-nail",
        "-:/",  # no resource files
        "-#",  # batch mode
        "-Sv15-compat",
        "-Snosave",
        f"-Smta={scheme}://{user}:{password}@{HOST}:{s.port}",
        f"-Stls-ca-file={cert(s.srv)}",
        f"-Sfrom={s.sender}",
        "-s",
        f"matrix {s.token}",
    ]
    if not s.implicit:
        args.append("-Ssmtp-use-starttls")
    if s.mechanism:
        args.append(f"-Ssmtp-auth={s.mechanism.lower()}")
    return run([*args, BOB], home=s.home, stdin=body_text().encode())


def mutt(s: Send) -> subprocess.CompletedProcess[str]:
    scheme = "smtps" if s.implicit else "smtp"
    settings = [
        f"set smtp_url='{scheme}://{ALICE.replace('@', '%40')}@{HOST}:{s.port}/'",
        f"set smtp_pass='{s.password}'",
        "set ssl_starttls=yes",
        "set ssl_force_tls=yes",
        f"set ssl_ca_certificates_file='{cert(s.srv)}'",
        f"set from='{s.sender}'",
        "set record=''",
        f"set smtp_authenticators='{(s.mechanism or '').lower()}'",
    ]
    return run(
        [
            "mutt",
            "-n",
            "-F",
            "/dev/null",
            "-e",
            "; ".join(settings),
            "-s",
            f"matrix {s.token}",
            BOB,
        ],
        home=s.home,
        stdin=body_text().encode(),
    )


def swaks(s: Send) -> subprocess.CompletedProcess[str]:
    args = [
        "swaks",
        "--server",
        HOST,
        "--port",
        str(s.port),
        "--tlsc" if s.implicit else "--tls",
        "--tls-verify",
        "--tls-ca-path",
        cert(s.srv),
        "--auth-user",
        ALICE,
        "--auth-password",
        s.password,
        "--from",
        s.sender,
        "--to",
        BOB,
        "--data",
        str(s.message_file()),
    ]
    if s.mechanism:
        args += ["--auth", s.mechanism]
    return run(args, home=s.home)


def curl_smtp(s: Send) -> subprocess.CompletedProcess[str]:
    scheme = "smtps" if s.implicit else "smtp"
    args = [
        "curl",
        "-v",
        "-sS",
        "--max-time",
        "60",
        "--cacert",
        cert(s.srv),
        f"{scheme}://{HOST}:{s.port}",
        "--mail-from",
        s.sender,
        "--mail-rcpt",
        BOB,
        "--upload-file",
        str(s.message_file()),
        "--user",
        f"{ALICE}:{s.password}",
    ]
    if not s.implicit:
        args.append("--ssl-reqd")
    if s.mechanism:
        args += ["--login-options", f"AUTH={s.mechanism}"]
    return run(args, home=s.home)


SENDERS: dict[str, tuple[str, Callable[[Send], subprocess.CompletedProcess[str]]]] = {
    "msmtp": ("msmtp", msmtp),
    "s-nail": ("s-nail", s_nail),
    "mutt": ("mutt", mutt),
    "swaks": ("swaks", swaks),
    "curl": ("curl", curl_smtp),
}
# What each program shows when its password is refused: the server's text where
# the program passes it on; mutt shows only its own words.
WRONG_PASSWORD_SHOWN = {
    "msmtp": AUTH_INVALID,
    "s-nail": AUTH_INVALID,
    "mutt": "SASL authentication failed",
    "swaks": AUTH_INVALID,
    "curl": AUTH_INVALID,
}
SUBMISSION_CASES = [
    pytest.param(name, kind, mech, marks=needs(binary), id=f"{name}-{kind}-{mech or 'default'}")
    for name, (binary, _) in SENDERS.items()
    for kind in ("submission", "submissions")
    for mech in (None, "PLAIN", "LOGIN")
]


def new_auth_lines(srv: Running, since: int) -> list[str]:
    return [x for x in srv.log()[since:].splitlines() if "AUTH client=" in x]


@pytest.mark.parametrize(("name", "kind", "mechanism"), SUBMISSION_CASES)
def test_submission_arrives_intact(
    server: Running, tmp_path: Path, name: str, kind: str, mechanism: str | None
) -> None:
    token = uuid.uuid4().hex
    since = len(server.log())
    r = SENDERS[name][1](Send(server, kind, mechanism, token, tmp_path))
    assert r.returncode == 0, output(r)[-3000:]
    assert body_digest(arrived(server, token)) == EXPECTED
    auth = new_auth_lines(server, since)
    assert len(auth) == 1 and f"port={kind} user=<{ALICE}>" in auth[0] and auth[0].endswith(" ok")
    used = re.search(r"mechanism=(\S+)", auth[0])
    assert used is not None
    if mechanism:
        assert used.group(1) == mechanism
    else:
        assert used.group(1) in ("PLAIN", "LOGIN")
        if name == "s-nail":
            # Its default is PLAIN with an empty challenge: "334 " (issue 18 §1).
            assert used.group(1) == "PLAIN"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param(name, kind, marks=needs(binary), id=f"{name}-{kind}")
        for name, (binary, _) in SENDERS.items()
        for kind in ("submission", "submissions")
    ],
)
def test_submission_refusals_reach_the_program(
    server: Running, tmp_path: Path, name: str, kind: str
) -> None:
    send = SENDERS[name][1]
    r = send(Send(server, kind, None, uuid.uuid4().hex, tmp_path, sender=NOT_ALICES))
    assert r.returncode != 0
    assert NOT_OWNED in output(r), output(r)[-3000:]
    r = send(Send(server, kind, None, uuid.uuid4().hex, tmp_path, password="not the password"))
    assert r.returncode != 0
    assert WRONG_PASSWORD_SHOWN[name] in output(r), output(r)[-3000:]


# ---------------------------------------------------------------- POP3 programs


_users = iter(range(10_000))


def pop3_user(server: Running, tag: str) -> str:
    address = f"pop{next(_users)}-{tag}@{LOCAL_DOMAIN}".lower()
    server.add_user(address, PASSWORD)
    return address


def deliver(server: Running, mailbox: str, count: int) -> list[str]:
    """`count` messages into `mailbox` through our own SMTP listener; their tokens."""
    tokens = [uuid.uuid4().hex for _ in range(count)]
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        for token in tokens:
            msg = whole_message(token).replace(f"To: {BOB}".encode(), f"To: {mailbox}".encode())
            s.sendmail("sender@other.example", [mailbox], msg)
    for token in tokens:
        arrived(server, token, mailbox)
    return tokens


@dataclass(frozen=True)
class Fetch:
    srv: Running
    kind: str  # pop3 (110, STLS) | pop3s (995)
    mechanism: str | None
    user: str
    home: Path
    password: str = PASSWORD

    @property
    def port(self) -> int:
        return self.srv.port(self.kind)

    @property
    def implicit(self) -> bool:
        return self.kind == "pop3s"

    @property
    def inbox(self) -> Path:
        d = self.home / "fetched"
        d.mkdir(exist_ok=True)
        return d

    def deliver_script(self) -> Path:
        script = self.home / "deliver.sh"
        script.write_text('#!/bin/sh\ncat > "$(mktemp -p "$1" msg.XXXXXX)"\n')
        script.chmod(0o755)
        return script


def fetched(f: Fetch) -> list[bytes]:
    return [p.read_bytes() for p in sorted(f.inbox.iterdir()) if p.is_file()]


def fetchmail(f: Fetch) -> subprocess.CompletedProcess[str]:
    rc = f.home / "fetchmailrc"
    tls = 'sslproto "tls1.2+"' if not f.implicit else "ssl"
    auth = f"auth {f.mechanism}" if f.mechanism else ""
    rc.write_text(
        "set no syslog\nset no bouncemail\n"
        f"poll {HOST} with proto POP3 port {f.port} uidl {auth}\n"
        f'  user "{f.user}" there with password "{f.password}" is "localuser" here\n'
        f'  {tls} sslcertck sslcertfile "{cert(f.srv)}"\n'
        "  keep\n"
        f'  mda "{f.deliver_script()} {f.inbox}"\n'
    )
    rc.chmod(0o600)
    return run(
        ["fetchmail", "-v", "-f", str(rc), "--nodetach", "-i", str(f.home / "fetchids")],
        home=f.home,
    )


def getmail(f: Fetch) -> subprocess.CompletedProcess[str]:
    rc = f.home / "getmailrc"
    retriever = "SimplePOP3SSLRetriever" if f.implicit else "SimplePOP3Retriever"
    ca = f"ca_certs = {cert(f.srv)}\n" if f.implicit else ""
    rc.write_text(
        f"[retriever]\ntype = {retriever}\nserver = {HOST}\nport = {f.port}\n"
        f"username = {f.user}\npassword = {f.password}\n{ca}\n"
        "[destination]\ntype = MDA_external\n"
        f'path = {f.deliver_script()}\narguments = ("{f.inbox}",)\nallow_root_commands = true\n\n'
        "[options]\ndelete = false\nread_all = false\n"
    )
    getmaildir = f.home / "getmaildir"
    getmaildir.mkdir(exist_ok=True)
    return run(
        ["getmail", f"--getmaildir={getmaildir}", f"--rcfile={rc}"],
        home=f.home,
    )


def mpop(f: Fetch) -> subprocess.CompletedProcess[str]:
    maildir = f.home / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    args = [
        "mpop",
        "--debug",
        f"--host={HOST}",
        f"--port={f.port}",
        "--tls=on",
        f"--tls-starttls={'off' if f.implicit else 'on'}",
        f"--tls-trust-file={cert(f.srv)}",
        f"--user={f.user}",
        f"--passwordeval=printf '%s' '{f.password}'",
        "--keep=on",
        "--only-new=on",
        f"--uidls-file={f.home / 'uidls'}",
        f"--delivery=mda,{f.deliver_script()} {f.inbox}",
    ]
    if f.mechanism:
        args.append(f"--auth={f.mechanism}")
    return run(args, home=f.home)


KEEPERS: dict[str, tuple[str, Callable[[Fetch], subprocess.CompletedProcess[str]]]] = {
    "fetchmail": ("fetchmail", fetchmail),
    "getmail": ("getmail", getmail),
    "mpop": ("mpop", mpop),
}
# Where each program can log in: getmail6 cannot STLS, so on 110 it must be refused.
KEEPER_CASES = [
    pytest.param("fetchmail", "pop3", None, marks=needs("fetchmail"), id="fetchmail-110-default"),
    pytest.param(
        "fetchmail", "pop3", "password", marks=needs("fetchmail"), id="fetchmail-110-password"
    ),
    pytest.param("fetchmail", "pop3s", None, marks=needs("fetchmail"), id="fetchmail-995-default"),
    pytest.param("getmail", "pop3s", None, marks=needs("getmail"), id="getmail-995-default"),
    pytest.param("mpop", "pop3", None, marks=needs("mpop"), id="mpop-110-default"),
    pytest.param("mpop", "pop3", "user", marks=needs("mpop"), id="mpop-110-user"),
    pytest.param("mpop", "pop3", "plain", marks=needs("mpop"), id="mpop-110-plain"),
    pytest.param("mpop", "pop3s", None, marks=needs("mpop"), id="mpop-995-default"),
    pytest.param("mpop", "pop3s", "user", marks=needs("mpop"), id="mpop-995-user"),
    pytest.param("mpop", "pop3s", "plain", marks=needs("mpop"), id="mpop-995-plain"),
]
POP3_MECHANISM = {"password": "USER", "user": "USER", "plain": "PLAIN"}


def pop3_logins(srv: Running, user: str) -> list[str]:
    return [x for x in srv.log().splitlines() if "pop3 login client=" in x and f"user={user} " in x]


@pytest.mark.parametrize(("name", "kind", "mechanism"), KEEPER_CASES)
def test_pop3_keep_mode_fetches_each_message_once_intact(
    server: Running, tmp_path: Path, name: str, kind: str, mechanism: str | None
) -> None:
    user = pop3_user(server, name)
    f = Fetch(server, kind, mechanism, user, tmp_path)
    program = KEEPERS[name][1]
    first = deliver(server, user, 3)
    r = program(f)
    assert r.returncode == 0, output(r)[-3000:]
    got = fetched(f)
    assert len(got) == 3, output(r)[-3000:]
    assert all(body_digest(m) == EXPECTED for m in got)
    assert {t for t in first if any(t.encode() in m for m in got)} == set(first)
    second = deliver(server, user, 1)
    r = program(f)
    assert r.returncode in (0, 1), output(r)[-3000:]  # fetchmail: 1 = nothing new
    got = fetched(f)
    assert len(got) == 4, f"a message fetched twice or not at all:\n{output(r)[-3000:]}"
    assert sum(second[0].encode() in m for m in got) == 1
    logins = pop3_logins(server, user)
    assert len(logins) == 2
    if mechanism:
        assert all(f"mechanism={POP3_MECHANISM[mechanism]} " in x for x in logins), logins
    # Kept on the server: four messages still there.
    assert len(wait_maildir(server.data_dir, user, count=4)) == 4


@pytest.mark.parametrize(
    ("name", "kind", "shown"),
    [
        pytest.param("fetchmail", "pop3", POP3_AUTH_FAILED, marks=needs("fetchmail")),
        pytest.param("fetchmail", "pop3s", POP3_AUTH_FAILED, marks=needs("fetchmail")),
        pytest.param("getmail", "pop3s", POP3_AUTH_FAILED, marks=needs("getmail")),
        pytest.param("mpop", "pop3", POP3_AUTH_FAILED, marks=needs("mpop")),
        pytest.param("mpop", "pop3s", POP3_AUTH_FAILED, marks=needs("mpop")),
    ],
)
def test_pop3_wrong_password_reaches_the_program(
    server: Running, tmp_path: Path, name: str, kind: str, shown: str
) -> None:
    user = pop3_user(server, name)
    r = KEEPERS[name][1](Fetch(server, kind, None, user, tmp_path, password="not the password"))
    assert r.returncode != 0
    assert shown in output(r), output(r)[-3000:]


@needs("getmail")
def test_getmail_without_stls_is_refused_on_110_with_the_reason(
    server: Running, tmp_path: Path
) -> None:
    """getmail6 cannot STLS: its plaintext login on 110 is refused, and says why."""
    user = pop3_user(server, "getmail")
    deliver(server, user, 1)
    f = Fetch(server, "pop3", None, user, tmp_path)
    r = getmail(f)
    assert POP3_PLAINTEXT in output(r), output(r)[-3000:]
    assert fetched(f) == []
    assert pop3_logins(server, user) == []


def curl_pop3(f: Fetch, path: str = "") -> subprocess.CompletedProcess[str]:
    scheme = "pop3s" if f.implicit else "pop3"
    args = [
        "curl",
        "-v",
        "-sS",
        "--max-time",
        "60",
        "--cacert",
        cert(f.srv),
        f"{scheme}://{HOST}:{f.port}/{path}",
        "-u",
        f"{f.user}:{f.password}",
    ]
    if not f.implicit:
        args.append("--ssl-reqd")
    if f.mechanism:
        args += ["--login-options", f"AUTH={f.mechanism}"]
    return run(args, home=f.home)


@needs("curl")
@pytest.mark.parametrize("kind", ["pop3", "pop3s"])
@pytest.mark.parametrize("mechanism", [None, "PLAIN"])
def test_curl_lists_and_reads_every_message_intact(
    server: Running, tmp_path: Path, kind: str, mechanism: str | None
) -> None:
    user = pop3_user(server, "curl")
    tokens = deliver(server, user, 2)
    f = Fetch(server, kind, mechanism, user, tmp_path)
    listing = curl_pop3(f)
    assert listing.returncode == 0, output(listing)[-3000:]
    numbers = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]
    assert numbers == ["1", "2"]
    bodies = []
    for n in numbers:
        r = curl_pop3(f, n)
        assert r.returncode == 0, output(r)[-3000:]
        bodies.append(r.stdout.encode())
    assert all(body_digest(b) == EXPECTED for b in bodies)
    assert {t for t in tokens if any(t.encode() in b for b in bodies)} == set(tokens)
    assert len(wait_maildir(server.data_dir, user, count=2)) == 2  # RETR deletes nothing
    r = curl_pop3(Fetch(server, kind, mechanism, user, tmp_path, password="not the password"))
    assert r.returncode != 0 and POP3_AUTH_FAILED in output(r)


def poplib_session(f: Fetch) -> poplib.POP3:
    ctx = ssl.create_default_context(cafile=cert(f.srv))
    if f.implicit:
        p: poplib.POP3 = poplib.POP3_SSL(HOST, f.port, context=ctx, timeout=30)
    else:
        p = poplib.POP3(HOST, f.port, timeout=30)
        p.stls(ctx)
    p.user(f.user)
    p.pass_(f.password)
    return p


@pytest.mark.parametrize("kind", ["pop3", "pop3s"])
def test_poplib_reads_intact_and_uidl_stays_stable(
    server: Running, tmp_path: Path, kind: str
) -> None:
    """What every keep mode rests on: the same UIDs in every session, one new UID per new message."""
    user = pop3_user(server, "poplib")
    tokens = deliver(server, user, 2)
    f = Fetch(server, kind, None, user, tmp_path)
    p = poplib_session(f)
    uids = [u.split()[1] for u in p.uidl()[1]]
    messages = [b"\r\n".join(p.retr(i + 1)[1]) for i in range(len(uids))]
    p.quit()
    assert all(body_digest(m) == EXPECTED for m in messages)
    assert {t for t in tokens if any(t.encode() in m for m in messages)} == set(tokens)
    deliver(server, user, 1)
    p = poplib_session(f)
    again = [u.split()[1] for u in p.uidl()[1]]
    p.quit()
    assert again[: len(uids)] == uids and len(set(again) - set(uids)) == 1
    with pytest.raises(poplib.error_proto, match=re.escape(POP3_AUTH_FAILED)):
        poplib_session(Fetch(server, kind, None, user, tmp_path, password="not the password"))
