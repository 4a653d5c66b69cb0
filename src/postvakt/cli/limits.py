"""`postvakt limits show`: outbound counters and limits, as the server sees them."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import click

from postvakt import clock
from postvakt.cli.common import config_option, load_config
from postvakt.config import Config
from postvakt.policy import Client
from postvakt.policy.limits import LIMITS, WINDOW, Subject, Usage, subject_for
from postvakt.store import StateUnavailable, list_counters


def _subject_from_arg(config: Config, arg: str) -> Subject | None:
    if "@" in arg:
        return subject_for(Client(ip="", login=arg.strip()), config.limits, config.relay.networks)
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
    now = clock.now()
    try:
        counters = {u.subject: u.usage for u in list_counters(config, now)}
    except StateUnavailable as e:
        raise click.ClickException(str(e)) from None
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    if not config.limits.enabled:
        notes.append("[limits] enabled = false: nothing is counted or limited")
    if config.store.state_kind == "memory":
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
