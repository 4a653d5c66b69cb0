"""What a mail program should be told, and the three documents that tell it.

Rules of the house:
- Pure: the config and the ports the listeners really bound go in, values and
  bytes come out; no sockets, no clock. The HTTP side (app.py) only routes.
- Only secure roads are advertised: sending on submissions (465, implicit
  TLS, preferred by RFC 8314 §3.3) or submission (587, STARTTLS; the server
  demands TLS and AUTH there), never port 25; POP3 on pop3s (995, implicit
  TLS) or pop3 (110, STLS). The user name is the full address, as the server's
  AUTH and POP3 logins expect.
- A config with no secure way to send (or none to fetch) gets no document
  at all: `MailSettings.problem` says why, and the web answers 503 with that
  reason instead of advertising a road that would fail or leak a password.

The formats:
- Thunderbird/Evolution/K-9/FairEmail autoconfig `config-v1.1.xml`, as
  published in draft-ietf-mailmaint-autoconfig
  (https://www.ietf.org/archive/id/draft-ietf-mailmaint-autoconfig-04.html).
- Outlook's POX Autodiscover (request and response schemas 2006/2006a,
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/pox-autodiscover-xml-elements-for-exchange).
- Apple's configuration profile with one com.apple.mail.managed payload
  (a property list; https://developer.apple.com/documentation/devicemanagement/mail).
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from postvakt.config import Config
from postvakt.diagnose import catalogue

# Autodiscover's namespaces (request, response envelope, Outlook response).
AD_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AD_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AD_OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
# The largest Autodiscover request worth parsing: Outlook's is about 350 bytes.
MAX_AUTODISCOVER_REQUEST = 8 * 1024
# A profile's identifiers stay the same on every download, so that installing
# it again replaces the old one instead of adding a second account.
_PROFILE_NAMESPACE = uuid.UUID("6f1b2a4e-8c1d-4b9e-9a51-0c4f3b7d2e10")


class Security(StrEnum):
    SSL = "SSL"  # implicit TLS from the first byte
    STARTTLS = "STARTTLS"


class Protocol(StrEnum):
    SMTP = "smtp"
    POP3 = "pop3"


class Problem(StrEnum):
    """Why no settings are offered."""

    NO_SECURE_SEND = "no_secure_send"
    NO_INCOMING = "no_incoming"


@dataclass(frozen=True)
class Endpoint:
    protocol: Protocol
    host: str
    port: int
    security: Security


@dataclass(frozen=True)
class MailSettings:
    domain: str
    incoming: tuple[Endpoint, ...]
    outgoing: tuple[Endpoint, ...]

    @property
    def problem(self) -> Problem | None:
        if not self.outgoing:
            return Problem.NO_SECURE_SEND
        if not self.incoming:
            return Problem.NO_INCOMING
        return None


# The listener kinds, in the order a mail program should try them, with the
# security each one has in postvakt (server/smtp.py, server/pop3.py).
_OUTGOING = (("submissions", Security.SSL), ("submission", Security.STARTTLS))
_INCOMING = (("pop3s", Security.SSL), ("pop3", Security.STARTTLS))


def public_host(config: Config) -> str:
    return config.web.public_host or config.hostname


def settings_for(config: Config, domain: str, ports: Mapping[str, int]) -> MailSettings:
    """The settings for one local domain; `ports` holds the port each listener kind bound."""
    host = public_host(config)
    outgoing = tuple(
        Endpoint(Protocol.SMTP, host, ports[kind], sec) for kind, sec in _OUTGOING if kind in ports
    )
    incoming = tuple(
        Endpoint(Protocol.POP3, host, ports[kind], sec) for kind, sec in _INCOMING if kind in ports
    )
    return MailSettings(domain=domain, incoming=incoming, outgoing=outgoing)


def problem_text(problem: Problem) -> str:
    """The admin's sentence for a 503 (plain text, English: read by whoever set the server up)."""
    if problem is Problem.NO_SECURE_SEND:
        return (
            "This server offers no secure way to send mail: neither [listen] submission "
            "(port 587, STARTTLS and login) nor [listen] submissions (port 465, TLS and login) "
            "is configured, and port 25 is never advertised to mail programs. Add one of them "
            "to the config; until then no settings are offered.\n"
        )
    return (
        "This server offers no way to fetch mail: neither [listen] pop3s (port 995) nor "
        "[listen] pop3 (port 110 with STLS) is configured, so no mail program can be set up "
        "from here.\n"
    )


# ---------------------------------------------------------------- autoconfig


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)  # admins read these with curl
    out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return out


