"""`postvakt grants`: POP-before-SMTP grants in the store the server uses."""

from __future__ import annotations

import datetime
import json
import time

import click

from postvakt.cli.common import config_option, load_config
from postvakt.store import StateUnavailable, list_grants


@click.group()
def grants() -> None:
    """POP-before-SMTP grants: which address may relay until when, opened by which login."""


@grants.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def grants_list(config_path: str | None, as_json: bool) -> None:
    cfg = load_config(config_path)
    now = time.time()
    try:
        rows = list_grants(cfg, now)
    except StateUnavailable as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "ip": g.ip,
                        "protocol": g.protocol,
                        "node": g.node,
                        "login": g.login,
                        "expires": g.expires,
                    }
                    for g in rows
                ]
            )
        )
        return
    if not rows:
        click.echo("no address may relay by POP-before-SMTP now")
    for g in rows:
        until = datetime.datetime.fromtimestamp(g.expires).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{g.ip:<40} {g.protocol:<5} {g.login:<30} {g.node or '-':<20} until {until}"
            f" ({int(g.expires - now)} s left)"
        )
