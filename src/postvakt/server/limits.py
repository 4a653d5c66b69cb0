"""Outbound limits at the SMTP front: counters, hold notices, `postvakt limits`.

The decisions are pure (`postvakt.policy.limits`); this module feeds them the
counters, records what was accepted, and, when a message is held, tells the
admin (a mail to postmaster and a log line) and, with `[limits] notify_user`,
the user. Notices are queued like any mail, from the null sender so that they
can never bounce back and forth; one notice per subject and limit per window,
so a spam run of thousands of messages yields one mail, not thousands.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import click

from postvakt.cli import config_option, load_config
from postvakt.config import Config
from postvakt.grants.counters import (
    MemoryCounterStore,
    SqliteCounterStore,
    list_counters,
)
from postvakt.policy import Client, Decision
from postvakt.policy.limits import (
    HOUR,
    LIMITS,
    WINDOW,
    Subject,
    Usage,
    check_mail_limits,
    check_rcpt_limits,
    subject_for,
    window_end,
)
from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient

log = logging.getLogger("postvakt.limits")

# Who was told in the current window is pruned of ended windows past this size.
MAX_NOTIFIED = 10_000

__all__ = ["Limiter", "limits", "notice_text"]


@dataclass
class Limiter:
    """The limits' state in one server process: the counter store and who was told."""

    store: MemoryCounterStore | SqliteCounterStore
    queue: Queue
    # (subject, rule) -> end of the window in which a notice was already sent
    notified: dict[tuple[str, str], float] = field(default_factory=dict)
    _flush: Any = None

    def subject(self, config: Config, client: Client) -> Subject | None:
        return subject_for(client, config.limits, config.relay.networks, config.relay.clients)

    def usage(self, subject: Subject | None, now: float) -> Usage:
        return self.store.usage(subject.counter_key, now) if subject is not None else Usage()

    def check_mail(self, config: Config, client: Client) -> Decision:
        subject = self.subject(config, client)
        return check_mail_limits(client, subject, self.usage(subject, client.now))

    def check_rcpt(self, config: Config, client: Client, in_message: int) -> Decision:
        subject = self.subject(config, client)
        return check_rcpt_limits(client, subject, self.usage(subject, client.now), in_message)

    async def accepted(
        self, config: Config, client: Client, queue_id: str, recipients: int, held: str | None
    ) -> None:
        """After the 250: count the message; for a held one, send the notices.

        Runs after the client heard 250, so nothing here may fail the session:
        a broken counter store or a full disk is logged, never answered.
        """
        try:
            await self._accepted(config, client, queue_id, recipients, held)
        except Exception:
            log.exception("limits bookkeeping failed id=%s client=%s", queue_id, client.ip)

    async def _accepted(
        self, config: Config, client: Client, queue_id: str, recipients: int, held: str | None
    ) -> None:
        subject = self.subject(config, client)
        loop = asyncio.get_running_loop()
        if subject is not None:
            if isinstance(self.store, SqliteCounterStore):
                await loop.run_in_executor(
                    None, self.store.add, subject.counter_key, 1, recipients, client.now
                )
            else:
                self.store.add(subject.counter_key, 1, recipients, client.now)
                if self._flush is None:
                    self._flush = loop.call_later(0.5, self._flush_snapshot)
        if held is None:
            return
        rule = held.partition(":")[0]
        who = str(subject) if subject is not None else f"client address {client.ip}"
        log.warning(
            "held id=%s client=%s login=%s rule=%s reason=%r release=%r",
            queue_id,
            client.ip,
            client.login or "-",
            rule,
            held,
            f"postvakt queue release {queue_id}",
        )
        key = (subject.counter_key if subject is not None else client.ip, rule)
        if self.notified.get(key, 0.0) > client.now:
            return
        window = WINDOW.get(rule.rpartition(".")[2]) or HOUR
        if len(self.notified) >= MAX_NOTIFIED:
            self.notified = {k: v for k, v in self.notified.items() if v > client.now}
        self.notified[key] = window_end(window, client.now)
        notices = [
            (
                config.postmaster_address,
                notice_text(config, who, client, queue_id, held, admin=True),
            )
        ]
        if config.limits.notify_user and client.login:
            notices.append(
                (client.login, notice_text(config, who, client, queue_id, held, admin=False))
            )
        for rcpt, text in notices:
            try:
                nid = await loop.run_in_executor(
                    None, self._queue_notice, config, rcpt, text, client.now
                )
            except (QueueWriteError, OSError) as e:
                log.error("hold notice for id=%s to <%s> not queued: %s", queue_id, rcpt, e)
                continue
            log.info("hold notice id=%s for held id=%s to=<%s>", nid, queue_id, rcpt)

    def _flush_snapshot(self) -> None:
        self._flush = None
        if isinstance(self.store, MemoryCounterStore):
            self.store.flush(time.time())

    def _queue_notice(self, config: Config, rcpt: str, text: str, now: float) -> str:
        msg = self.queue.new_message()
        msg.write(text.encode("utf-8"))
        msg.commit(
            Envelope(
                sender="",
                recipients=(Recipient(address=rcpt),),
                received_at=now,
                client_ip="127.0.0.1",
                helo=config.hostname,
                login=None,
            )
        )
        return msg.queue_id


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


