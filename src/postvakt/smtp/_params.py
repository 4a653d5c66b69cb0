"""ESMTP parameters of MAIL and RCPT (SIZE, BODY, SMTPUTF8, DSN, AUTH).

Input is the list `postvakt.address.split_path_and_params` produced (keywords
upper-cased); output is values or the Reply that refuses them. An unknown
parameter is refused with 555 (RFC 5321 §4.1.1.11), never ignored, except
MAIL's AUTH= which RFC 4954 §5 lets a server drop and which must never
grant anything (robustness S3).
"""

from __future__ import annotations

from dataclasses import dataclass

from postvakt.smtp import replies
from postvakt.smtp._errors import RemoteProtocolError

# RFC 1870 §3: size-value is 1*20DIGIT.
MAX_SIZE_DIGITS = 20
# RFC 3461 §4.4: ENVID is at most 100 characters.
MAX_ENVID = 100
# RFC 3461 §4.2: ORCPT is limited by the 500-character xtext it carries.
MAX_ORCPT = 500

_BODY_TYPES = ("7BIT", "8BITMIME")
_RET_TYPES = ("FULL", "HDRS")
_NOTIFY_TYPES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True)
class MailFromParams:
    """The parameters a client gave with MAIL FROM (what we send: `delivery.smtpclient.MailParams`)."""

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptToParams:
    """The parameters a client gave with RCPT TO (what we send: `delivery.smtpclient.RcptParams`)."""

    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


def _is_xtext(value: str) -> bool:
    return all(33 <= ord(ch) <= 126 and ch != "=" for ch in value)


def mail_params(params: list[tuple[str, str | None]], max_size: int) -> MailFromParams:
    """Raises RemoteProtocolError with the refusal."""
    seen: set[str] = set()
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    for name, value in params:
        if name in seen:
            raise RemoteProtocolError(replies.duplicate_param(name))
        seen.add(name)
        if name == "SIZE":
            if value is None or not value.isascii() or not value.isdigit():
                raise RemoteProtocolError(replies.bad_param_value(name))
            if len(value) > MAX_SIZE_DIGITS:
                raise RemoteProtocolError(replies.bad_param_value(name))
            size = int(value)
            if size > max_size:
                raise RemoteProtocolError(replies.MESSAGE_TOO_BIG)
        elif name == "BODY":
            if value is None or value.upper() not in _BODY_TYPES:
                raise RemoteProtocolError(replies.bad_param_value(name))
            body = value.upper()
        elif name == "SMTPUTF8":
            if value is not None:
                raise RemoteProtocolError(replies.bad_param_value(name))
            smtputf8 = True
        elif name == "RET":
            if value is None or value.upper() not in _RET_TYPES:
                raise RemoteProtocolError(replies.bad_param_value(name))
            ret = value.upper()
        elif name == "ENVID":
            if value is None or len(value) > MAX_ENVID or not _is_xtext(value):
                raise RemoteProtocolError(replies.bad_param_value(name))
            envid = value
        elif name == "AUTH":
            if value is None:
                raise RemoteProtocolError(replies.bad_param_value(name))
        else:
            raise RemoteProtocolError(replies.unsupported_param(name))
    return MailFromParams(size, body, smtputf8, ret, envid)


def rcpt_params(params: list[tuple[str, str | None]]) -> RcptToParams:
    """Raises RemoteProtocolError with the refusal."""
    seen: set[str] = set()
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for name, value in params:
        if name in seen:
            raise RemoteProtocolError(replies.duplicate_param(name))
        seen.add(name)
        if name == "NOTIFY":
            if value is None:
                raise RemoteProtocolError(replies.bad_param_value(name))
            words = tuple(w.upper() for w in value.split(","))
            if words == ("NEVER",):
                notify = words
            elif words and all(w in _NOTIFY_TYPES for w in words) and len(set(words)) == len(words):
                notify = words
            else:
                raise RemoteProtocolError(replies.bad_param_value(name))
        elif name == "ORCPT":
            if value is None or len(value) > MAX_ORCPT or ";" not in value:
                raise RemoteProtocolError(replies.bad_param_value(name))
            addr_type, _, _ = value.partition(";")
            if not addr_type or not addr_type.isascii():
                raise RemoteProtocolError(replies.bad_param_value(name))
            orcpt = value
        else:
            raise RemoteProtocolError(replies.unsupported_param(name))
    return RcptToParams(notify, orcpt)
