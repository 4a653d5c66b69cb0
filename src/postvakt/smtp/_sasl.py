"""The server side of SASL PLAIN (RFC 4616) and LOGIN over SMTP AUTH (RFC 4954).

The exchange only collects credentials; checking them is the application's
job (AuthCredentials -> respond 235 or 535). Every refusal is a Reply.
"""

from __future__ import annotations

import binascii

from postvakt.reply import Reply
from postvakt.smtp import replies
from postvakt.smtp._events import AuthCredentials

MECHANISMS = ("PLAIN", "LOGIN")

# RFC 4954 §4: a server "MUST be able to accept" AUTH command and response
# lines of 12288 octets (it raises RFC 5321's 512 for this command only).
MAX_AUTH_LINE = 12288

# RFC 4954 §4: an empty challenge is "334 " plus nothing; LOGIN's prompts are
# the base64 of "Username:" and "Password:" (draft-murchison-sasl-login).
_EMPTY_CHALLENGE = Reply(334, "", "")
_USERNAME_PROMPT = Reply(334, "", "VXNlcm5hbWU6")
_PASSWORD_PROMPT = Reply(334, "", "UGFzc3dvcmQ6")

# What one SASL step yields: a challenge to send, or the finished credentials.
Step = Reply | AuthCredentials


def _decode(text: str) -> bytes | Reply:
    if text == "*":
        return replies.AUTH_ABORTED
    if text == "=":
        # RFC 4954 §4: "=" is an empty initial response.
        return b""
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return replies.BAD_BASE64


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SaslExchange:
    """One AUTH command from the first line to credentials or a refusal."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return _EMPTY_CHALLENGE if self.mechanism == "PLAIN" else _USERNAME_PROMPT
        return self.step(initial)

    def step(self, line: str) -> Step:
        raw = _decode(line.strip())
        if isinstance(raw, Reply):
            return raw
        if self.mechanism == "PLAIN":
            return self._plain(raw)
        return self._login(raw)

    def _plain(self, raw: bytes) -> Step:
        fields = raw.split(b"\x00")
        if len(fields) != 3:
            return replies.AUTH_INVALID
        authzid, authcid, password = (_text(f) for f in fields)
        if authzid is None or authcid is None or password is None:
            return replies.AUTH_INVALID
        if not authcid or not password or (authzid and authzid != authcid):
            return replies.AUTH_INVALID
        return AuthCredentials("PLAIN", authzid, authcid, password)

    def _login(self, raw: bytes) -> Step:
        value = _text(raw)
        if value is None or "\x00" in value:
            return replies.AUTH_INVALID
        if self._username is None:
            if not value:
                return replies.AUTH_INVALID
            self._username = value
            return _PASSWORD_PROMPT
        if not value:
            return replies.AUTH_INVALID
        return AuthCredentials("LOGIN", "", self._username, value)
