"""The one address parser: RFC 5321 paths and RFC 5322 header addresses.

Relay tricks (`%`-hacks, `!`-paths, source routes, quoted `@`, `v@X@L`)
work by making two parsers disagree about where a message goes. postvakt
has one parser; SMTP, policy, routing and delivery all use the `Address`
it returns, so the relay check judges exactly the address that delivery uses.

Rules of the house:
- Nothing routes on `%`, `!` or a quoted `@`: they stay in `local` and only
  set `routed`, so a relay check can treat the address with suspicion.
- Source routes (`<@a,@b:u@d>`) are parsed and dropped (RFC 5321 §4.1.1.3,
  appendix C); the mail goes to `u@d` or nowhere.
- Only one unquoted `@` is allowed; `v@X@L` is a syntax error, never a route.
- Domains come out canonical: lowercase, IDNA A-labels, no trailing dot;
  address literals normalized (`[127.0.0.1]`, `[IPv6:::1]`).
- Every failure is an `AddressError` carrying the `Reply` to send.
- The 64-octet local-part limit (RFC 5321 §4.5.3.1.1) is not enforced, as
  in Postfix: real addresses (VERP, SRS) exceed it; the 256-octet path
  limit still bounds everything.
- Pure: no I/O, no clock, no sockets.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from email import policy as email_policy
from email.errors import InvalidHeaderDefect
from email.utils import getaddresses

from postvakt.reply import Reply

__all__ = [
    "NULL_PATH",
    "Address",
    "AddressError",
    "mailbox_problem",
    "parse_address",
    "parse_header_addresses",
    "parse_path",
    "split_path_and_params",
]

# RFC 5321 §4.5.3.1.3: a reverse- or forward-path is at most 256 octets,
# "including the punctuation and element separators" (the angle brackets).
MAX_PATH_OCTETS = 256
# RFC 5321 §4.5.3.1.2 / RFC 1035 §2.3.4: a domain name is at most 255 octets,
# a label at most 63.
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63
# How much of a bad address is echoed back in a reply: enough to recognize it,
# short enough that a reply line stays far below RFC 5321's 512-octet limit.
MAX_ECHO_CHARS = 80

# RFC 5321 §4.1.2 atext (from RFC 5322 §3.2.3), without the dot.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_DOT_ATEXT = _ATEXT | {"."}
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
# Characters in a local part that request sender-specified routing elsewhere
# (percent hack, UUCP bang path, quoted "@").
_ROUTING_CHARS = frozenset("%!@")
# RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
POSTMASTER = "Postmaster"


class AddressError(ValueError):
    """A bad address, with the reply that tells the client what is wrong."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _syntax(shown: str, reason: str) -> AddressError:
    return AddressError(Reply(501, "5.1.3", f"<{_echo(shown)}>: {reason}"))


