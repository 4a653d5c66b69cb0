"""What the checks found, as values, and the `Authentication-Results:` field
they become (RFC 8601). Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal

AUTH_RESULTS = "Authentication-Results"
# RFC 6008 §4: header.b carries the first characters of b=, enough to tell
# two signatures of one message apart.
HEADER_B_LENGTH = 8


class SPFResult(enum.StrEnum):
    """RFC 7208 §2.6."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DKIMResult(enum.StrEnum):
    """RFC 8601 §2.7.1."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DMARCResult(enum.StrEnum):
    """RFC 7489 §11.2."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


DMARCPolicy = Literal["none", "quarantine", "reject"]
SPFIdentity = Literal["mailfrom", "helo"]


@dataclass(frozen=True)
class SPFCheck:
    """One SPF identity checked: MAIL FROM (or postmaster@HELO for `<>`), or HELO."""

    identity: SPFIdentity
    # The address checked ("postmaster@helo" for the HELO identity) and its domain.
    sender: str
    domain: str
    result: SPFResult
    detail: str


@dataclass(frozen=True)
class DKIMCheck:
    """One DKIM-Signature verified; `domain` and `selector` are d= and s=."""

    domain: str
    selector: str
    algorithm: str
    result: DKIMResult
    detail: str
    # The start of b= (RFC 6008), to tell signatures apart.
    b: str = ""


@dataclass(frozen=True)
class DMARCCheck:
    """The From: domain's DMARC verdict and the policy that domain asks for."""

    from_domain: str
    result: DMARCResult
    # The policy that applies to this From: domain (p=, or sp= for a
    # subdomain); None when no record was found.
    policy: DMARCPolicy | None
    detail: str
    org_domain: str = ""


@dataclass(frozen=True)
class AuthResults:
    """Everything checked for one message; None for a check not made."""

    spf_mailfrom: SPFCheck | None = None
    spf_helo: SPFCheck | None = None
    dkim: tuple[DKIMCheck, ...] = ()
    # False when DKIM was not looked at (DMARC checks off): nothing to record.
    dkim_checked: bool = False
    dmarc: DMARCCheck | None = None


# RFC 8601 §2.2: a value is a token or a quoted-string; a comment is in ().
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+$")


def _value(text: str) -> str:
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = " ".join(text.replace("\\", "").replace("(", "[").replace(")", "]").split())
    return f" ({clean})" if clean else ""


def authentication_results(authserv_id: str, results: AuthResults) -> str:
    """The field's value (after "Authentication-Results: "), one line."""
    parts: list[str] = []
    for spf in (results.spf_mailfrom, results.spf_helo):
        if spf is not None:
            prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
            ident = spf.sender if spf.identity == "mailfrom" else spf.domain
            parts.append(f"spf={spf.result}{_comment(spf.detail)} {prop}={_value(ident)}")
    if results.dkim_checked:
        if not results.dkim:
            parts.append("dkim=none (no signature)")
        for d in results.dkim:
            props = f" header.d={_value(d.domain)} header.s={_value(d.selector)}"
            if d.b:
                props += f" header.b={_value(d.b)}"
            parts.append(f"dkim={d.result}{_comment(d.detail)}{props}")
    if results.dmarc is not None:
        m = results.dmarc
        policy = f"p={m.policy} " if m.policy else ""
        parts.append(
            f"dmarc={m.result}{_comment(policy + m.detail)} header.from={_value(m.from_domain)}"
        )
    if not parts:
        return f"{authserv_id}; none"
    return f"{authserv_id}; " + "; ".join(parts)


def authserv_id_of(value: str) -> str:
    """The authserv-id of an A-R field value: its first token, before ';' (RFC 8601 §2.2)."""
    head = value.split(";", 1)[0]
    # Comments may sit before the id: drop (...) groups, then the optional version number.
    head = re.sub(r"\([^)]*\)", " ", head).strip()
    return head.split()[0].lower() if head.split() else ""
