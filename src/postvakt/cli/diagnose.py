"""`postvakt doctor` and `postvakt relaytest`.

Exit codes: doctor 0 only when the mail would be accepted, 1 when not;
`--explain-error` 0 when the error was recognised and explained, 2 when not;
relaytest 0 when no relay was possible, 1 when one was, 2 when inconclusive.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from postvakt.cli.common import json_option
from postvakt.diagnose.catalogue import DEFAULT_LANGUAGE, LANGUAGES
from postvakt.diagnose.client import DEFAULT_TIMEOUT
from postvakt.diagnose.doctor import SECURITIES, STANDARD_PORTS, DoctorOptions, diagnose
from postvakt.diagnose.errortext import explain_error
from postvakt.diagnose.relaytest import RelayTestOptions, run_relaytest


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6] or [IPv6]:PORT."""
    t = text.strip()
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise click.BadParameter(f"{text!r}: missing ']'")
        host, rest = t[1:end], t[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif t.count(":") == 1:
        host, port_text = t.split(":")
    else:
        host, port_text = t, ""
    if not host:
        raise click.BadParameter(f"{text!r} has no host")
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise click.BadParameter(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_ports(text: str | None) -> dict[str, int]:
    ports = dict(STANDARD_PORTS)
    if not text:
        return ports
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in STANDARD_PORTS or not (value.isascii() and value.isdigit()):
            raise click.BadParameter(
                f"{item!r}: write e.g. smtp=25,submission=587,submissions=465", param_hint="--ports"
            )
        ports[name] = int(value)
    return ports


def _plain_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Addresses and user names go into command lines: no spaces, brackets or control characters."""
    if value is None:
        return None
    if not value or any(ch in value for ch in "<> \t") or not value.isprintable():
        raise click.BadParameter(f"{value!r}: write the bare value, e.g. alice@example.com")
    return value


lang_option = click.option(
    "--lang",
    type=click.Choice(LANGUAGES),
    default=DEFAULT_LANGUAGE,
    show_default=True,
    help="Language of the explanation.",
)


@click.command()
@click.option(
    "--server", metavar="HOST[:PORT]", help="The outgoing (SMTP) server as set in the mail program."
)
@click.option(
    "--from",
    "sender",
    metavar="ADDR",
    callback=_plain_arg,
    help="Sender address as set in the mail program.",
)
@click.option(
    "--to",
    "rcpt",
    metavar="ADDR",
    callback=_plain_arg,
    help="A recipient to test (no message is sent).",
)
@click.option(
    "--user",
    "login",
    metavar="U",
    callback=_plain_arg,
    help="User name for login (SMTP AUTH and POP3).",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@click.option(
    "--smtp-auth/--no-smtp-auth",
    default=None,
    help="Whether the mail program logs in to the SMTP server (default: when --user is given). "
    "With --no-smtp-auth the login is used only for POP3.",
)
@click.option(
    "--security",
    type=click.Choice(SECURITIES),
    default="auto",
    show_default=True,
    help="Connection security as set in the mail program (auto: SSL/TLS on the "
    "submissions port, else STARTTLS when offered).",
)
@click.option("--pop3", "pop3", metavar="HOST[:PORT]", help="POP3 server, to test POP-before-SMTP.")
@click.option(
    "--pop3-security",
    type=click.Choice(SECURITIES),
    default="auto",
    show_default=True,
    help="POP3 connection security (auto: SSL/TLS on port 995, else STLS when offered).",
)
@click.option(
    "--ports",
    metavar="LIST",
    help="Standard ports to survey, e.g. smtp=25,submission=587,submissions=465.",
)
@click.option("--source-address", metavar="IP", help="Local address to connect from.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds per network step.",
)
@click.option(
    "--tls-name", metavar="NAME", help="Name the certificate must carry (default: the server host)."
)
@click.option(
    "--cafile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Extra CA certificates to trust.",
)
@click.option(
    "--explain-error",
    "error_text",
    metavar="TEXT",
    help="Explain an error as the mail program shows it ('-' reads stdin); offline.",
)
@click.option("--verbose", "-v", is_flag=True, help="Show the conversation with the server.")
@lang_option
@json_option
def doctor(
    server: str | None,
    sender: str | None,
    rcpt: str | None,
    login: str | None,
    password_stdin: bool,
    smtp_auth: bool | None,
    security: str,
    pop3: str | None,
    pop3_security: str,
    ports: str | None,
    source_address: str | None,
    timeout: float,
    tls_name: str | None,
    cafile: Path | None,
    error_text: str | None,
    verbose: bool,
    lang: str,
    as_json: bool,
) -> None:
    """Check why a mail program cannot send, and say what to change.

    Probes the server like a careful mail client (ports 25/587/465, STARTTLS,
    certificate, AUTH, MAIL/RCPT, POP-before-SMTP) but never sends a message.
    """
    if error_text is not None:
        if error_text == "-":
            error_text = sys.stdin.read()
        d = explain_error(error_text)
        click.echo(d.to_json(lang) if as_json else d.to_text(lang, probing=False), nl=False)
        sys.exit(d.exit_code)
    missing = [n for n, v in (("--server", server), ("--from", sender), ("--to", rcpt)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use --explain-error TEXT)")
    assert server is not None and sender is not None and rcpt is not None
    port_map = parse_ports(ports)
    host, port = parse_target(server, port_map["smtp"])
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password.isprintable():
            raise click.UsageError("the password holds a control character (line break, NUL, ...)")
    if password is not None and not login:
        raise click.UsageError("--password-stdin needs --user")
    if login and password is None:
        raise click.UsageError("--user needs --password-stdin (the password is never an argument)")
    pop3_host, pop3_port = (None, 110)
    if pop3:
        pop3_host, pop3_port = parse_target(pop3, 110)
    opts = DoctorOptions(
        host=host,
        port=port,
        sender=sender,
        rcpt=rcpt,
        login=login,
        password=password,
        smtp_auth=smtp_auth,
        security=security,
        pop3_host=pop3_host,
        pop3_port=pop3_port,
        pop3_security=pop3_security,
        ports=port_map,
        source=source_address,
        timeout=timeout,
        tls_name=tls_name,
        cafile=cafile,
    )
    d = diagnose(opts)
    click.echo(d.to_json(lang) if as_json else d.to_text(lang, verbose=verbose), nl=False)
    sys.exit(d.exit_code)


@click.command()
@click.argument("target", metavar="HOST[:PORT]")
@click.option(
    "--domain",
    "domain",
    required=True,
    metavar="OUR_DOMAIN",
    help="A domain the server accepts mail for.",
)
@click.option(
    "--local-user",
    default="postmaster",
    show_default=True,
    help="An existing mailbox in --domain (the accepted control).",
)
@click.option(
    "--foreign-domain",
    default="relaytest.example",
    show_default=True,
    help="A domain the server must not relay to.",
)
@click.option(
    "--ip",
    "server_ip",
    metavar="IP",
    help="The server's address for [IP] literals (default: resolved).",
)
@click.option(
    "--source-address", metavar="IP", help="Local address to connect from (an outside one)."
)
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@lang_option
@json_option
def relaytest(
    target: str,
    domain: str,
    local_user: str,
    foreign_domain: str,
    server_ip: str | None,
    source_address: str | None,
    timeout: float,
    lang: str,
    as_json: bool,
) -> None:
    """Try every known open-relay trick against a server you run (stops before DATA)."""
    host, port = parse_target(target, 25)
    opts = RelayTestOptions(
        host=host,
        port=port,
        domain=domain.lower().rstrip("."),
        local_user=local_user,
        foreign_domain=foreign_domain.lower(),
        server_ip=server_ip,
        source=source_address,
        timeout=timeout,
    )
    report = run_relaytest(opts)
    click.echo(report.to_json() if as_json else report.to_text(lang), nl=False)
    sys.exit(report.exit_code)