def _echo(text: str) -> str:
    """Make untrusted text safe to put in a reply line (no CR/LF, bounded)."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in text)
    if len(safe) > MAX_ECHO_CHARS:
        safe = safe[: MAX_ECHO_CHARS - 3] + "..."
    return safe


def _is_dot_atom(text: str, utf8: bool) -> bool:
    if not text or text.startswith(".") or text.endswith(".") or ".." in text:
        return False
    if _DOT_ATEXT.issuperset(text):  # the usual case, without a loop in Python
        return True
    return utf8 and all(ch in _DOT_ATEXT or ord(ch) > 127 for ch in text)


def _quote_local(local: str) -> str:
    if _is_dot_atom(local, utf8=True):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Address:
    """A canonical mailbox: dequoted local part (case kept) and canonical domain."""

    local: str
    domain: str

    def __str__(self) -> str:
        # Made once and kept in the instance (policy, logs and the envelope each
        # ask for it); not a functools.cached_property, whose lock costs more here.
        text: str | None = self.__dict__.get("_text")
        if text is None:
            text = self.__dict__["_text"] = self._text()
        return text

    def _text(self) -> str:
        if self.is_null:
            return ""
        if not self.domain:
            return self.local
        return f"{_quote_local(self.local)}@{self.domain}"

    @property
    def is_null(self) -> bool:
        """The `<>` reverse-path used by bounces."""
        return not self.local and not self.domain

    @property
    def routed(self) -> bool:
        """The local part asks for sender-specified routing; never honoured."""
        return any(ch in _ROUTING_CHARS for ch in self.local)

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")


NULL_PATH = Address("", "")


# ---------------------------------------------------------------- pieces


def _check_characters(text: str, shown: str, smtputf8: bool) -> None:
    if text.isascii() and text.isprintable():  # the usual case, without a loop in Python
        return
    for ch in text:
        if ord(ch) < 32 or ord(ch) == 127:
            raise _syntax(shown, "control character in address")
    if not smtputf8 and any(ord(ch) > 127 for ch in text):
        raise AddressError(
            Reply(553, "5.6.7", f"<{_echo(shown)}>: non-ASCII address needs SMTPUTF8")
        )


def _parse_literal(text: str, shown: str) -> str:
    """`[1.2.3.4]` or `[IPv6:...]` -> normalized literal (RFC 5321 §4.1.3)."""
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        except ValueError:
            raise _syntax(shown, f"bad IPv6 address literal {text}") from None
    try:
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise _syntax(shown, f"bad address literal {text}") from None


def _parse_domain(text: str, shown: str) -> str:
    """A domain name or address literal -> canonical form."""
    if not text:
        raise _syntax(shown, "empty domain")
    if text.startswith("[") and text.endswith("]"):
        return _parse_literal(text, shown)
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise _syntax(shown, "empty domain")
    if not name.isascii():
        name = unicodedata.normalize("NFC", name)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise _syntax(shown, f"bad international domain {text}") from None
    name = name.lower()
    if len(name) > MAX_DOMAIN_OCTETS:
        raise _syntax(shown, "domain too long")
    for label in name.split("."):
        if not label:
            raise _syntax(shown, f"empty label in domain {text}")
        if len(label) > MAX_LABEL_OCTETS:
            raise _syntax(shown, "domain label longer than 63 octets")
        if not _LDH.issuperset(label):
            raise _syntax(shown, f"bad character in domain {text}")
        if label.startswith("-") or label.endswith("-"):
            raise _syntax(shown, f"domain label starts or ends with '-' in {text}")
    return name


def _scan_quoted(text: str, start: int, shown: str) -> tuple[str, int]:
    """Read a quoted string at `text[start] == '"'`; return (content, end index)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise _syntax(shown, "unterminated quoted string")


def _parse_mailbox(text: str, shown: str, smtputf8: bool) -> Address:
    """`local@domain` (no brackets, no route) -> Address."""
    if text.startswith('"'):
        local, end = _scan_quoted(text, 0, shown)
        rest = text[end:]
        if not rest:
            raise _syntax(shown, "no domain after quoted local part")
        if not rest.startswith("@"):
            raise _syntax(shown, "text after quoted local part")
        domain_text = rest[1:]
        if not local:
            raise _syntax(shown, "empty local part")
    else:
        if text.count("@") > 1:
            raise _syntax(shown, "more than one @ in address")
        if "@" not in text:
            if text.lower() == POSTMASTER.lower():
                return Address(POSTMASTER, "")
            raise _syntax(shown, "need fully-qualified address")
        local, domain_text = text.split("@", 1)
        if not local:
            raise _syntax(shown, "empty local part")
        if not _is_dot_atom(local, smtputf8):
            raise _syntax(shown, "bad local part")
    if "@" in domain_text:
        raise _syntax(shown, "more than one @ in address")
    if '"' in domain_text or "\\" in domain_text:
        raise _syntax(shown, "bad character in domain")
    local = unicodedata.normalize("NFC", local)
    return Address(local, _parse_domain(domain_text, shown))


