"""doctor and relaytest against a server that is not postvakt: Postfix from
Debian's package, once configured like a careful provider, once as the classic
accidental open relay (the whole 127/8 trusted, as a Docker gateway would be).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from postfix_support import CAREFUL_DOMAIN, OPEN_DOMAIN, PostfixInstance, postfix_usable
from postvakt.cli.diagnose import doctor, relaytest
from support import free_port

OUTSIDE = "127.0.0.2"
FOREIGN = "adatum.example"


def doctor_args(pf: PostfixInstance, *extra: str) -> list[str]:
    return [
        "--server",
        f"127.0.0.1:{pf.port}",
        "--ports",
        f"smtp={pf.port},submission={free_port()},submissions={free_port()}",
        "--timeout",
        "5",
        "--json",
        *extra,
    ]


def test_relaytest_passes_the_careful_postfix(postfix_careful: PostfixInstance) -> None:
    r = CliRunner().invoke(
        relaytest,
        [
            f"127.0.0.1:{postfix_careful.port}",
            "--domain",
            CAREFUL_DOMAIN,
            "--source-address",
            OUTSIDE,
            "--json",
        ],
    )
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, r.output
    assert doc["open_relay"] is False and doc["relayed"] == [] and doc["inconclusive"] == ""
    assert doc["control"]["outcome"] == "local_ok"
    by_id = {x["id"]: x for x in doc["results"]}
    assert len(by_id) >= 30
    assert "Relay access denied" in by_id["R1"]["reply"]
    assert by_id["R13-local-case-dot"]["outcome"] == "local_ok"
    assert postfix_careful.queued() == []


def test_relaytest_flags_the_open_postfix(postfix_open: PostfixInstance) -> None:
    r = CliRunner().invoke(
        relaytest,
        [f"127.0.0.1:{postfix_open.port}", "--domain", OPEN_DOMAIN, "--source-address", OUTSIDE],
    )
    assert r.exit_code == 1, r.output
    assert "OPEN RELAY" in r.output
    assert "R1 " in r.output and "ACCEPTED: relay possible" in r.output
    # Stopping before DATA means nothing reached the queue, even on an open relay.
    assert postfix_open.queued() == []
    assert postfix_open.accepted_messages() == []


def test_relaytest_swedish(postfix_open: PostfixInstance) -> None:
    r = CliRunner().invoke(
        relaytest,
        [
            f"127.0.0.1:{postfix_open.port}",
            "--domain",
            OPEN_DOMAIN,
            "--source-address",
            OUTSIDE,
            "--lang",
            "sv",
        ],
    )
    assert r.exit_code == 1
    assert "ÖPPET RELÄ" in r.output


def test_relaytest_from_inside_the_careful_network_is_open_and_says_so(
    postfix_careful: PostfixInstance,
) -> None:
    """From 127.0.0.1 (its own network) Postfix relays: the test must not be fooled into passing."""
    r = CliRunner().invoke(
        relaytest,
        [
            f"127.0.0.1:{postfix_careful.port}",
            "--domain",
            CAREFUL_DOMAIN,
            "--source-address",
            "127.0.0.1",
        ],
    )
    assert r.exit_code == 1


def test_relaytest_unreachable_is_inconclusive() -> None:
    r = CliRunner().invoke(
        relaytest, [f"127.0.0.1:{free_port()}", "--domain", "x.test", "--timeout", "2"]
    )
    assert r.exit_code == 2
    assert "Inconclusive" in r.output


def test_doctor_relay_denied_by_careful_postfix(postfix_careful: PostfixInstance) -> None:
    r = CliRunner().invoke(
        doctor,
        doctor_args(
            postfix_careful,
            "--from",
            f"someone@{FOREIGN}",
            "--to",
            f"friend@{FOREIGN}",
            "--source-address",
            OUTSIDE,
        ),
    )
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["case"] == "relay_denied_no_auth"
    assert "554 5.7.1" in doc["explanation"] and "Relay access denied" in doc["explanation"]
    assert "auth_not_offered" in [f["id"] for f in doc["findings"]]
    assert "auth_offered" not in [f["id"] for f in doc["findings"]]
    assert postfix_careful.queued() == []


def test_doctor_ok_from_the_providers_own_network(postfix_careful: PostfixInstance) -> None:
    r = CliRunner().invoke(
        doctor,
        doctor_args(
            postfix_careful,
            "--from",
            f"me@{CAREFUL_DOMAIN}",
            "--to",
            f"friend@{FOREIGN}",
            "--source-address",
            "127.0.0.1",
        ),
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["case"] == "ok"
    assert postfix_careful.queued() == []


def test_doctor_accepted_by_open_postfix_and_nothing_queued(postfix_open: PostfixInstance) -> None:
    r = CliRunner().invoke(
        doctor,
        doctor_args(
            postfix_open,
            "--from",
            f"someone@{FOREIGN}",
            "--to",
            f"friend@{FOREIGN}",
            "--source-address",
            OUTSIDE,
        ),
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["case"] == "ok"
    sent = [line for p in doc["probes"] for line in p["transcript"] if line.startswith("C: ")]
    assert sent and not any(line.split()[1].upper() in ("DATA", "BDAT") for line in sent)
    assert postfix_open.queued() == []
    # Postfix's own count of each session's commands: ehlo, starttls, mail, rcpt, rset, quit; no data.
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and "disconnect from unknown[127.0.0.2]" not in postfix_open.log()
    ):
        time.sleep(0.1)
    sessions = [
        line
        for line in postfix_open.log().splitlines()
        if "disconnect from unknown[127.0.0.2]" in line
    ]
    assert sessions
    assert not any(" data=" in line or " bdat=" in line for line in sessions)
    assert postfix_open.accepted_messages() == []


def test_swaks_confirms_the_relaytest_verdict(
    postfix_open: PostfixInstance, postfix_careful: PostfixInstance
) -> None:
    """A second opinion from a tool everyone trusts: swaks --quit-after RCPT."""
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    for pf, expect_open in ((postfix_open, True), (postfix_careful, False)):
        out = subprocess.run(
            [
                swaks,
                "--server",
                f"127.0.0.1:{pf.port}",
                "--local-interface",
                OUTSIDE,
                "--from",
                f"x@{FOREIGN}",
                "--to",
                f"v@{FOREIGN}",
                "--quit-after",
                "RCPT",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (out.returncode == 0) == expect_open, out.stdout


def test_the_no_message_detector_sees_a_real_message() -> None:
    """Guard for the checks above: a message that does pass DATA shows up in both signals."""
    import smtplib

    reason = postfix_usable()
    if reason:
        pytest.skip(reason)
    pf = PostfixInstance("detector.test", "127.0.0.1/32")
    try:
        try:
            pf.start()
        except RuntimeError as e:
            pytest.fail(f"the private Postfix instance did not start: {e}")
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as s:
            s.sendmail(
                "a@detector.test", ["postmaster@detector.test"], b"Subject: x\r\n\r\nbody\r\n"
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not pf.accepted_messages():
            time.sleep(0.1)
        assert pf.accepted_messages()
    finally:
        pf.stop()


def test_relaytest_console_script(
    postfix_careful: PostfixInstance, postfix_open: PostfixInstance
) -> None:
    exe = shutil.which("postvakt")
    if exe is None:
        pytest.skip("the postvakt console script is not installed")
    for pf, domain, expected in (
        (postfix_careful, CAREFUL_DOMAIN, 0),
        (postfix_open, OPEN_DOMAIN, 1),
    ):
        r = subprocess.run(
            [
                exe,
                "relaytest",
                f"127.0.0.1:{pf.port}",
                "--domain",
                domain,
                "--source-address",
                OUTSIDE,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == expected, r.stdout + r.stderr
