"""doctor and relaytest against the real `postvakt serve` on loopback.

127.0.0.1 is the server's own network; 127.0.0.2 is the customer at a hotel.
The POP-before-SMTP case runs from 127.0.0.3, so that its grant cannot turn
another test's denial into an accept. At the end, the server must hold no
message: the doctor never sends DATA.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from postvakt.cli.diagnose import doctor, relaytest
from support import LOCAL_DOMAIN, Running, start_server

OUTSIDE = "127.0.0.2"
POP_CLIENT = "127.0.0.3"
ALICE = f"alice@{LOCAL_DOMAIN}"
BOB = f"bob@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"
FOREIGN = "friend@adatum.example"
SERVER_NAME = "mx.pv.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cafile(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(p))
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("pv")
    leaf = ca.issue_cert(SERVER_NAME)
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    srv = start_server(
        tmp,
        users={ALICE: PASSWORD, BOB: "bobs password"},
        tls={"cert": str(cert), "key": str(key)},
        relay={"networks": ["127.0.0.1/32"], "pop_before_smtp": "30m"},
    )
    try:
        yield srv
    finally:
        srv.stop()


def ports_arg(srv: Running) -> str:
    return f"smtp={srv.port('smtp')},submission={srv.port('submission')},submissions={srv.port('submissions')}"


def run_doctor(
    srv: Running,
    cafile: Path,
    port_kind: str,
    *args: str,
    password: str | None = None,
    source: str = OUTSIDE,
) -> tuple[int, dict]:
    argv = [
        "--server",
        f"127.0.0.1:{srv.port(port_kind)}",
        "--ports",
        ports_arg(srv),
        "--source-address",
        source,
        "--timeout",
        "10",
        "--tls-name",
        SERVER_NAME,
        "--cafile",
        str(cafile),
        "--json",
        *args,
    ]
    if password is not None:
        argv.append("--password-stdin")
    r = CliRunner().invoke(doctor, argv, input=(password + "\n") if password is not None else None)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.stdout)


def finding_ids(doc: dict) -> set[str]:
    return {f["id"] for f in doc["findings"]}


def test_relay_denied_from_outside(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server, cafile, "smtp", "--from", "someone@adatum.example", "--to", FOREIGN
    )
    assert (code, doc["case"]) == (1, "relay_denied_no_auth")
    assert f"550 5.7.1 <{FOREIGN}>: Relaying denied" in doc["explanation"]
    assert {"cert_ok", "auth_offered"} <= finding_ids(doc)


def test_auth_required_on_submission(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(server, cafile, "submission", "--from", ALICE, "--to", FOREIGN)
    assert (code, doc["case"]) == (1, "auth_not_used")
    assert "530 5.7.0 Authentication required" in doc["explanation"]
    assert {"starttls_offered", "auth_after_tls", "auth_after_tls_only"} <= finding_ids(doc)


def test_auth_only_after_tls(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "submission",
        "--from",
        ALICE,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        "--security",
        "none",
        password=PASSWORD,
    )
    assert (code, doc["case"]) == (1, "auth_requires_tls")
    works = [f for f in doc["findings"] if f["id"] == "works_with"]
    assert works and works[0]["params"]["port"] == server.port("submission")


def test_wrong_password(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "submission",
        "--from",
        ALICE,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        password="wrong",
    )
    assert (code, doc["case"]) == (1, "auth_failed")
    assert "535 5.7.8" in doc["explanation"]


def test_sender_not_owned(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "submission",
        "--from",
        BOB,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        password=PASSWORD,
    )
    assert (code, doc["case"]) == (1, "sender_not_owned")
    assert f"not owned by user {ALICE}" in doc["explanation"]
    assert "login_ok" in finding_ids(doc)


def test_local_sender_not_logged_in(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(server, cafile, "smtp", "--from", ALICE, "--to", BOB)
    assert (code, doc["case"]) == (1, "sender_not_logged_in")


def test_recipient_unknown(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server, cafile, "smtp", "--from", "someone@adatum.example", "--to", f"nobody@{LOCAL_DOMAIN}"
    )
    assert (code, doc["case"]) == (1, "recipient_unknown")


@pytest.mark.parametrize("port_kind", ["submission", "submissions"])
def test_everything_fine_with_login(server: Running, cafile: Path, port_kind: str) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        port_kind,
        "--from",
        ALICE,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        password=PASSWORD,
    )
    assert (code, doc["case"]) == (0, "ok")
    assert doc["accepted"] is True
    assert "cert_ok" in finding_ids(doc)


def test_pop_before_smtp_turns_a_denial_into_an_accept(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "smtp",
        "--from",
        ALICE,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        "--no-smtp-auth",
        "--pop3",
        f"127.0.0.1:{server.port('pop3')}",
        password=PASSWORD,
        source=POP_CLIENT,
    )
    assert (code, doc["case"]) == (0, "pop_before_smtp"), doc
    probes = {p["name"]: p for p in doc["probes"]}
    assert probes["as_configured"]["outcome"] != "accepted"
    assert probes["pop3_login"]["outcome"] == "accepted"
    assert probes["after_pop3_login"]["outcome"] == "accepted"
    assert any(line.startswith("C: STLS") for line in probes["pop3_login"]["transcript"])


def test_pop_before_smtp_over_pop3s(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "smtp",
        "--from",
        "someone@adatum.example",
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        "--no-smtp-auth",
        "--pop3",
        f"127.0.0.1:{server.port('pop3s')}",
        "--pop3-security",
        "ssl",
        password=PASSWORD,
        source="127.0.0.4",
    )
    assert (code, doc["case"]) == (0, "pop_before_smtp"), doc
    probes = {p["name"]: p for p in doc["probes"]}
    assert probes["as_configured"]["outcome"] == "relay_denied"
    assert probes["pop3_login"]["security"] == "ssl"


def test_failed_pop3_login_grants_nothing(server: Running, cafile: Path) -> None:
    code, doc = run_doctor(
        server,
        cafile,
        "smtp",
        "--from",
        "someone@adatum.example",
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        "--no-smtp-auth",
        "--pop3",
        f"127.0.0.1:{server.port('pop3')}",
        password="wrong",
        source="127.0.0.5",
    )
    assert (code, doc["case"]) == (1, "relay_denied_no_auth")
    assert "pop3_login_failed" in finding_ids(doc)
    assert "after_pop3_login" not in {p["name"] for p in doc["probes"]}


def test_relaytest_finds_postvakt_closed(server: Running) -> None:
    r = CliRunner().invoke(
        relaytest,
        [
            f"127.0.0.1:{server.port('smtp')}",
            "--domain",
            LOCAL_DOMAIN,
            "--local-user",
            "alice",
            "--source-address",
            OUTSIDE,
            "--json",
        ],
    )
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, r.output
    assert doc["relayed"] == [] and doc["control"]["outcome"] == "local_ok"


def test_console_script(server: Running, cafile: Path) -> None:
    exe = shutil.which("postvakt")
    if exe is None:
        pytest.skip("the postvakt console script is not installed")
    r = subprocess.run(
        [
            exe,
            "doctor",
            "--server",
            f"127.0.0.1:{server.port('smtp')}",
            "--ports",
            ports_arg(server),
            "--source-address",
            OUTSIDE,
            "--from",
            "someone@adatum.example",
            "--to",
            FOREIGN,
            "--tls-name",
            SERVER_NAME,
            "--cafile",
            str(cafile),
            "--lang",
            "sv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[relay_denied_no_auth]" in r.stdout and "Vidarebefordran nekad" in r.stdout


def _stored_messages(data_dir: Path) -> list[Path]:
    """Every queue file and every Maildir message under the server's data directory."""
    found = []
    for p in data_dir.rglob("*"):
        if not p.is_file():
            continue
        parts = set(p.relative_to(data_dir).parts)
        if parts & {"incoming", "active", "deferred", "hold", "new", "cur"}:
            found.append(p)
    return found