def _drop_source_route(inner: str, shown: str) -> str:
    """`@a,@b:u@d` -> `u@d` after checking each hop's syntax (RFC 5321 §4.1.1.3)."""
    if not inner.startswith("@"):
        return inner
    colon = -1
    in_literal = False
    for i, ch in enumerate(inner):
        if ch == "[":
            in_literal = True
        elif ch == "]":
            in_literal = False
        elif ch == ":" and not in_literal:
            colon = i
            break
    if colon < 0:
        raise _syntax(shown, "source route without ':'")
    for hop in inner[:colon].split(","):
        if not hop.startswith("@"):
            raise _syntax(shown, "bad source route")
        _parse_domain(hop[1:], shown)
    return inner[colon + 1 :]


# ---------------------------------------------------------------- public API


def parse_path(path: str, *, smtputf8: bool = False, allow_null: bool = False) -> Address:
    """An SMTP reverse- or forward-path (`<...>`) -> canonical Address.

    Brackets may be missing (old clients send `MAIL FROM:a@b`); the address
    inside is judged by the same rules either way.
    """
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_OCTETS:
        raise AddressError(Reply(501, "5.1.3", "Path too long"))
    if path.startswith("<"):
        if not path.endswith(">") or len(path) < 2:
            raise _syntax(path[1:], "missing '>'")
        inner = path[1:-1]
    else:
        inner = path
    shown = inner
    _check_characters(inner, shown, smtputf8)
    if not inner:
        if allow_null:
            return NULL_PATH
        raise _syntax(shown, "null address not allowed here")
    mailbox = _drop_source_route(inner, shown)
    return _parse_mailbox(mailbox, shown, smtputf8)


def split_path_and_params(arg: str) -> tuple[str, list[tuple[str, str | None]]]:
    """`<a@b> SIZE=10 BODY=8BITMIME` -> (`<a@b>`, [(SIZE, 10), (BODY, 8BITMIME)]).

    The path ends at the `>` that is not inside a quoted local part, so a
    quoted `>` or space cannot smuggle a parameter into the address.
    """
    text = arg.lstrip(" ")
    if text.startswith("<"):
        i = 1
        in_quote = False
        while i < len(text):
            ch = text[i]
            if in_quote and ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quote = not in_quote
            elif ch == ">" and not in_quote:
                break
            i += 1
        else:
            raise _syntax(text[1:], "missing '>'")
        path, rest = text[: i + 1], text[i + 1 :]
    else:
        cut = text.find(" ")
        path, rest = (text, "") if cut < 0 else (text[:cut], text[cut:])
    if rest and not rest.startswith(" "):
        raise _syntax(path.strip("<>"), "text after address")
    params: list[tuple[str, str | None]] = []
    for word in rest.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not key or not (key[0].isascii() and key[0].isalnum()):
            raise _bad_param(word)
        if not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in key):
            raise _bad_param(word)
        if eq:
            # RFC 5321 §4.1.2 esmtp-value: %d33-60 / %d62-126 (RFC 6531 adds UTF-8).
            if not value or any(ord(ch) < 33 or ch == "=" or ord(ch) == 127 for ch in value):
                raise _bad_param(word)
            params.append((key.upper(), value))
        else:
            params.append((key.upper(), None))
    return path, params


def _bad_param(word: str) -> AddressError:
    return AddressError(Reply(501, "5.5.4", f"Bad parameter syntax: {_echo(word)}"))


def parse_address(text: str) -> Address:
    """An address as an admin types it (CLI, config): `alice@example.test`, no `<>`."""
    stripped = text.strip()
    if stripped.startswith("<") and stripped.endswith(">"):
        return parse_path(stripped, smtputf8=True)
    return parse_path(f"<{stripped}>", smtputf8=True)


