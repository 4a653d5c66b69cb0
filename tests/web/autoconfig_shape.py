"""The published shape of the documents mail programs read, and a reader that
takes them apart the way the clients do.

autoconfig: draft-ietf-mailmaint-autoconfig (the format Thunderbird's
readFromXML, Evolution's e-mail-autoconfig and K-9/FairEmail read): every
element and attribute a client reads, with the values it accepts. A document
with an element the shape does not know, a missing element, a repeated
single element or a value outside its set fails validation.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
AUTHENTICATIONS = {
    "password-cleartext",
    "password-encrypted",
    "NTLM",
    "GSSAPI",
    "client-IP-address",
    "TLS-client-cert",
    "OAuth2",
    "none",
}
USERNAME_PLACEHOLDERS = {"%EMAILADDRESS%", "%EMAILLOCALPART%", "%EMAILDOMAIN%"}


@dataclass(frozen=True)
class Rule:
    """Children allowed under one element: name -> (min, max); max None = unbounded."""

    children: dict[str, tuple[int, int | None]]
    attributes: frozenset[str] = frozenset()
    required_attributes: frozenset[str] = frozenset()


_SERVER = Rule(
    {
        "hostname": (1, 1),
        "port": (1, 1),
        "socketType": (1, 1),
        "username": (1, 1),
        "authentication": (1, None),
        "password": (0, 1),
        "pop3": (0, 1),
    },
    frozenset({"type"}),
    frozenset({"type"}),
)

SHAPE: dict[str, Rule] = {
    "clientConfig": Rule({"emailProvider": (1, 1)}, frozenset({"version"}), frozenset({"version"})),
    "emailProvider": Rule(
        {
            "domain": (1, None),
            "displayName": (1, 1),
            "displayShortName": (0, 1),
            "incomingServer": (1, None),
            "outgoingServer": (1, None),
            "documentation": (0, None),
        },
        frozenset({"id"}),
        frozenset({"id"}),
    ),
    "incomingServer": _SERVER,
    "outgoingServer": _SERVER,
    "pop3": Rule(
        {
            "leaveMessagesOnServer": (0, 1),
            "downloadOnBiff": (0, 1),
            "daysToLeaveMessagesOnServer": (0, 1),
        }
    ),
    "documentation": Rule({"descr": (1, None)}, frozenset({"url"}), frozenset({"url"})),
    "descr": Rule({}, frozenset({"lang"}), frozenset({"lang"})),
}
_LEAVES = {
    "domain",
    "displayName",
    "displayShortName",
    "hostname",
    "port",
    "socketType",
    "username",
    "authentication",
    "password",
    "leaveMessagesOnServer",
    "downloadOnBiff",
    "daysToLeaveMessagesOnServer",
    "descr",
}


def validate_autoconfig(xml: bytes) -> list[str]:
    """Every way the document departs from the published shape (empty = valid)."""
    problems: list[str] = []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return [f"not well-formed: {e}"]
    if root.tag != "clientConfig":
        return [f"root is {root.tag}, not clientConfig"]
    if root.get("version") != "1.1":
        problems.append("clientConfig version is not 1.1")

    def walk(el: ET.Element, path: str) -> None:
        rule = SHAPE.get(el.tag)
        if rule is None:
            if el.tag not in _LEAVES:
                problems.append(f"{path}: unknown element")
            elif len(el):
                problems.append(f"{path}: a text element with children")
            elif not (el.text or "").strip():
                problems.append(f"{path}: empty")
            return
        for attr in el.attrib:
            if attr not in rule.attributes:
                problems.append(f"{path}: unknown attribute {attr}")
        for attr in rule.required_attributes:
            if not el.get(attr):
                problems.append(f"{path}: missing attribute {attr}")
        counts: dict[str, int] = {}
        for child in el:
            counts[child.tag] = counts.get(child.tag, 0) + 1
            if child.tag not in rule.children:
                problems.append(f"{path}/{child.tag}: not allowed here")
            walk(child, f"{path}/{child.tag}")
        for name, (lo, hi) in rule.children.items():
            n = counts.get(name, 0)
            if n < lo or (hi is not None and n > hi):
                problems.append(f"{path}/{name}: {n} times, allowed {lo}..{hi or 'n'}")

    walk(root, "clientConfig")
    for tag in ("incomingServer", "outgoingServer"):
        for server in root.iter(tag):
            kind = server.get("type")
            allowed = {"imap", "pop3"} if tag == "incomingServer" else {"smtp"}
            if kind not in allowed:
                problems.append(f"{tag} type {kind!r} not in {sorted(allowed)}")
            host = server.findtext("hostname") or ""
            if not _HOSTNAME.match(host):
                problems.append(f"{tag} hostname {host!r} is not a host name")
            port = server.findtext("port") or ""
            if not (port.isdigit() and 0 < int(port) < 65536):
                problems.append(f"{tag} port {port!r}")
            if server.findtext("socketType") not in SOCKET_TYPES:
                problems.append(f"{tag} socketType {server.findtext('socketType')!r}")
            for auth in server.findall("authentication"):
                if auth.text not in AUTHENTICATIONS:
                    problems.append(f"{tag} authentication {auth.text!r}")
            user = server.findtext("username") or ""
            if "%" in user and not all(
                p in USERNAME_PLACEHOLDERS for p in re.findall(r"%[A-Z]+%", user)
            ):
                problems.append(f"{tag} username {user!r} has an unknown placeholder")
    return problems


@dataclass(frozen=True)
class ClientServer:
    """One server as a client takes it from the document, placeholders filled in."""

    protocol: str
    hostname: str
    port: int
    socket_type: str
    username: str
    authentication: str


def read_as_client(xml: bytes, email: str) -> tuple[list[ClientServer], list[ClientServer]]:
    """(incoming, outgoing), preferred first, as a client reads them for `email`."""
    root = ET.fromstring(xml)
    local, _, domain = email.partition("@")

    def one(el: ET.Element) -> ClientServer:
        user = (
            (el.findtext("username") or "")
            .replace("%EMAILADDRESS%", email)
            .replace("%EMAILLOCALPART%", local)
            .replace("%EMAILDOMAIN%", domain)
        )
        return ClientServer(
            protocol=el.get("type", ""),
            hostname=el.findtext("hostname") or "",
            port=int(el.findtext("port") or 0),
            socket_type=el.findtext("socketType") or "",
            username=user,
            authentication=el.findtext("authentication") or "",
        )

    provider = root.find("emailProvider")
    assert provider is not None
    return [one(e) for e in provider.findall("incomingServer")], [
        one(e) for e in provider.findall("outgoingServer")
    ]