# ---------------------------------------------------------------- postvakt limits


def _subject_from_arg(config: Config, arg: str) -> Subject | None:
    if "@" in arg:
        return subject_for(Client(ip="", login=arg.strip()), config.limits, config.relay.networks)
    import ipaddress

    try:
        ip = str(ipaddress.ip_address(arg.strip()))
    except ValueError:
        raise click.UsageError(f"{arg!r} is neither a user address nor an IP address") from None
    return subject_for(Client(ip=ip), config.limits, config.relay.networks, any_road=True)


def _rows(subject: Subject, usage: Usage) -> list[dict[str, Any]]:
    rows = []
    for limit in LIMITS:
        value = subject.quota.value(limit)
        count = usage.count(limit) if WINDOW[limit] is not None else None
        rows.append(
            {
                "rule": f"{subject.quota_name}.{limit}",
                "count": count,
                "limit": value,
                "outcome": subject.quota.outcome_for(limit),
                "over": bool(value and count is not None and count >= value),
            }
        )
    return rows


def _show_one(subject: Subject, usage: Usage) -> dict[str, Any]:
    return {
        "subject": subject.counter_key,
        "quota": f"[limits.{subject.quota_name}]",
        "limits": _rows(subject, usage),
    }


def _subject_of_key(config: Config, key: str) -> Subject | None:
    kind, _, value = key.partition(":")
    if kind == "user":
        return subject_for(Client(ip="", login=value), config.limits, config.relay.networks)
    return subject_for(Client(ip=value), config.limits, config.relay.networks, any_road=True)


def _echo_one(info: dict[str, Any]) -> None:
    click.echo(f"{info['subject']}  (quota {info['quota']})")
    for r in info["limits"]:
        count = "-" if r["count"] is None else str(r["count"])
        limit = "no limit" if not r["limit"] else str(r["limit"])
        flag = "  AT LIMIT" if r["over"] else ""
        click.echo(f"  {r['rule']:<40} {count:>6} / {limit:<8} then {r['outcome']}{flag}")


@click.group("limits")
def limits() -> None:
    """Outbound limits: counters per user and client address."""


@limits.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.argument("who", required=False, metavar="[USER|IP]")
def show_cmd(config_path: str | None, as_json: bool, who: str | None) -> None:
    """Current counters and limits, for one user or address, or for all with counts."""
    config = load_config(config_path)
    now = time.time()
    counters = {u.subject: u.usage for u in list_counters(config, now)}
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    if not config.limits.enabled:
        notes.append("[limits] enabled = false: nothing is counted or limited")
    if config.limits.store == "memory":
        notes.append(
            "counters live in the server's memory (this view is at most a second old; restart clears them)"
        )
    if who:
        subject = _subject_from_arg(config, who)
        if subject is None:
            notes.append(f"{who} is not counted: exempt ([limits] exempt) or limits off")
        else:
            out.append(_show_one(subject, counters.get(subject.counter_key, Usage())))
    else:
        for key, usage in counters.items():
            s = _subject_of_key(config, key)
            if s is not None:
                out.append(_show_one(s, usage))
    conn = config.smtp.max_connections_per_client
    lc = config.limits
    general = {
        "connections_per_client": conn,
        "auth_failures": lc.auth_failures,
        "auth_failures_address": lc.auth_failures_address,
        "auth_delay": lc.auth_delay,
        "auth_delay_max": lc.auth_delay_max,
        "auth_window": lc.auth_window,
        "exempt": [str(n) for n in lc.exempt],
        "notify_user": lc.notify_user,
    }
    if as_json:
        click.echo(json.dumps({"subjects": out, "general": general, "notes": notes}, indent=2))
        return
    for n in notes:
        click.echo(f"note: {n}")
    if not out and not who:
        click.echo("No counters: nobody sent mail in the current hour or day")
    for info in out:
        _echo_one(info)
    click.echo(
        f"connections per client address at once: {conn or 'no limit'} ([smtp] max_connections_per_client;"
        " [relay] networks exempt)"
    )
    click.echo(
        f"failed logins per client address and login: answer delayed {lc.auth_delay:g} s doubling"
        f" to {lc.auth_delay_max:g} s, refused after {lc.auth_failures}; per client address over"
        f" all logins: refused after {lc.auth_failures_address}; counts forgotten"
        f" {lc.auth_window:g} s after the last failure (SMTP AUTH and POP3 together)"
    )
