"""The settings and documents handed to mail programs, from a config (no server):
the published shape, only secure roads, never port 25, and "say so" when
there is no secure way to send."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from autoconfig_shape import read_as_client, validate_autoconfig

from postvakt import config as config_mod
from postvakt.config import Config, ConfigError
from postvakt.web import mailconfig as mc
from postvakt.web.app import RateLimiter, choose_language, page_domain

PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "pop3": 110, "pop3s": 995}


def cfg(web: str = "") -> Config:
    return config_mod.loads(
        'hostname = "mx.example.org"\n[domains]\nlocal = ["example.org", "mail.example.org"]\n'
        + web
    )


def test_autoconfig_has_the_published_shape_and_only_secure_servers() -> None:
    s = mc.settings_for(cfg(), "example.org", PORTS)
    xml = mc.autoconfig_xml(s, "https://example.org/help")
    assert validate_autoconfig(xml) == []
    incoming, outgoing = read_as_client(xml, "alice@example.org")
    assert [(i.port, i.socket_type) for i in incoming] == [(995, "SSL"), (110, "STARTTLS")]
    assert [(o.port, o.socket_type) for o in outgoing] == [(465, "SSL"), (587, "STARTTLS")]
    for server in incoming + outgoing:
        assert server.hostname == "mx.example.org"
        assert server.username == "alice@example.org"
        assert server.authentication == "password-cleartext"
    assert 25 not in [o.port for o in outgoing]


def test_public_host_overrides_the_hostname() -> None:
    s = mc.settings_for(cfg('[web]\npublic_host = "Mail.Example.ORG."\n'), "example.org", PORTS)
    assert {e.host for e in s.incoming + s.outgoing} == {"mail.example.org"}


def test_the_shape_validator_catches_what_clients_would_trip_on() -> None:
    """The validator is not a rubber stamp: each defect is named."""
    good = mc.autoconfig_xml(mc.settings_for(cfg(), "example.org", PORTS), "https://x/help")
    bad = (
        good.replace(b"<socketType>SSL</socketType>", b"<socketType>TLS</socketType>", 1)
        .replace(b"<displayName>", b"<displayname>", 1)
        .replace(b"</displayName>", b"</displayname>", 1)
        .replace(b"<port>995</port>", b"<port>99999</port>", 1)
    )
    problems = validate_autoconfig(bad)
    assert any("socketType 'TLS'" in p for p in problems)
    assert any("displayname" in p for p in problems)
    assert any("displayName: 0 times" in p for p in problems)
    assert any("port '99999'" in p for p in problems)


@pytest.mark.parametrize(
    ("ports", "problem"),
    [
        ({"smtp": 25, "pop3": 110, "pop3s": 995}, mc.Problem.NO_SECURE_SEND),
        ({"smtp": 25}, mc.Problem.NO_SECURE_SEND),
        ({"submission": 587}, mc.Problem.NO_INCOMING),
    ],
)
def test_no_secure_way_to_send_is_said_not_advertised(
    ports: dict[str, int], problem: mc.Problem
) -> None:
    s = mc.settings_for(cfg(), "example.org", ports)
    assert s.problem is problem
    assert all(e.port != 25 for e in s.outgoing)
    text = mc.problem_text(problem)
    assert "[listen]" in text


def test_autodiscover_answer_and_request() -> None:
    s = mc.settings_for(cfg(), "example.org", PORTS)
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{mc.AD_REQUEST_NS}">'
        "<Request><EMailAddress>alice@example.org</EMailAddress>"
        f"<AcceptableResponseSchema>{mc.AD_OUTLOOK_NS}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()
    email = mc.parse_autodiscover_request(body)
    assert email == "alice@example.org"
    root = ET.fromstring(mc.autodiscover_xml(s, email))
    ns = {"r": mc.AD_RESPONSE_NS, "o": mc.AD_OUTLOOK_NS}
    protocols = root.findall("o:Response/o:Account/o:Protocol", ns)
    got = {
        p.findtext("o:Type", namespaces=ns): (
            int(p.findtext("o:Port", namespaces=ns) or 0),
            p.findtext("o:Encryption", namespaces=ns),
            p.findtext("o:LoginName", namespaces=ns),
            p.findtext("o:AuthRequired", namespaces=ns),
        )
        for p in protocols
    }
    assert got == {
        "POP3": (995, "SSL", "alice@example.org", "on"),
        "SMTP": (465, "SSL", "alice@example.org", "on"),
    }
    assert root.findtext("o:Response/o:Account/o:Action", namespaces=ns) == "settings"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not xml at all", "not well-formed"),
        (b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "document type"),
        (b"<Autodiscover><Request/></Autodiscover>", "no EMailAddress"),
        (
            b"<Autodiscover><Request><EMailAddress>a@b</EMailAddress><AcceptableResponseSchema>"
            b"http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
            b"</AcceptableResponseSchema></Request></Autodiscover>",
            "not offered",
        ),
        (b"<a>" + b"x" * 10_000 + b"</a>", "too large"),
    ],
)
def test_bad_autodiscover_requests_are_named(body: bytes, reason: str) -> None:
    with pytest.raises(mc.AutodiscoverRequestError, match=reason):
        mc.parse_autodiscover_request(body)


def test_mobileconfig_is_a_stable_profile_with_the_secure_servers() -> None:
    s = mc.settings_for(cfg(), "example.org", PORTS)
    one = mc.mobileconfig(s, "alice@example.org")
    assert one == mc.mobileconfig(s, "alice@example.org")  # same UUIDs: re-install replaces
    profile = plistlib.loads(one)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAccountType"] == "EmailTypePOP"
    assert (account["IncomingMailServerPortNumber"], account["OutgoingMailServerPortNumber"]) == (
        995,
        465,
    )
    assert account["IncomingMailServerUseSSL"] and account["OutgoingMailServerUseSSL"]
    assert account["OutgoingMailServerUsername"] == "alice@example.org"
    assert profile["PayloadUUID"] != account["PayloadUUID"]
    other = plistlib.loads(mc.mobileconfig(s, "bob@example.org"))
    assert other["PayloadUUID"] != profile["PayloadUUID"]


@pytest.mark.parametrize(
    ("query", "header", "lang"),
    [
        (None, "sv-SE,sv;q=0.9,en-US;q=0.8,en;q=0.7", "sv"),
        (None, "de-DE,de;q=0.9,en;q=0.8,sv;q=0.5", "en"),
        (None, "de-DE,sv;q=0.6,en;q=0.4", "sv"),
        (None, "", "en"),
        (None, "sv;q=0,en;q=0.1", "en"),
        (None, "sv;q=abc", "en"),
        ("sv", "en", "sv"),
        ("xx", "sv", "sv"),
    ],
)
def test_language_from_query_then_accept_language(
    query: str | None, header: str, lang: str
) -> None:
    assert choose_language(query, header) == lang


def test_page_domain_follows_the_host_name() -> None:
    c = cfg()
    assert page_domain(c, "mail.example.org") == "mail.example.org"
    assert page_domain(c, "autoconfig.example.org") == "example.org"
    assert page_domain(c, "127.0.0.1") == "example.org"


def test_rate_limiter_refills_over_time() -> None:
    r = RateLimiter(per_minute=60, burst=2)
    assert r.allow("a", now=0) and r.allow("a", now=0)
    assert not r.allow("a", now=0)
    assert r.allow("b", now=0)  # per address
    assert r.allow("a", now=1.0)  # one token a second


def test_rate_limiter_forgets_the_oldest_beyond_its_size() -> None:
    r = RateLimiter(per_minute=1, burst=1, max_clients=2)
    assert r.allow("a", now=0) and not r.allow("a", now=0)
    r.allow("b", now=0)
    r.allow("c", now=0)  # "a" is forgotten: bounded memory, at worst a fresh bucket
    assert r.allow("a", now=0)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[web]\nlisten = "nowhere"\n', "[web] listen"),
        ('[web]\npublic_host = "not a host"\n', "[web] public_host"),
        ('[web]\nproxy_trusted = ["300.0.0.1"]\n', "[web] proxy_trusted"),
        ("[web]\nrequest_timeout = 0\n", "[web] request_timeout"),
        ("[web]\nlisten_tls = 1\n", "[web] listen_tls"),
    ],
)
def test_web_config_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg(text)
    assert e.value.key == key


def test_web_is_off_by_default() -> None:
    assert cfg().web.listen == ()
    on = cfg('[web]\nlisten = "127.0.0.1:8080"\n')
    assert [str(hp) for hp in on.web.listen] == ["127.0.0.1:8080"]