def _data_log_lines(log: str) -> list[str]:
    """The server's one line per DATA decision and per queued message."""
    return [line for line in log.splitlines() if " DATA client=" in line or " queued id=" in line]


def wait_for_log(srv: Running, text: str, timeout: float = 10.0) -> str:
    """The server's log once it holds `text` (or as it is at the deadline)."""
    deadline = time.monotonic() + timeout
    while text not in (log := srv.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_no_message_reached_the_server(server: Running, cafile: Path) -> None:
    """A doctor run that logs in and gets as far as an accepted RCPT leaves nothing queued or
    delivered. It runs a doctor itself, so it does not depend on the order of the tests; the
    other doctor runs on this server are covered too, whichever of them ran before."""
    code, doc = run_doctor(
        server,
        cafile,
        "submission",
        "--from",
        ALICE,
        "--to",
        FOREIGN,
        "--user",
        ALICE,
        password=PASSWORD,
    )
    assert (code, doc["case"]) == (0, "ok")
    log = wait_for_log(server, "RCPT client=127.0.0.2")
    assert "AUTH client=127.0.0.2" in log  # the doctor did talk
    assert _stored_messages(server.data_dir) == []
    assert _data_log_lines(server.log()) == []


def test_stored_messages_sees_a_real_message(tmp_path: Path) -> None:
    """Guard for the check above: a message sent with DATA does show up."""
    import smtplib

    srv = start_server(tmp_path, users={ALICE: PASSWORD})
    try:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            s.sendmail("someone@adatum.example", [ALICE], b"Subject: x\r\n\r\nbody\r\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_data_log_lines(srv.log())) < 2:
            time.sleep(0.1)
        assert len(_data_log_lines(srv.log())) == 2
        assert _stored_messages(srv.data_dir)
    finally:
        srv.stop()


def test_self_signed_certificate_is_reported(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={ALICE: PASSWORD})
    try:
        r = CliRunner().invoke(
            doctor,
            [
                "--server",
                f"127.0.0.1:{srv.port('submission')}",
                "--ports",
                ports_arg(srv),
                "--source-address",
                OUTSIDE,
                "--from",
                ALICE,
                "--to",
                FOREIGN,
                "--user",
                ALICE,
                "--password-stdin",
                "--json",
            ],
            input=PASSWORD + "\n",
        )
        doc = json.loads(r.stdout)
        assert (r.exit_code, doc["case"]) == (0, "ok")
        assert "cert_self_signed" in finding_ids(doc)
    finally:
        srv.stop()