def mailbox_problem(text: str) -> str | None:
    """Why `text` cannot name a mailbox, an alias or a send-as address; None if it can.

    The admin's check (`postvakt user add`, `alias add`, ...) is SMTP's own
    parser: an address stored in the directory is one a client can reach.
    On top, an address the directory holds needs a domain, and no source
    route or address literal. The reason is plain words, for a CLI error.
    """
    stripped = text.strip()
    inner = stripped[1:-1] if stripped.startswith("<") and stripped.endswith(">") else stripped
    size = len(inner.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_OCTETS - 2:
        return f"it is {size} octets long; SMTP takes at most {MAX_PATH_OCTETS - 2} in an address"
    if inner.startswith("@"):
        return "a source route (@host:) is not part of a mailbox name"
    try:
        address = parse_path(f"<{inner}>", smtputf8=True)
    except AddressError as e:
        reason = e.reply.text.rpartition(">: ")[2] or e.reply.text
        if reason == "bad local part":
            local = inner.rpartition("@")[0]
            bad = next((c for c in local if c not in _ATEXT and c != "." and ord(c) < 128), None)
            if bad is not None:
                return f"bad local part: {bad!r} is not allowed in it unquoted"
            return "bad local part: a dot at its start or end, or two dots in a row"
        return reason
    if not address.domain:
        return "it has no domain (user@domain)"
    if address.is_literal:
        return "an address literal ([...]) is not a mail domain of ours"
    return None


# A From:/Sender: value with no character that could make two parsers disagree:
# an optional plain display name and <addr>, or a bare addr.
_ADDR_CHARS = r"[^\s<>()\[\]\",;:\\@]+@[^\s<>()\[\]\",;:\\@]+"
_SIMPLE_FROM = re.compile(rf"^\s*(?:[A-Za-z0-9 .'_-]*<({_ADDR_CHARS})>|({_ADDR_CHARS}))\s*$")


def parse_header_addresses(value: str, *, smtputf8: bool = True) -> list[Address]:
    """A `From:`/`Sender:` header value -> canonical addresses.

    The email package handles display names, comments and groups; every
    address it finds then goes through `parse_path`, so header and envelope
    addresses compare equal exactly when they are the same mailbox.
    """
    if any(ord(ch) < 32 and ch not in "\t\r\n" for ch in value) or "\x7f" in value:
        raise _header_error("control character in header")
    unfolded = value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    simple = _SIMPLE_FROM.match(unfolded)
    if simple is not None:
        # The shape nearly every From: has ("Name <a@b>" or "a@b", no quotes,
        # comments, groups or lists): one reading only, so the email package's
        # full parser (the costliest step of a message) is not needed.
        spec = simple.group(1) or simple.group(2)
        try:
            return [parse_path(f"<{spec}>", smtputf8=smtputf8)]
        except AddressError as e:
            raise _header_error(f"bad address {_echo(spec)}: {e.reply.text}") from None
    try:
        header = email_policy.default.header_factory("From", unfolded)
        specs = [str(a.addr_spec) for a in getattr(header, "addresses", ())]
        defective = any(isinstance(d, InvalidHeaderDefect) for d in header.defects)
    except Exception:  # noqa: BLE001 - the stdlib parser crashes (AttributeError) on some junk
        raise _header_error(f"cannot parse {_echo(unfolded.strip())}") from None
    if defective:
        # The modern parser gave up on part of the list (it rejects the
        # trailing dot of "u@pv.test." for instance). Accept the classic
        # parser's reading only when it finds the same number of addresses
        # and every one of them is whole; anything else is ambiguous, and an
        # ambiguous From: is how a spoofed sender gets past a check.
        try:
            legacy = [addr for _name, addr in getaddresses([unfolded])]
        except Exception:  # noqa: BLE001 - as above: junk in, our reply out
            legacy = []
        if len(legacy) != len(specs) or not all(legacy):
            raise _header_error(f"malformed address list {_echo(unfolded.strip())}")
        specs = legacy
    out: list[Address] = []
    for spec in specs:
        if not spec or spec == "<>":
            continue
        try:
            out.append(parse_path(f"<{spec}>", smtputf8=smtputf8))
        except AddressError as e:
            raise _header_error(f"bad address {_echo(spec)}: {e.reply.text}") from None
    return out


def _header_error(reason: str) -> AddressError:
    # RFC 3463 X.6.0: a content (not envelope) problem; 550 as after DATA.
    return AddressError(Reply(550, "5.6.0", f"Bad address in header: {reason}"))
