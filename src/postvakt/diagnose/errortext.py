"""`postvakt doctor --explain-error TEXT`: read an error as a mail program shows it.

Rules of the house:
- Offline and pure: text in, Diagnosis out; no sockets, no clock. The web
  help page calls the same function, so the CLI and the page never disagree.
- Read what is there, in this order: the server's own reply (Outlook's
  "Server Response: '...'" in any of its languages, Thunderbird's "The mail
  server responded: ...", a bare "550 ..." line, a "550 5.7.1 ..." inside a
  sentence), the client's error number (0x800CCC79), the port and
  "Secure (SSL)". A text with none of these is "not recognised", never guessed.
- Words first, then the other evidence: known server wording (any language in
  classify.PATTERNS) decides with confidence HIGH. Unknown words fall back on
  the reply code, the enhanced code, the stage the error number names (RCPT
  for 0x800CCC79) and the client's port and encryption, and say how sure
  that is (Confidence).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from postvakt.diagnose import catalogue
from postvakt.diagnose import classify as k
from postvakt.diagnose.result import (
    EXIT_ACCEPTED,
    EXIT_NOT_RECOGNISED,
    Confidence,
    Diagnosis,
    Finding,
)

# The longest text worth reading: a pasted dialog plus a transcript, not a log file.
MAX_TEXT = 20_000
# The longest piece of the text shown back as "the server said" when the reply
# has no code to start from: one clause, not the whole paste.
MAX_CLAUSE = 200

# Outlook translates the labels of its error dialog. The ones below are the
# languages the doctor reads (en, sv, de, fr, es, nl, da, no, fi); a label in
# another language only costs the field it names, the rest is still read.
_RESPONSE_LABELS = (
    r"Server Response|Serversvar|Serverantwort|Réponse du serveur|Respuesta del servidor"
    r"|Serverantwoord|Palvelimen vastaus"
)
_PORT_LABELS = r"Port|Poort|Puerto|Portti|Porta"
_SERVER_LABELS = r"Server|Serveur|Servidor|Palvelin"
_SERVER_ERROR_LABELS = (
    r"Server Error|Serverfel|Serverfehler|Erreur du serveur|Error del servidor|Serverfout"
    r"|Serverfejl|Serverfeil|Palvelinvirhe"
)
# The answers to "Secure (SSL): ..." in the same languages.
_YES = {"yes", "ja", "oui", "sí", "si", "kyllä", "on"}
_NO = {"no", "nej", "nein", "non", "nee", "nei", "ei", "off"}

# How far a quoted reply may reach: a few lines of 512 octets (RFC 5321 §4.5.3.1.5).
# The bound also keeps every search linear in the pasted text.
_REPLY_SPAN = 2048
# A quoted reply ends at the quote that is followed by the next ", Label:" field.
_NEXT_FIELD = r"(?=\s*,\s*[^\W\d_][^,:'\n]{0,40}?\s*:|\s*$)"
# Outlook quotes the reply: "Server Response: '550 ...', Port: 25". Starts and
# ends are found separately and paired, which keeps the search linear.
_OUTLOOK_RESPONSE = re.compile(rf"(?:{_RESPONSE_LABELS})\s*:\s*'", re.IGNORECASE)
_QUOTED_CODE = re.compile(r"'(?=[2-5][0-5]\d(?:[ -]|'))")
_QUOTE_END = re.compile(rf"'{_NEXT_FIELD}")
_RESPONDED = re.compile(
    r"(?:server responded|server said|server response|server replied|remote server returned|"
    r"error from remote mail server)\s*:?\s*[\"'“]?(?P<r>[^\n\"'”]*(?:'[a-z][^\n\"'”]*)*)",
    re.IGNORECASE,
)
_BARE_REPLY = re.compile(r"(?m)^\s*[\"'<]*(?P<r>[2-5][0-5]\d(?:[ -].*)?)$")
# A reply inside a sentence: "... the server answered 550 5.7.1 Relaying denied".
# Taken only with an enhanced code or known wording behind it, so that "HTTP
# 404 Not Found" or "I tried 500 times" are not read as SMTP replies.
_EMBEDDED_REPLY = re.compile(r"(?<![\w.:/])(?P<r>[45][0-5]\d[ -][^\n]*)")
_CODE = re.compile(r"^(?P<code>[2-5][0-5]\d)(?:[ -]+(?P<rest>.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^(?P<e>[245]\.\d{1,3}\.\d{1,3})\b\s*(?P<rest>.*)$", re.DOTALL)
_PORT = re.compile(rf"\b(?:{_PORT_LABELS})\s*:\s*(\d{{1,5}})\b", re.IGNORECASE)
_SECURE = re.compile(r"\(\s*(?:SSL|TLS)\s*\)\s*:\s*([^\W\d_]+)", re.IGNORECASE)
_ERRNUM = re.compile(r"\b0x[0-9A-Fa-f]{8}\b")
_SERVER = re.compile(rf"\b(?:{_SERVER_LABELS})\s*:\s*'([^']+)'", re.IGNORECASE)
_SERVER_ERROR = re.compile(rf"(?:{_SERVER_ERROR_LABELS})\s*:\s*([2-5]\d\d)\b", re.IGNORECASE)
_REJECTED_ADDR = re.compile(r"rejected e-?mail address was\s*'([^']+)'", re.IGNORECASE)
# One "@" per address: with more, the two halves could be split anywhere (quadratic).
_ANGLE = re.compile(r"<([^<>\s@]+@[^<>\s@]+)>")
_QUOTED_ADDR = re.compile(r"['\"]([^'\"\s<>@]+@[^'\"\s<>@]+)['\"]")
_CLAUSE_END = re.compile(r"[.!?;]\s|\n")

# Client error numbers that name a case and the SMTP stage by themselves
# (their meanings and Microsoft's names are in catalogue.CLIENT_ERRORS).
_NUMBER_CASES = {
    "0x800CCC79": ("relay_denied_no_auth", "RCPT"),
    "0x800CCC78": ("sender_rejected", "MAIL"),
    "0x800CCC7C": ("tls_required", ""),
    "0x800CCC7D": ("tls_problem", ""),
    "0x800CCC6E": ("rejected_other", ""),
    "0x800CCC6D": ("message_too_big", ""),
    "0x800CCC0E": ("port_blocked", ""),
    "0x800CCC19": ("port_blocked", ""),
    "0x800CCC0D": ("server_unreachable", ""),
    "0x800CCC0F": ("server_rejects_connection", ""),
    "0x800CCC1A": ("tls_problem", ""),
    "0x800CCC18": ("auth_failed", "AUTH"),
    "0x800CCC92": ("auth_failed", "AUTH"),
}

# The mail program's own sentences when no server words and no number are given.
_CLIENT_SENTENCES = (
    (
        re.compile(
            r"cannot connect to (your|the) outgoing \(?smtp\)? (e-?mail )?server"
            r"|timed out waiting for a response from the sending \(?smtp\)? server",
            re.IGNORECASE,
        ),
        "port_blocked",
    ),
)

_KIND_CASES = {
    k.ACCEPTED: "ok",
    k.RELAY_DENIED: "relay_denied_no_auth",
    k.AUTH_REQUIRED: "auth_not_used",
    k.TLS_REQUIRED: "tls_required",
    k.AUTH_REQUIRES_TLS: "auth_requires_tls",
    k.AUTH_FAILED: "auth_failed",
    k.SENDER_NOT_OWNED: "sender_not_owned",
    k.SENDER_NOT_LOGGED_IN: "sender_not_logged_in",
    k.SENDER_REJECTED: "sender_rejected",
    k.RECIPIENT_UNKNOWN: "recipient_unknown",
    k.TOO_BIG: "message_too_big",
    k.TOO_MANY_ERRORS: "too_many_errors",
    k.TEMPORARY: "temporary_failure",
    k.OTHER: "rejected_other",
}

# Kinds a reply code names by itself (RFC 5321 §4.2: 2xx, 4xx; RFC 4954: 530, 535, 538).
_CODE_DEFINED = (k.ACCEPTED, k.TEMPORARY, k.AUTH_REQUIRED, k.AUTH_REQUIRES_TLS, k.AUTH_FAILED)

# Cases where "port 25 without SSL" is the likely root: no login happened.
_NO_LOGIN_CASES = ("relay_denied_no_auth", "auth_not_used", "sender_not_logged_in")


@dataclass(frozen=True)
class ParsedError:
    code: int | None
    enhanced: str
    text: str
    port: int | None
    secure: bool | None
    number: str
    server: str
    address: str

    @property
    def reply(self) -> str:
        head = " ".join(x for x in (str(self.code) if self.code else "", self.enhanced) if x)
        return f"{head} {self.text}".strip()


def _split_reply(raw: str) -> tuple[int | None, str, str]:
    raw = " ".join(line.strip() for line in raw.strip().splitlines())
    code: int | None = None
    m = _CODE.match(raw)
    rest = raw
    if m:
        code = int(m.group("code"))
        rest = m.group("rest") or ""
        # Continuation lines "550-5.7.1 ..." repeat the code; drop the repeats.
        rest = re.sub(rf"\s{code}[ -]", " ", rest)
    enhanced = ""
    e = _ENHANCED.match(rest)
    if e:
        enhanced, rest = e.group("e"), e.group("rest")
        rest = re.sub(rf"\s{re.escape(enhanced)}\s", " ", rest)
    return code, enhanced, rest.strip().rstrip("'\"”")


def _embedded_reply(text: str) -> str:
    for m in _EMBEDDED_REPLY.finditer(text):
        raw = m.group("r").strip()
        code, enhanced, body = _split_reply(raw)
        if code is not None and (enhanced or k.find_pattern("", body) is not None):
            return raw
    return ""


def _quoted(text: str, starts: re.Pattern[str], one_line: bool) -> str:
    """The first quoted reply opened by `starts` and closed by a quote before the next field."""
    ends = [m.start() for m in _QUOTE_END.finditer(text)]
    for m in starts.finditer(text):
        i = bisect.bisect_left(ends, m.end())
        if i == len(ends):
            return ""
        body = text[m.end() : ends[i]]
        if len(body) <= _REPLY_SPAN and not (one_line and "\n" in body) and body.strip():
            return body
    return ""


def _raw_reply(text: str) -> str:
    raw = _quoted(text, _OUTLOOK_RESPONSE, one_line=False) or _quoted(
        text, _QUOTED_CODE, one_line=True
    )
    if raw:
        return raw
    m = _RESPONDED.search(text)
    if m and m.group("r").strip():
        return m.group("r")
    m = _BARE_REPLY.search(text)
    if m:
        return m.group("r")
    return _embedded_reply(text)


def _secure(text: str) -> bool | None:
    m = _SECURE.search(text)
    if not m:
        return None
    word = m.group(1).lower()
    return True if word in _YES else False if word in _NO else None


def parse_error(text: str) -> ParsedError:
    text = unicodedata.normalize("NFC", text[:MAX_TEXT])
    raw = _raw_reply(text)
    code, enhanced, body = _split_reply(raw) if raw else (None, "", "")
    if code is None and not enhanced and raw:
        body = raw.strip()
    if code is None:
        se = _SERVER_ERROR.search(text)
        if se:
            code = int(se.group(1))
    port = _PORT.search(text)
    number = _ERRNUM.search(text)
    server = _SERVER.search(text)
    addr = (
        _REJECTED_ADDR.search(text)
        or _ANGLE.search(body)
        or _ANGLE.search(text)
        or _QUOTED_ADDR.search(text)
    )
    return ParsedError(
        code=code,
        enhanced=enhanced,
        text=body,
        port=int(port.group(1)) if port else None,
        secure=_secure(text),
        number=("0x" + number.group(0)[2:].upper()) if number else "",
        server=server.group(1) if server else "",
        address=addr.group(1) if addr else "",
    )


def _clause_around(text: str, start: int, end: int) -> str:
    """The clause holding text[start:end]: what the server said, when no code came with it."""
    left = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    right_m = _CLAUSE_END.search(text, end)
    right = right_m.start() if right_m else len(text)
    clause = " ".join(text[left:right].split()).strip(" '\"“”")
    if len(clause) > MAX_CLAUSE:
        clause = clause[:MAX_CLAUSE].rstrip() + "…"
    return clause


def _code_meaning(code: int, enhanced: str) -> str:
    if enhanced.startswith(("5.7.", "4.7.")):
        return "@code_policy"
    if enhanced.startswith(("5.1.", "4.1.")):
        return "@code_address"
    return "@code_temporary" if 400 <= code < 500 else "@code_permanent"


def explain_error(text: str) -> Diagnosis:
    text = unicodedata.normalize("NFC", text[:MAX_TEXT])
    p = parse_error(text)
    number_case, stage = _NUMBER_CASES.get(p.number, ("", ""))
    findings: list[Finding] = []
    case = ""
    confidence = Confidence.LOW
    reply = p.reply

    # 1. Known server wording, in the reply or (without a reply) anywhere in the text.
    row = k.find_pattern(p.enhanced, p.text) if (p.text or p.enhanced) else None
    if row is None and p.code is None:
        row = k.find_pattern("", text)
        if row is not None:
            m = row.regex.search(unicodedata.normalize("NFC", text))
            if m is not None and not reply:
                reply = _clause_around(text, m.start(), m.end())
    code = p.code
    if code is None and p.enhanced:
        code = int(p.enhanced[0]) * 100 + 50
    if reply:
        severity = "problem" if code is None or code >= 400 else "ok"
        findings.append(Finding("server_reply", severity, {"reply": reply}))
    if row is not None and (code is None or code >= 400):
        case = _KIND_CASES[row.kind]
        confidence = Confidence.HIGH
        findings.append(Finding("wording_of", "info", {"servers": row.servers}))

    # 2. Unknown words: the reply code, the stage, the port and the encryption.
    elif code is not None:
        kind = k.classify(code, p.enhanced, p.text, stage)
        case = _KIND_CASES[kind]
        shown_code = f"{p.code or ''} {p.enhanced}".strip()
        meaning = _code_meaning(code, p.enhanced)
        findings.append(Finding("reply_code", "info", {"code": shown_code, "meaning": meaning}))
        if stage == "RCPT":
            findings.append(Finding("stage_rcpt", "info", {}))
        no_login_clues = [p.port == 25, p.secure is False, p.enhanced.startswith("5.7.")]
        if kind == k.OTHER and code >= 500 and stage == "RCPT" and any(no_login_clues):
            case = "relay_denied_no_auth"
        if case == "relay_denied_no_auth":
            sure = stage == "RCPT" and any(no_login_clues)
            confidence = Confidence.MEDIUM if sure else Confidence.LOW
        elif kind in _CODE_DEFINED or (kind == k.SENDER_REJECTED and stage == "MAIL"):
            confidence = Confidence.MEDIUM

    # 3. No reply at all: the error number, then the mail program's own sentence.
    elif number_case:
        case = number_case
        if case in _NO_LOGIN_CASES and p.port == 25 and p.secure is False:
            confidence = Confidence.MEDIUM
    else:
        for rx, sentence_case in _CLIENT_SENTENCES:
            if rx.search(text):
                case = sentence_case
                break

    if p.number and p.number in catalogue.CLIENT_ERRORS:
        findings.append(
            Finding("outlook_error", "info", {"number": p.number, "meaning": f"@err{p.number}"})
        )
    if not case:
        return Diagnosis(
            case="not_recognised",
            accepted=False,
            params={"reply": text.strip()[:MAX_CLAUSE]},
            exit_code=EXIT_NOT_RECOGNISED,
        )
    if p.port is not None:
        secure = "@unknown" if p.secure is None else ("@yes" if p.secure else "@no")
        findings.append(Finding("client_port", "info", {"port": p.port, "secure": secure}))
        if p.port == 25 and p.secure is not True and case in _NO_LOGIN_CASES:
            findings.append(Finding("port25_no_ssl", "warning", {}))
    where = p.server or "@unknown_server"
    if p.server and p.port:
        where = f"{p.server}:{p.port}"
    params: dict[str, Any] = {
        "server": where,
        "host": p.server or "@unknown_server",
        "port": p.port if p.port is not None else "@unknown",
        "rcpt": p.address or "@unknown_address",
        "sender": p.address or "@unknown_address",
        "login": "@unknown_login",
        "reply": reply or "@reply_not_shown",
        "detail": reply or (f"@err{p.number}" if p.number else ""),
        "pop3": "",
    }
    return Diagnosis(
        case=case,
        accepted=(case == "ok"),
        params=params,
        findings=tuple(findings),
        exit_code=EXIT_ACCEPTED,
        confidence=confidence,
    )
