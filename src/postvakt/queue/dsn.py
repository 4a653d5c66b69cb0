"""Delivery status notifications (RFC 3464 multipart/report, RFC 3461 rules).

Who gets one: the envelope sender, never `<>` (RFC 5321 §4.5.5: a bounce has
the null sender and is never bounced itself, so two servers cannot loop).
Which recipients: those whose NOTIFY asks for the event (see
`Recipient.wants`). What is returned: the full message, or only its header
when RET=HDRS or when the message is larger than `RETURN_SIZE_LIMIT`.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

from postvakt.policy.roads import GENERATED
from postvakt.queue.envelope import Envelope, Recipient, Unit
from postvakt.queue.spool import new_queue_id

# Postfix bounce_size_limit: at most this much of the original is returned.
RETURN_SIZE_LIMIT = 50_000
# RFC 5322 §2.1.1: lines of at most 998 characters; keep quoted replies well inside.
MAX_DIAGNOSTIC = 900

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"

_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    DELIVERED: "Successful Mail Delivery Report",
    RELAYED: "Successful Mail Delivery Report",
}
_INTRO = {
    FAILED: (
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "The mail system"
    ),
    DELAYED: (
        "Your message could not be delivered for {hours} hours.\n"
        "It will be retried until it is {days} days old.\n\n"
        "The mail system"
    ),
    DELIVERED: "Your message was successfully delivered to the destination(s)\nlisted below.",
    RELAYED: (
        "Your message was successfully delivered to the destination(s)\n"
        "listed below. The next system does not send delivery reports,\n"
        "so this is the last one you will get."
    ),
}


@dataclass(frozen=True)
class Report:
    """One recipient's line in a DSN."""

    unit: Unit
    action: str


_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: "+HH" -> the octet; the result is shown in a header line,
    so it is decoded as UTF-8 and kept on one line."""
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value).encode("latin-1", "replace")
    return _one_line(raw.decode("utf-8", "replace"))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC]


def _status(report: Report) -> str:
    r = report.unit.last_reply
    if report.action in (DELIVERED, RELAYED):
        return "2.0.0"
    if r is None:
        return "4.0.0" if report.action == DELAYED else "5.0.0"
    if r.enhanced:
        if report.action == FAILED and r.temporary:
            return "4.4.7"  # RFC 3463: delivery time expired
        return r.enhanced
    return f"{str(r.code)[0]}.0.0"


def _header_of(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = message.find(sep)
        if i >= 0:
            return message[: i + len(sep)]
    return message


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def build(
    *,
    hostname: str,
    queue_id: str,
    envelope: Envelope,
    reports: Sequence[Report],
    original: bytes,
    now: float,
    original_size: int | None = None,
    delay_hours: float = 0.0,
    give_up_days: float = 0.0,
) -> tuple[Envelope, bytes]:
    """The envelope and bytes of a DSN about `reports` (all one action).
    `original_size` is the message's size when `original` is only its header."""
    action = reports[0].action
    boundary = f"{queue_id}.{new_queue_id()}/{hostname}"
    human = [
        f"This is the mail system at host {hostname}.",
        "",
        _INTRO[action].format(hours=round(delay_hours), days=round(give_up_days)),
        "",
    ]
    for rep in reports:
        u = rep.unit
        r = u.last_reply
        where = f"host {u.relay} said" if u.relay else "the mail system said"
        if r is None or action in (DELIVERED, RELAYED):
            human.append(f"<{u.address}>: {action}" + (f" via {u.relay}" if u.relay else ""))
        else:
            human.append(f"<{u.address}>: {where}: {_one_line(str(r))}")
    status = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Postvakt-Queue-ID: {queue_id}",
    ]
    if envelope.envid:
        status.append(f"Original-Envelope-Id: {xtext_decode(envelope.envid)}")
    status.append(f"Arrival-Date: {email.utils.formatdate(envelope.received_at, localtime=True)}")
    for rep in reports:
        u = rep.unit
        rcpt = envelope.recipients[u.rcpt]
        status.append("")
        if rcpt.orcpt:
            status.append(f"Original-Recipient: {xtext_decode(rcpt.orcpt)}")
        elif rcpt.address.lower() != u.address.lower():
            status.append(f"Original-Recipient: rfc822; {rcpt.address}")
        status.append(f"Final-Recipient: rfc822; {u.address}")
        status.append(f"Action: {action}")
        status.append(f"Status: {_status(rep)}")
        if u.relay:
            status.append(f"Remote-MTA: dns; {u.relay}")
        r = u.last_reply
        if r is not None and action in (FAILED, DELAYED):
            status.append(f"Diagnostic-Code: smtp; {_one_line(str(r))}")
        status.append(f"Last-Attempt-Date: {email.utils.formatdate(now, localtime=True)}")
        if action == DELAYED:
            until = envelope.received_at + give_up_days * 86400
            status.append(f"Will-Retry-Until: {email.utils.formatdate(until, localtime=True)}")
    size = len(original) if original_size is None else original_size
    headers_only = envelope.ret == "HDRS" or size > RETURN_SIZE_LIMIT
    returned = _crlf(_header_of(original) if headers_only else original)
    eight_bit = any(b > 127 for b in returned) or any(
        any(ord(c) > 127 for c in line) for line in (*human, *status)
    )
    cte = "8bit" if eight_bit else "7bit"
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{envelope.sender}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <{queue_id}.{new_queue_id()}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {cte}",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {cte}",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        f"Content-Transfer-Encoding: {cte}",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered " + ("Message Headers" if headers_only else "Message"),
        "Content-Type: " + ("text/rfc822-headers" if headers_only else "message/rfc822"),
        f"Content-Transfer-Encoding: {cte}",
        "",
    ]
    text = "\n".join(head).replace("\r", "") + "\n"
    data = text.replace("\n", "\r\n").encode("utf-8") + returned
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data += f"\r\n--{boundary}--\r\n".encode()
    bounce = Envelope(
        sender="",
        # RFC 3461 §6.2: a DSN must not ask for further DSNs.
        recipients=(Recipient(address=envelope.sender, notify=("NEVER",)),),
        received_at=now,
        client_ip="127.0.0.1",
        helo=hostname,
        login=None,
        smtputf8=envelope.smtputf8 or not envelope.sender.isascii(),
        body="8BITMIME" if eight_bit else "7BIT",
        # Ours: signed for our domain like any mail we write.
        road=GENERATED,
    )
    return bounce, data
