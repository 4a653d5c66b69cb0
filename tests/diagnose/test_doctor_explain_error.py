"""`postvakt doctor --explain-error`: errors as mail programs show them, and
every server's own wording from the feature anchors (§2), offline."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from postvakt.cli.diagnose import doctor
from postvakt.diagnose import classify as k
from postvakt.diagnose.errortext import explain_error, parse_error

OUTLOOK_SENDMAIL = (
    "The message could not be sent because one of the recipients was rejected by the server. "
    "The rejected e-mail address was 'someone@example.com'. Subject 'Test', Account: "
    "'mail.example.net', Server: 'smtp.example.net', Protocol: SMTP, Server Response: "
    "'550 <someone@example.com>... Relaying denied', Port: 25, Secure(SSL): No, "
    "Server Error: 550, Error Number: 0x800CCC79"
)
OUTLOOK_QMAIL = (
    "The rejected e-mail address was 'friend@adatum.example'. Subject 'Hi', Account: "
    "'proseware', Server: 'smtp.proseware.example', Protocol: SMTP, Server Response: "
    "'553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)', Port: 25, "
    "Secure(SSL): No, Server Error: 553, Error Number: 0x800CCC79"
)
THUNDERBIRD = (
    "An error occurred while sending mail. The mail server responded: 5.7.1 "
    "<bob@x.example>: Relay access denied. Please check the message recipient "
    '"bob@x.example" and try again.'
)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(doctor, list(args))
    return r.exit_code, r.stdout


def test_outlook_article_text() -> None:
    p = parse_error(OUTLOOK_SENDMAIL)
    assert (p.code, p.port, p.secure, p.number) == (550, 25, False, "0x800CCC79")
    assert p.server == "smtp.example.net" and p.address == "someone@example.com"
    assert p.text == "<someone@example.com>... Relaying denied"
    code, out = run("--explain-error", OUTLOOK_SENDMAIL)
    assert code == 0
    assert "[relay_denied_no_auth]" in out
    assert "cannot tell you from a spammer" in out
    assert "smtp.example.net:25" in out and "someone@example.com" in out
    assert "0x800CCC79" in out and "Port 25 without encryption" in out
    assert 'requires authentication"' in out and "port 587" in out


def test_outlook_text_with_qmail_reply_keeps_the_apostrophe() -> None:
    p = parse_error(OUTLOOK_QMAIL)
    assert p.code == 553
    assert p.text == "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
    d = explain_error(OUTLOOK_QMAIL)
    assert d.case == "relay_denied_no_auth"
    assert d.params["rcpt"] == "friend@adatum.example"


def test_thunderbird_text() -> None:
    d = explain_error(THUNDERBIRD)
    assert d.case == "relay_denied_no_auth"
    assert d.params["rcpt"] == "bob@x.example"


@pytest.mark.parametrize(
    ("text", "case", "server"),
    [
        ("554 5.7.1 <v@x.example>: Relay access denied", "relay_denied_no_auth", "Postfix"),
        ("454 4.7.1 <v@x.example>: Relay access denied", "relay_denied_no_auth", "Postfix"),
        (
            "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
            "relay_denied_no_auth",
            "qmail",
        ),
        ("550 relay not permitted", "relay_denied_no_auth", "Exim"),
        (
            "550 Relaying denied. Proper authentication required.",
            "relay_denied_no_auth",
            "sendmail",
        ),
        ("550 5.7.1 <v@x.example>: Relaying denied", "relay_denied_no_auth", "postvakt"),
        ("550 5.1.2 Relay not allowed.", "relay_denied_no_auth", "Stalwart"),
        ("550 I cannot deliver mail for <v@x.example>", "relay_denied_no_auth", "Haraka"),
        (
            "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
            "relay_denied_no_auth",
            "Exchange",
        ),
        ("530 5.7.0 Authentication required", "auth_not_used", "Maddy"),
        ("503 5.5.1 You must authenticate first.", "auth_not_used", "Stalwart"),
        (
            "530 5.5.1 Invalid command: Must issue an AUTH command first",
            "auth_not_used",
            "OpenSMTPD",
        ),
        ("530 5.7.0 Must issue a STARTTLS command first", "tls_required", "Postfix"),
        (
            "538 5.7.11 Encryption required for requested authentication mechanism",
            "auth_requires_tls",
            "RFC 4954",
        ),
        (
            "535 5.7.8 Error: authentication failed: authentication failure",
            "auth_failed",
            "Postfix",
        ),
        ("535 Incorrect authentication data", "auth_failed", "Exim"),
        ("535 5.7.8 Authentication credentials invalid", "auth_failed", "postvakt"),
        (
            "553 5.7.1 <bob@pv.test>: Sender address rejected: not owned by user alice@pv.test",
            "sender_not_owned",
            "Postfix",
        ),
        ("553 5.7.0 Unauthorized use of sender address", "sender_not_owned", "Maddy"),
        (
            "501 5.5.4 You are not allowed to send from this address.",
            "sender_not_owned",
            "Stalwart",
        ),
        (
            "553 5.7.1 <alice@pv.test>: Sender address rejected: not logged in",
            "sender_not_logged_in",
            "Postfix",
        ),
        (
            "550 5.1.1 <nobody@pv.test>: Recipient address rejected: User unknown",
            "recipient_unknown",
            "Postfix",
        ),
        ("552 5.3.4 Message size exceeds fixed limit", "message_too_big", "all"),
        ("421 4.7.0 mx.pv.test Error: too many errors", "too_many_errors", "Postfix"),
        ("451 4.3.0 Queue file write error", "temporary_failure", ""),
    ],
)
def test_server_wordings(text: str, case: str, server: str) -> None:
    d = explain_error(text)
    assert d.case == case, (text, d.case)
    assert d.exit_code == 0
    if server:
        wording = [f for f in d.findings if f.id == "wording_of"]
        assert wording and server in wording[0].params["servers"]


def test_error_number_alone() -> None:
    d = explain_error("Error Number: 0x800CCC0E")
    assert d.case == "port_blocked"
    d = explain_error("Outlook says 0x800ccc79 when I send")
    assert d.case == "relay_denied_no_auth"


@pytest.mark.parametrize(
    "garbage",
    [
        "hello world, my cat ate 123 cookies",
        "",
        "   ",
        "HTTP/1.1 404 Not Found",
        "0xDEADBEEF failed",
    ],
)
def test_garbage_is_not_recognised(garbage: str) -> None:
    code, out = run("--explain-error", garbage)
    assert code == 2, out
    assert "[not_recognised]" in out and "Not recognised" in out


def test_garbage_json_and_swedish() -> None:
    code, out = run("--explain-error", "no idea what happened", "--json", "--lang", "sv")
    assert code == 2
    doc = json.loads(out)
    assert doc["case"] == "not_recognised" and doc["lang"] == "sv"
    assert doc["title"].startswith("Känns inte igen")


def test_swedish_explanation() -> None:
    code, out = run("--explain-error", OUTLOOK_QMAIL, "--lang", "sv")
    assert code == 0
    assert "Vidarebefordran nekad" in out
    assert "kan inte skilja dig från en spammare" in out
    assert "smtp.proseware.example:25" in out


def test_json_has_case_findings_and_localised_params() -> None:
    code, out = run("--explain-error", OUTLOOK_SENDMAIL, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["case"] == "relay_denied_no_auth" and doc["accepted"] is False
    assert doc["advice"] and doc["probes"] == []
    ids = [f["id"] for f in doc["findings"]]
    assert "outlook_error" in ids and "client_port" in ids
    assert not any(str(v).startswith("@") for f in doc["findings"] for v in f["params"].values())


def test_explain_error_reads_stdin() -> None:
    r = CliRunner().invoke(
        doctor, ["--explain-error", "-"], input="554 5.7.1 <a@b.example>: Relay access denied\n"
    )
    assert r.exit_code == 0 and "[relay_denied_no_auth]" in r.output


def test_classify_uses_the_code_when_words_say_nothing() -> None:
    assert k.classify(250, "2.1.5", "Ok") == k.ACCEPTED
    assert k.classify(530, "", "go away") == k.AUTH_REQUIRED
    assert k.classify(535, "", "no") == k.AUTH_FAILED
    assert k.classify(554, "5.7.1", "<a@b>: nope", "RCPT") == k.RELAY_DENIED
    assert k.classify(550, "", "nope", "MAIL") == k.SENDER_REJECTED
    assert k.classify(450, "", "later") == k.TEMPORARY
    assert k.classify(550, "", "nope") == k.OTHER
