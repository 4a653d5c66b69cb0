"""`--explain-error` in the languages end users see their errors in, and the
fallback on the other evidence when the server's words are unknown (issue 15)."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
from click.testing import CliRunner

from postvakt.cli.diagnose import doctor
from postvakt.diagnose import catalogue as c
from postvakt.diagnose.errortext import explain_error, parse_error
from postvakt.diagnose.result import Confidence

# The example of the issue, exactly as a Swedish Outlook shows it.
SWEDISH_OUTLOOK = (
    "Meddelandet kunde inte skickas eftersom en av mottagarna avvisades av servern. "
    "Den avvisade e-postadressen var 'someone@example.com'. Ämne 'Test', Konto: "
    "'mail.example.net', Server: 'smtp.example.net', Protokoll: SMTP, Server Response: "
    "'550 <someone@example.com>... Vidarebefordran nekad', Port: 25, Säker (SSL): Nej, "
    "Serverfel: 550, Felnummer: 0x800CCC79"
)

# Outlook's dialog with its labels translated, one per language the doctor reads.
OUTLOOK_DIALOGS = {
    "sv": SWEDISH_OUTLOOK,
    "de": (
        "Die Nachricht konnte nicht gesendet werden, da einer der Empfänger vom Server nicht "
        "akzeptiert wurde. Betreff 'Test', Konto: 'mail.example.net', Server: 'smtp.example.net', "
        "Protokoll: SMTP, Serverantwort: '550 5.7.1 <jemand@example.com>... Relaying verweigert', "
        "Port: 25, Sicher (SSL): Nein, Serverfehler: 550, Fehlernummer: 0x800CCC79"
    ),
    "fr": (
        "Le message n'a pas pu être envoyé, car l'un des destinataires a été refusé par le "
        "serveur. Objet 'Test', Compte : 'mail.example.net', Serveur : 'smtp.example.net', "
        "Protocole : SMTP, Réponse du serveur : '550 5.7.1 <dest@example.com>: Relais refusé', "
        "Port : 25, Sécurisé (SSL) : Non, Erreur du serveur : 550, Numéro d'erreur : 0x800CCC79"
    ),
    "es": (
        "No se puede enviar el mensaje porque el servidor rechazó uno de los destinatarios. "
        "Asunto 'Prueba', Cuenta: 'mail.example.net', Servidor: 'smtp.example.net', Protocolo: "
        "SMTP, Respuesta del servidor: '550 5.7.1 <alguien@example.com> Retransmisión denegada', "
        "Puerto: 25, Seguro (SSL): No, Error del servidor: 550, Número de error: 0x800CCC79"
    ),
    "nl": (
        "Het bericht kan niet worden verzonden omdat een van de geadresseerden door de server is "
        "geweigerd. Onderwerp 'Test', Account: 'mail.example.net', Server: 'smtp.example.net', "
        "Protocol: SMTP, Serverantwoord: '550 <iemand@example.com>: Relaying geweigerd', "
        "Poort: 25, Beveiligd (SSL): Nee, Serverfout: 550, Foutnummer: 0x800CCC79"
    ),
    "da": (
        "Meddelelsen kunne ikke sendes, fordi en af modtagerne blev afvist af serveren. "
        "Emne 'Test', Konto: 'mail.example.net', Server: 'smtp.example.net', Protokol: SMTP, "
        "Serversvar: '550 <nogen@example.com> Videresendelse nægtet', Port: 25, "
        "Sikker (SSL): Nej, Serverfejl: 550, Fejlnummer: 0x800CCC79"
    ),
    "no": (
        "Meldingen kunne ikke sendes fordi en av mottakerne ble avvist av serveren. Emne "
        "'Test', Konto: 'mail.example.net', Server: 'smtp.example.net', Protokoll: SMTP, "
        "Serversvar: '550 5.7.1 <noen@example.com>: Videresending nektet', Port: 25, "
        "Sikker (SSL): Nei, Serverfeil: 550, Feilnummer: 0x800CCC79"
    ),
    "fi": (
        "Viestiä ei voitu lähettää, koska palvelin hylkäsi yhden vastaanottajista. Aihe "
        "'Testi', Tili: 'mail.example.net', Palvelin: 'smtp.example.net', Protokolla: SMTP, "
        "Palvelimen vastaus: '550 <joku@example.com> Välitys estetty', Portti: 25, "
        "Suojattu (SSL): Ei, Palvelinvirhe: 550, Virhenumero: 0x800CCC79"
    ),
}

# A second wording per language, as a bare server reply.
BARE_REPLIES = {
    "sv": "554 5.7.1 <a@b.example>: förbjuden vidarebefordran",
    "de": "550 5.7.1 Relay nicht erlaubt",
    "fr": "550 relayage non autorisé pour <a@b.example>",
    "es": "550 No se permite el relay",
    "nl": "550 doorsturen niet toegestaan",
    "da": "550 videresendelse er ikke tilladt",
    "no": "550 Videresending er ikke tillatt",
    "fi": "550 välittäminen ei ole sallittu",
}

# Unknown words (Indonesian), but Outlook's number, port 25 and "SSL: No" still say it.
UNKNOWN_WORDS = (
    "Server: 'smtp.example.net', Protocol: SMTP, Server Response: '550 Pesan ditolak oleh "
    "kebijakan server', Port: 25, Secure(SSL): No, Server Error: 550, Error Number: 0x800CCC79"
)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(doctor, list(args))
    return r.exit_code, r.stdout


@pytest.mark.parametrize("lang", sorted(OUTLOOK_DIALOGS))
def test_outlook_dialog_in_each_language(lang: str) -> None:
    text = OUTLOOK_DIALOGS[lang]
    p = parse_error(text)
    assert (p.code, p.port, p.secure, p.number) == (550, 25, False, "0x800CCC79"), p
    assert p.server == "smtp.example.net"
    d = explain_error(text)
    assert d.case == "relay_denied_no_auth"
    assert d.confidence is Confidence.HIGH
    wording = [f for f in d.findings if f.id == "wording_of"]
    assert wording and wording[0].params["servers"] == f"localized ({lang})"
    assert any(f.id == "port25_no_ssl" for f in d.findings)
    code, out = run("--explain-error", text)
    assert code == 0 and "[relay_denied_no_auth]" in out and "How sure: sure" in out


@pytest.mark.parametrize("lang", sorted(BARE_REPLIES))
def test_second_wording_in_each_language(lang: str) -> None:
    d = explain_error(BARE_REPLIES[lang])
    assert d.case == "relay_denied_no_auth", (lang, d.case)
    assert d.confidence is Confidence.HIGH


def test_issue_swedish_example_is_explained_in_swedish() -> None:
    code, out = run("--explain-error", SWEDISH_OUTLOOK, "--lang", "sv")
    assert code == 0
    assert "[relay_denied_no_auth]" in out
    assert "Hur säker: säker" in out
    assert "smtp.example.net:25" in out and "someone@example.com" in out
    assert "Servern svarade: 550 <someone@example.com>... Vidarebefordran nekad" in out
    assert "kryptering: nej" in out and "Port 25 utan kryptering" in out
    assert "port 587 med STARTTLS" in out


def test_decomposed_unicode_is_read_like_composed() -> None:
    d = explain_error(unicodedata.normalize("NFD", SWEDISH_OUTLOOK))
    assert d.case == "relay_denied_no_auth" and d.confidence is Confidence.HIGH


def test_unknown_words_fall_back_on_number_port_and_ssl() -> None:
    d = explain_error(UNKNOWN_WORDS)
    assert d.case == "relay_denied_no_auth"
    assert d.confidence is Confidence.MEDIUM
    ids = [f.id for f in d.findings]
    assert "wording_of" not in ids
    assert {"reply_code", "stage_rcpt", "outlook_error", "client_port", "port25_no_ssl"} <= set(ids)
    code, out = run("--explain-error", UNKNOWN_WORDS, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["case"] == "relay_denied_no_auth" and doc["confidence"] == "medium"
    code, out = run("--explain-error", UNKNOWN_WORDS)
    assert "How sure: fairly sure" in out
    assert "The server said: 550 Pesan ditolak oleh kebijakan server" in out


def test_unknown_words_without_the_port_clues_are_not_called_relaying() -> None:
    """Port 587 with SSL on and unknown words: no sign of a missing login, so no guess."""
    text = UNKNOWN_WORDS.replace("Port: 25, Secure(SSL): No", "Port: 587, Secure(SSL): Yes")
    d = explain_error(text)
    assert d.case == "rejected_other"
    assert d.confidence is Confidence.LOW


def unknown_words(reply: str, port: int, ssl: str, number: str) -> str:
    return (
        f"Server: 'smtp.example.net', Protocol: SMTP, Server Response: '{reply}', Port: {port}, "
        f"Secure(SSL): {ssl}, Server Error: {reply[:3]}, Error Number: {number}"
    )


@pytest.mark.parametrize(
    ("reply", "port", "ssl", "number", "case", "confidence"),
    [
        # The stage: 0x800CCC78 is the sender refused at MAIL, never a relay refusal.
        ("550 Pesan ditolak", 25, "No", "0x800CCC78", "sender_rejected", Confidence.MEDIUM),
        ("553 5.7.1 Pesan ditolak", 587, "Yes", "0x800CCC78", "sender_rejected", Confidence.MEDIUM),
        # The enhanced code alone (5.7.x: policy) points at the login on 587 with SSL.
        (
            "550 5.7.1 Pesan ditolak",
            587,
            "Yes",
            "0x800CCC79",
            "relay_denied_no_auth",
            Confidence.MEDIUM,
        ),
        # Nothing but the code and the stage: said, but hardly sure.
        ("550 Pesan ditolak", 587, "Yes", "0x800CCC79", "rejected_other", Confidence.LOW),
    ],
)
def test_unknown_words_weigh_stage_enhanced_code_port_and_ssl(
    reply: str, port: int, ssl: str, number: str, case: str, confidence: Confidence
) -> None:
    d = explain_error(unknown_words(reply, port, ssl, number))
    assert (d.case, d.confidence) == (case, confidence)
    ids = [f.id for f in d.findings]
    assert "wording_of" not in ids and "reply_code" in ids
    assert ("stage_rcpt" in ids) == (number == "0x800CCC79")


def test_number_alone_is_a_low_confidence_guess() -> None:
    d = explain_error("Outlook says 0x800ccc79 when I send")
    assert d.case == "relay_denied_no_auth" and d.confidence is Confidence.LOW
    assert d.params["reply"] == "@reply_not_shown"
    d = explain_error("Error Number: 0x800CCC79, Port: 25, Secure(SSL): No")
    assert d.confidence is Confidence.MEDIUM


def test_code_defined_replies_are_fairly_sure() -> None:
    assert explain_error("530 go away").confidence is Confidence.MEDIUM
    assert explain_error("450 come back later").case == "temporary_failure"


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        (
            "The message was refused: the server answered 554 5.7.1 <bob@x.example>: Relay "
            "access denied",
            "554 5.7.1 <bob@x.example>: Relay access denied",
        ),
        (
            "Sending failed. Thunderbird says relaying denied for <bob@x.example>. Help!",
            "Thunderbird says relaying denied for <bob@x.example>",
        ),
    ],
)
def test_reply_inside_a_sentence_is_shown_not_unknown(text: str, reply: str) -> None:
    """Regression: 'The server said: unknown' when the reply sat inside a sentence."""
    d = explain_error(text)
    assert d.case == "relay_denied_no_auth"
    assert d.params["reply"] == reply
    code, out = run("--explain-error", text)
    assert f"The server said: {reply}" in out
    assert "The server said: unknown" not in out


@pytest.mark.parametrize(
    "garbage",
    [
        "HTTP/1.1 404 Not Found",
        "I tried 500 times, nothing works",
        "Port: 25, Secure(SSL): No",
        "\x00\x01\x02 binary junk \ufffd",
        "x" * 50_000,
    ],
)
def test_garbage_stays_not_recognised(garbage: str) -> None:
    code, out = run("--explain-error", garbage)
    assert code == 2, out
    assert "[not_recognised]" in out


def test_every_client_error_number_cites_its_source() -> None:
    """Outlook numbers come from Microsoft's documentation, named and cited in the catalogue."""
    assert set(c.CLIENT_ERROR_SOURCES) == set(c.CLIENT_ERRORS)
    for number, (constant, url) in c.CLIENT_ERROR_SOURCES.items():
        assert re.fullmatch(r"IXP_E_[A-Z0-9_]+", constant), number
        assert url.startswith(("https://learn.microsoft.com/", "https://support.microsoft.com/"))
        # HR_E(n) = MAKE_SCODE(SEVERITY_ERROR, FACILITY_INTERNET = 12, n)
        assert int(number, 16) & 0xFFFF0000 == 0x800C0000, number
