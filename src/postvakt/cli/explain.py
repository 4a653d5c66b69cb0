"""`postvakt explain`: every rule tried for a client and envelope, and the replies."""

from __future__ import annotations

import json
from typing import BinaryIO

import click

from postvakt import clock
from postvakt.cli.common import config_option, load_config
from postvakt.diagnose.explain import (
    ExplainError,
    canonical_login,
    client_ip_arg,
    limit_usage,
    open_directory,
    open_grants,
    render_json,
    render_text,
    run_explain,
)
from postvakt.policy import PORTS


@click.command("explain")
@config_option
@click.option("--client", "client_ip", metavar="IP", required=True, help="The client's IP address.")
@click.option(
    "--auth", "login", metavar="USER", default=None, help="Assume SMTP AUTH succeeded as USER."
)
@click.option(
    "--port",
    type=click.Choice(list(PORTS)),
    default="smtp",
    show_default=True,
    help="The port the client connects to.",
)
@click.option(
    "--from", "mail_from", metavar="ADDR", default="<>", show_default=True, help="Envelope sender."
)
@click.option(
    "--to", "rcpts", metavar="ADDR", multiple=True, help="Envelope recipient (repeatable)."
)
@click.option("--header-from", metavar="ADDR", default=None, help="The From: header value.")
@click.option(
    "--pop-login",
    metavar="USER",
    default=None,
    help="Assume USER just logged in to POP3 from --client.",
)
@click.option(
    "--smtputf8", is_flag=True, help="The client used SMTPUTF8 (allows non-ASCII addresses)."
)
@click.option(
    "--helo", metavar="NAME", default=None, help="The HELO/EHLO name (checked by SPF on port 25)."
)
@click.option(
    "--message",
    "message_file",
    metavar="FILE",
    type=click.File("rb"),
    default=None,
    help="The message as sent after DATA (DKIM and DMARC on port 25; its From: if no --header-from).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def explain(
    config_path: str | None,
    client_ip: str,
    login: str | None,
    port: str,
    mail_from: str,
    rcpts: tuple[str, ...],
    header_from: str | None,
    pop_login: str | None,
    smtputf8: bool,
    helo: str | None,
    message_file: BinaryIO | None,
    as_json: bool,
) -> None:
    """Show every rule tried for a client and envelope, and the replies the server would send.

    Exit code 0 if the server would accept everything, 1 if it would refuse something.
    """
    config = load_config(config_path)
    now = clock.now()
    message = message_file.read() if message_file is not None else None
    try:
        ip = client_ip_arg(client_ip)
        auth_login = canonical_login(login) if login is not None else None
        canonical_pop = canonical_login(pop_login) if pop_login is not None else None
    except ExplainError as e:
        raise click.UsageError(str(e)) from None
    directory, closable, notes = open_directory(config)
    try:
        grants, grant_notes = open_grants(config, ip, canonical_pop, now)
        notes += grant_notes
        if auth_login is not None and closable is not None and not closable.user_exists(auth_login):
            notes.append(f"{auth_login} is not a user: a real SMTP AUTH would fail (535 5.7.8)")
        try:
            exp = run_explain(
                config,
                directory,
                grants,
                client_ip=ip,
                login=auth_login,
                port=port,
                mail_from=mail_from,
                rcpts=rcpts,
                header_from=header_from,
                now=now,
                smtputf8=smtputf8,
                usage=limit_usage(config, ip, auth_login, now),
                helo=helo,
                message=message,
            )
        except ExplainError as e:
            raise click.UsageError(str(e)) from None
    finally:
        if closable is not None:
            closable.close()
    if as_json:
        click.echo(json.dumps(render_json(exp, notes), indent=2))
    else:
        click.echo(render_text(exp, config, notes), nl=False)
    raise SystemExit(exp.exit_code)