def autoconfig_xml(settings: MailSettings, help_url: str) -> bytes:
    """Thunderbird's config-v1.1.xml: every server, preferred first; the user name
    is %EMAILADDRESS%, which the client replaces with the address typed in."""
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=settings.domain)
    _sub(provider, "domain", settings.domain)
    _sub(provider, "displayName", settings.domain)
    _sub(provider, "displayShortName", settings.domain.split(".")[0])
    for tag, endpoints in (
        ("incomingServer", settings.incoming),
        ("outgoingServer", settings.outgoing),
    ):
        for ep in endpoints:
            server = _sub(provider, tag, type=ep.protocol.value)
            _sub(server, "hostname", ep.host)
            _sub(server, "port", str(ep.port))
            _sub(server, "socketType", ep.security.value)
            _sub(server, "username", "%EMAILADDRESS%")
            # PLAIN/LOGIN (and POP3 USER/PASS) inside TLS.
            _sub(server, "authentication", "password-cleartext")
    doc = _sub(provider, "documentation", url=help_url)
    for lang in catalogue.LANGUAGES:
        _sub(doc, "descr", catalogue.label("web_autoconfig_doc", lang), lang=lang)
    return _xml(root)


# ---------------------------------------------------------------- Autodiscover


class AutodiscoverRequestError(ValueError):
    """An Autodiscover request that cannot be answered; the text is for the 400."""


def parse_autodiscover_request(body: bytes) -> str:
    """The e-mail address an Outlook POX request asks about.

    The body is untrusted XML: DTDs (and so entity tricks) are refused before
    parsing; only the EMailAddress and AcceptableResponseSchema are read.
    """
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise AutodiscoverRequestError("request too large")
    if re.search(rb"<!(DOCTYPE|ENTITY)", body, re.IGNORECASE):
        raise AutodiscoverRequestError("document type declarations are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise AutodiscoverRequestError(f"not well-formed XML ({e})") from None
    email = schema = ""
    for el in root.iter():
        name = el.tag.rsplit("}", 1)[-1]
        if name == "EMailAddress":
            email = (el.text or "").strip()
        elif name == "AcceptableResponseSchema":
            schema = (el.text or "").strip()
    if schema and schema != AD_OUTLOOK_NS:
        raise AutodiscoverRequestError(f"response schema {schema!r} is not offered here")
    if not email:
        raise AutodiscoverRequestError("no EMailAddress in the request")
    return email


def autodiscover_xml(settings: MailSettings, email: str) -> bytes:
    """Outlook's POX answer: one POP3 and one SMTP protocol, login = the address."""
    root = ET.Element("Autodiscover", xmlns=AD_RESPONSE_NS)
    response = _sub(root, "Response", xmlns=AD_OUTLOOK_NS)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    for ep in (settings.incoming[0], settings.outgoing[0]):
        proto = _sub(account, "Protocol")
        _sub(proto, "Type", ep.protocol.value.upper())
        _sub(proto, "Server", ep.host)
        _sub(proto, "Port", str(ep.port))
        _sub(proto, "LoginName", email)
        _sub(proto, "DomainRequired", "off")
        _sub(proto, "SPA", "off")
        _sub(proto, "SSL", "on")
        # Encryption (MS-OXDSCLI) tells Outlook which kind; when present SSL is ignored.
        _sub(proto, "Encryption", "SSL" if ep.security is Security.SSL else "TLS")
        _sub(proto, "AuthRequired", "on")
        if ep.protocol is Protocol.SMTP:
            _sub(proto, "UsePOPAuth", "on")
            _sub(proto, "SMTPLast", "off")
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=AD_RESPONSE_NS)
    error = _sub(_sub(root, "Response"), "Error")
    _sub(error, "ErrorCode", str(code))
    _sub(error, "Message", message)
    _sub(error, "DebugData", "")
    return _xml(root)


# ---------------------------------------------------------------- Apple profile


def mobileconfig(settings: MailSettings, email: str) -> bytes:
    """An (unsigned) configuration profile with one POP account; the device asks for the password."""
    inc, out = settings.incoming[0], settings.outgoing[0]
    reverse = ".".join(reversed(settings.domain.split(".")))
    account_uuid = uuid.uuid5(_PROFILE_NAMESPACE, f"account:{email}")
    profile_uuid = uuid.uuid5(_PROFILE_NAMESPACE, f"profile:{email}")
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.postvakt.mail.account.{account_uuid}",
        "PayloadUUID": str(account_uuid).upper(),
        "PayloadDisplayName": email,
        "EmailAccountDescription": email,
        "EmailAccountType": "EmailTypePOP",
        "EmailAddress": email,
        "IncomingMailServerHostName": inc.host,
        "IncomingMailServerPortNumber": inc.port,
        # Apple's UseSSL means TLS: implicit on 995, STARTTLS on 110.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": email,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": out.host,
        "OutgoingMailServerPortNumber": out.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": email,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.postvakt.mail.{profile_uuid}",
        "PayloadUUID": str(profile_uuid).upper(),
        "PayloadDisplayName": f"{settings.domain} mail",
        "PayloadDescription": catalogue.label("web_profile_descr", "en", email=email),
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)
