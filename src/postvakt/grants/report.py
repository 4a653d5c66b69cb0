"""Grant reports: the one-line protocol by which a login elsewhere opens POP-before-SMTP.

Dovecot, set up by `postvakt dovecot config`, runs a small post-login script
after every successful IMAP login. The script connects to a Unix socket in
data_dir and sends one line; the server answers one line and closes:

    C: GRANT imap 192.0.2.7 alice@example.test
    S: OK 1767225600          a grant for that address until that time (epoch seconds)
    S: OFF                    POP-before-SMTP is off: nothing was granted, nothing is wrong
    S: NO <reason>            refused (who asked, or what was asked, is not acceptable)

The script is a file of its own that runs without postvakt installed for the
user Dovecot runs it as (see `postvakt.dovecot.postlogin`); it speaks these
same words, and a test runs it against the server.

This module is the pure part (the words, the parser, where the socket lives);
`postvakt.server.grantreport` listens, checks the peer's identity and writes
the grant.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt.policy import GrantProtocol, grant_protocol

if TYPE_CHECKING:
    from postvakt.config import Config

VERB = "GRANT"
SOCKET_NAME = "grants.sock"
# One report is one short line: the verb, a protocol, an address (at most 45
# characters for IPv6) and a login (RFC 5321 §4.5.3.1: 64 + 1 + 255 octets).
MAX_LINE = 512
# Linux's sockaddr_un holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

REPLY_OFF = b"OFF\n"


class ReportError(ValueError):
    """A report line that grants nothing; the message is the reason sent back after NO."""


@dataclass(frozen=True)
class Report:
    protocol: GrantProtocol
    ip: str
    login: str


def socket_path(config: Config) -> Path:
    return config.data_dir / SOCKET_NAME


def socket_path_problem(path: Path) -> str | None:
    """Why a Unix socket cannot live at `path`, or None."""
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        return f"{path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have"
    return None


def normal_ip(text: str) -> str:
    """The address as grants are keyed (IPv4-mapped IPv6 as plain IPv4); ValueError if none."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_report(line: bytes) -> Report:
    """One report line (with or without its line end) -> Report, or ReportError."""
    if len(line) > MAX_LINE:
        raise ReportError("line too long")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ReportError("not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 4 or parts[0] != VERB:
        raise ReportError(f"expected '{VERB} <protocol> <address> <login>'")
    _, proto, ip, login = parts
    try:
        protocol = grant_protocol(proto)
    except ValueError as e:
        raise ReportError(str(e)) from None
    try:
        ip = normal_ip(ip)
    except ValueError:
        raise ReportError(f"{ip!r} is not an IP address") from None
    if not login or any(c in login for c in "\t\x00") or not login.isprintable():
        raise ReportError("the login is empty or not printable")
    return Report(protocol, ip, login)


def request_line(protocol: GrantProtocol, ip: str, login: str) -> bytes:
    return f"{VERB} {protocol} {ip} {login}\n".encode("ascii")


def reply_ok(expires: float) -> bytes:
    return f"OK {int(expires)}\n".encode()


def reply_no(reason: str) -> bytes:
    clean = "".join(c if c.isprintable() else "?" for c in reason)[:200]
    return f"NO {clean}\n".encode()
