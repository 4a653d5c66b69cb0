"""Hold notices: the mail that tells the admin (and the user) that a message was held.

Beside `dsn.py`, which writes the other mail the server itself sends: both
are queued from the null sender, so that they can never bounce back and forth.
`server/limits.py` decides when a notice goes out (one per subject and limit
per window); this module only writes it.
"""

from __future__ import annotations

import email.utils
import time

from postvakt.config import Config
from postvakt.policy import Client
from postvakt.policy.limits import HOUR, WINDOW, window_end


def notice_text(
    config: Config, who: str, client: Client, queue_id: str, reason: str, *, admin: bool
) -> str:
    """The notice mail (RFC 5322, CRLF), from MAILER-DAEMON, marked auto-generated (RFC 3834)."""
    rule = reason.partition(":")[0]
    limit = rule.rpartition(".")[2]
    window = WINDOW.get(limit) or HOUR
    ends = time.strftime("%H:%M UTC", time.gmtime(window_end(window, client.now)))
    section = "limits." + rule.rpartition(".")[0]
    if admin:
        to = config.postmaster_address
        subject = f"Outbound limit: mail from {who} held ({rule})"
        body = [
            f"A message was held instead of delivered: {who} went over an outbound limit.",
            "",
            f"  Limit:     {rule} ([{section}] {limit})",
            f"  Why:       {reason.partition(': ')[2]}",
            f"  Client:    {client.ip}"
            + (f", logged in as {client.login}" if client.login else ", not logged in"),
            f"  Queue id:  {queue_id}",
            "",
            'The client was answered "250": nothing is lost. Further mail over this limit',
            f"is held as well; the next notice for it comes after {ends} at the earliest.",
            "",
            "  See held mail:   postvakt queue list --held",
            f"  Look at it:      postvakt queue show {queue_id}",
            f"  Deliver it:      postvakt queue release {queue_id}",
            f"  Remove it:       postvakt queue delete {queue_id}",
            f"  Counters:        postvakt limits show {client.login or client.ip}",
        ]
        if client.login:
            body += [
                "",
                "If the account sends spam, its password is probably known to others:",
                f"change it (postvakt user passwd {client.login}) before releasing anything.",
            ]
    else:
        to = client.login or ""
        subject = "Your outgoing mail was paused"
        body = [
            f"You sent more mail than this server allows ({reason.partition(': ')[2]}).",
            "",
            f"Your message (queue id {queue_id}) was not lost: it is kept until the",
            "administrator releases it. Mail you send after " + ends + " goes out as usual again.",
            "",
            "If you did not send this mail, someone else knows your password:",
            f"change it at once and tell {config.postmaster_address}.",
        ]
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{config.hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(client.now, localtime=True)}",
        f"Message-ID: <{queue_id}.{int(client.now)}.limits@{config.hostname}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    return "\r\n".join([*headers, "", *body, ""])
