"""What an SMTP reply means, for any server, from its code and its words.

Rules of the house:
- Pure: a reply (code, enhanced code, text) and the stage it answered go in, a
  kind comes out. No sockets, no clock; the doctor and `--explain-error` share it.
- The patterns are a table, first match wins. Each row names the servers whose
  wording it covers, so a new server's text is one row, not new logic.
- Words beat codes: "550 5.1.1 User doesn't exist" from Maddy and "553 ...
  rcpthosts (#5.7.1)" from qmail carry the meaning in the text; the code decides
  only when no row matches.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Reply kinds, in the words of the catalogue's cases.
ACCEPTED = "accepted"
RELAY_DENIED = "relay_denied"
AUTH_REQUIRED = "auth_required"
TLS_REQUIRED = "tls_required"
AUTH_REQUIRES_TLS = "auth_requires_tls"
AUTH_FAILED = "auth_failed"
SENDER_NOT_OWNED = "sender_not_owned"
SENDER_NOT_LOGGED_IN = "sender_not_logged_in"
SENDER_REJECTED = "sender_rejected"
RECIPIENT_UNKNOWN = "recipient_unknown"
TOO_BIG = "message_too_big"
TOO_MANY_ERRORS = "too_many_errors"
TEMPORARY = "temporary"
OTHER = "other"


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern[str]
    servers: str  # whose wording this row covers (documentation, and a test id)


def _p(kind: str, regex: str, servers: str) -> Pattern:
    return Pattern(kind, re.compile(regex, re.IGNORECASE), servers)


# First match wins; the most specific rows first.
PATTERNS: tuple[Pattern, ...] = (
    _p(
        TLS_REQUIRED,
        r"must issue a starttls|starttls (is )?required|tls (is )?required",
        "Postfix, postvakt, RFC 3207",
    ),
    _p(
        AUTH_REQUIRES_TLS,
        r"\b5\.7\.11\b|encryption required for requested authentication",
        "RFC 4954 538, postvakt, aiosmtpd",
    ),
    _p(TOO_MANY_ERRORS, r"too many (errors|auth|authentication)", "Postfix, Stalwart, postvakt"),
    _p(
        AUTH_FAILED,
        r"authentication (credentials invalid|failed|unsuccessful)|incorrect authentication data"
        r"|invalid credentials|\b5\.7\.8\b|username and password not accepted|bad username or password",
        "Postfix, Exim, OpenSMTPD, Haraka, Maddy, Stalwart, Dovecot, postvakt, Gmail",
    ),
    _p(
        SENDER_NOT_OWNED,
        r"not owned by (user|login)|unauthori[sz]ed use of sender|not allowed to send from this address"
        r"|doesn't match auth domain|sender rejected|send ?as denied|not authorized to send as",
        "Postfix, Maddy, Stalwart, Haraka, OpenSMTPD, postvakt",
    ),
    _p(
        SENDER_NOT_LOGGED_IN,
        r"sender address rejected: not logged in|use submission for outgoing|is not allowed from your host",
        "Postfix, Maddy, Haraka, postvakt",
    ),
    _p(RELAY_DENIED, r"relay access denied", "Postfix"),
    _p(RELAY_DENIED, r"rcpthosts", "qmail"),
    _p(RELAY_DENIED, r"relaying denied", "sendmail, postvakt"),
    _p(RELAY_DENIED, r"relay not permitted", "Exim"),
    _p(RELAY_DENIED, r"relay not allowed", "Stalwart"),
    _p(RELAY_DENIED, r"cannot deliver mail for", "Haraka"),
    _p(RELAY_DENIED, r"unable to relay", "Exchange, Microsoft 365"),
    _p(
        RELAY_DENIED,
        r"relay(ing)? (is )?(denied|prohibited|not (permitted|allowed|authori[sz]ed))|we do not relay"
        r"|not permitted to relay|no relaying",
        "other servers",
    ),
    # Localized servers (Exchange, hosting panels, translated sendmail/Exim
    # templates): the same refusal in the languages the issue names. Words
    # only; the code-and-port fallback in errortext.py covers the rest.
    _p(
        RELAY_DENIED,
        r"vidarebefordran (är )?(nekad|inte tillåten|ej tillåten)|förbjuden vidarebefordran"
        r"|relä(ning)? (nekad|nekat)",
        "localized (sv)",
    ),
    _p(
        RELAY_DENIED,
        r"relay(ing)?(-zugriff)? (wurde )?(verweigert|abgelehnt|nicht (erlaubt|gestattet|zulässig))"
        r"|weiterleitung (wurde )?(verweigert|abgelehnt|nicht (erlaubt|gestattet|möglich))",
        "localized (de)",
    ),
    _p(
        RELAY_DENIED,
        r"relais (refusé|interdit|non autorisé)|relayage (refusé|interdit|non autorisé)"
        r"|refus de relayer",
        "localized (fr)",
    ),
    _p(
        RELAY_DENIED,
        r"(retransmisión|reenvío|relay|relevo) (denegad[oa]|no permitid[oa]|rechazad[oa])"
        r"|no se permite (el |la )?(relay|reenvío|retransmisión)",
        "localized (es)",
    ),
    _p(
        RELAY_DENIED,
        r"relay(ing)? (geweigerd|niet toegestaan)|doorsturen (geweigerd|niet toegestaan)",
        "localized (nl)",
    ),
    _p(
        RELAY_DENIED,
        r"videresendelse (er )?(nægtet|afvist|ikke tilladt)|relæ(ring)? (nægtet|afvist)",
        "localized (da)",
    ),
    _p(
        RELAY_DENIED,
        r"videresending (er )?(nektet|avvist|ikke tillatt)|relé(ing)? (nektet|avvist)",
        "localized (no)",
    ),
    _p(
        RELAY_DENIED,
        r"(välitys|edelleenlähetys|välittäminen) (on )?(estetty|kielletty|evätty|ei (ole )?sallittu)",
        "localized (fi)",
    ),
    _p(
        AUTH_REQUIRED,
        r"authentication (is )?required|must (first )?authenticate|must issue an auth|authenticate first"
        r"|smtp auth(entication)? required|please log ?in|client was not authenticated|\b5\.7\.0\b.*auth",
        "Maddy, Dovecot, OpenSMTPD, Stalwart, aiosmtpd, Exchange, postvakt",
    ),
    _p(
        RECIPIENT_UNKNOWN,
        r"\b5\.1\.1\b|user unknown|unknown user|no such (user|mailbox|recipient)|mailbox unavailable"
        r"|(user|mailbox|recipient|address) (does not|doesn't) exist|invalid recipient|recipient not found"
        r"|unrouteable address",
        "Postfix, Exim, Exchange, OpenSMTPD, Maddy, postvakt",
    ),
    _p(TOO_BIG, r"\b5\.3\.4\b|message (size )?(exceeds|too big|too large)|databytes", "all"),
)


def find_pattern(enhanced: str, text: str) -> Pattern | None:
    """The first row whose words the reply carries (text compared in NFC, as pasted
    text from some systems arrives decomposed: "nekad" vs "neka\u0301d")."""
    words = unicodedata.normalize("NFC", f"{enhanced} {text}".strip())
    for p in PATTERNS:
        if p.regex.search(words):
            return p
    return None


def classify(code: int, enhanced: str, text: str, stage: str = "") -> str:
    """The kind of a reply. `stage` is the command it answered: AUTH, MAIL, RCPT or ""."""
    if 200 <= code < 400:
        return ACCEPTED
    row = find_pattern(enhanced, text)
    if row is not None:
        return row.kind
    if code == 530:
        return AUTH_REQUIRED
    if code == 538:
        return AUTH_REQUIRES_TLS
    if code == 535 or (stage == "AUTH" and code >= 500):
        return AUTH_FAILED
    if enhanced == "5.7.1" and stage == "RCPT":
        return RELAY_DENIED
    if 400 <= code < 500:
        return TEMPORARY
    if stage == "MAIL" and code >= 500:
        return SENDER_REJECTED
    if code == 552:
        return TOO_BIG
    return OTHER


def matching_servers(code: int, enhanced: str, text: str) -> str:
    """Whose wording matched (shown in --explain-error output)."""
    row = find_pattern(enhanced, text)
    return row.servers if row is not None else ""


def is_temporary(code: int) -> bool:
    return 400 <= code < 500
