"""`postvakt doctor --explain-error TEXT`: read an error as a mail program shows it.

Rules of the house:
- Offline and pure: text in, Diagnosis out; no sockets, no clock.
- Read what is there, in this order: the server's own reply (Outlook's
  "Server Response: '...'", Thunderbird's "The mail server responded: ...", a
  bare "550 ..." line), the client's error number (0x800CCC79), the port and
  "Secure(SSL)". A text with none of these is "not recognised", never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from postvakt.diagnose import catalogue
from postvakt.diagnose import classify as k
from postvakt.diagnose.result import (
    EXIT_ACCEPTED,
    EXIT_NOT_RECOGNISED,
    Diagnosis,
    Finding,
)

# The longest text worth reading: a pasted dialog plus a transcript, not a log file.
MAX_TEXT = 20_000

_OUTLOOK_RESPONSE = re.compile(
    r"Server Response:\s*'(?P<r>.*?)'\s*(?=,\s*(?:Port|Secure|Server Error|Error Number)\b|$)",
    re.IGNORECASE | re.DOTALL,
)
_RESPONDED = re.compile(
    r"(?:server responded|server said|server response|server replied|remote server returned|"
    r"error from remote mail server)\s*:?\s*[\"'“]?(?P<r>[^\n\"'”]*(?:'[a-z][^\n\"'”]*)*)",
    re.IGNORECASE,
)
_BARE_REPLY = re.compile(r"(?m)^\s*[\"'<]*(?P<r>[2-5][0-5]\d(?:[ -].*)?)$")
_CODE = re.compile(r"^(?P<code>[2-5][0-5]\d)(?:[ -]+(?P<rest>.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^(?P<e>[245]\.\d{1,3}\.\d{1,3})\b\s*(?P<rest>.*)$", re.DOTALL)
_PORT = re.compile(r"\bPort:\s*(\d{1,5})", re.IGNORECASE)
_SECURE = re.compile(r"Secure\s*\(SSL\):\s*(Yes|No)", re.IGNORECASE)
_ERRNUM = re.compile(r"\b0x[0-9A-Fa-f]{8}\b")
_SERVER = re.compile(r"\bServer:\s*'([^']+)'", re.IGNORECASE)
_SERVER_ERROR = re.compile(r"Server Error:\s*([2-5]\d\d)", re.IGNORECASE)
_REJECTED_ADDR = re.compile(r"rejected e-?mail address was\s*'([^']+)'", re.IGNORECASE)
_ANGLE = re.compile(r"<([^<>\s]+@[^<>\s]+)>")

# Client error numbers that name a case by themselves (no server reply in the text).
_NUMBER_CASES = {
    "0x800CCC79": ("relay_denied_no_auth", "RCPT"),
    "0x800CCC78": ("sender_rejected", "MAIL"),
    "0x800CCC0E": ("port_blocked", ""),
    "0x80042109": ("port_blocked", ""),
    "0x8004210B": ("port_blocked", ""),
    "0x800CCC0D": ("server_unreachable", ""),
    "0x800CCC0F": ("server_rejects_connection", ""),
}

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
    return code, enhanced, rest.strip()


def parse_error(text: str) -> ParsedError:
    text = text[:MAX_TEXT]
    raw = ""
    for rx in (_OUTLOOK_RESPONSE, _RESPONDED):
        m = rx.search(text)
        if m and m.group("r").strip():
            raw = m.group("r")
            break
    if not raw:
        m = _BARE_REPLY.search(text)
        if m:
            raw = m.group("r")
    code, enhanced, body = _split_reply(raw) if raw else (None, "", "")
    if code is None and not enhanced and raw:
        body = raw.strip()
    if code is None:
        se = _SERVER_ERROR.search(text)
        if se:
            code = int(se.group(1))
    port = _PORT.search(text)
    secure = _SECURE.search(text)
    number = _ERRNUM.search(text)
    server = _SERVER.search(text)
    addr = _REJECTED_ADDR.search(text) or _ANGLE.search(body or text)
    return ParsedError(
        code=code,
        enhanced=enhanced,
        text=body,
        port=int(port.group(1)) if port else None,
        secure=(secure.group(1).lower() == "yes") if secure else None,
        number=("0x" + number.group(0)[2:].upper()) if number else "",
        server=server.group(1) if server else "",
        address=addr.group(1) if addr else "",
    )


def explain_error(text: str) -> Diagnosis:
    p = parse_error(text)
    stage = _NUMBER_CASES.get(p.number, ("", ""))[1]
    findings: list[Finding] = []
    case = ""
    if p.code is not None or p.enhanced:
        code = p.code if p.code is not None else int(p.enhanced[0]) * 100 + 50
        kind = k.classify(code, p.enhanced, p.text, stage)
        case = _KIND_CASES[kind]
        findings.append(
            Finding("server_reply", "problem" if code >= 400 else "ok", {"reply": p.reply})
        )
        servers = k.matching_servers(code, p.enhanced, p.text)
        if servers:
            findings.append(Finding("wording_of", "info", {"servers": servers}))
    elif p.text or text.strip():
        # No code: known server wording alone is enough ("Relay access denied").
        words = p.text or text
        kind = k.classify(550, "", words, stage)
        if k.matching_servers(550, "", words):
            case = _KIND_CASES[kind]
            findings.append(
                Finding("wording_of", "info", {"servers": k.matching_servers(550, "", words)})
            )
    if p.number:
        meaning = catalogue.CLIENT_ERRORS.get(p.number)
        if meaning is not None:
            findings.append(
                Finding("outlook_error", "info", {"number": p.number, "meaning": f"@err{p.number}"})
            )
        if not case and p.number in _NUMBER_CASES:
            case = _NUMBER_CASES[p.number][0]
    if not case:
        return Diagnosis(
            case="not_recognised",
            accepted=False,
            params={"reply": text.strip()[:200]},
            exit_code=EXIT_NOT_RECOGNISED,
        )
    if p.port is not None:
        secure = "@unknown" if p.secure is None else ("@yes" if p.secure else "@no")
        findings.append(Finding("client_port", "info", {"port": p.port, "secure": secure}))
        if (
            p.port == 25
            and p.secure is not True
            and case in ("relay_denied_no_auth", "auth_not_used", "sender_not_logged_in")
        ):
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
        "reply": p.reply or "@unknown",
        "detail": p.reply or (f"@err{p.number}" if p.number else ""),
        "pop3": "",
    }
    return Diagnosis(
        case=case,
        accepted=(case == "ok"),
        params=params,
        findings=tuple(findings),
        exit_code=EXIT_ACCEPTED,
    )
