"""The `postvakt` command.

Every command that needs a config takes `--config FILE`; without it, the
file `./postvakt.toml` is used if present, else the embedded default (the same
one `postvakt serve` runs), so the quick start works without any file.
Errors are one line naming the problem, exit code 2 for bad config or usage,
1 for a refused operation; never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from postvakt import config as config_mod
from postvakt.config import Config, ConfigError

DEFAULT_CONFIG_NAME = "postvakt.toml"


def resolve_config(path: str | None) -> tuple[Config, Path | None]:
    """The config to use, and its file (None for the embedded default)."""
    if path:
        p = Path(path)
        return config_mod.load(p), p
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    if local.exists():
        return config_mod.load(local), local
    return config_mod.embedded_default(), None


def load_config(path: str | None) -> Config:
    try:
        return resolve_config(path)[0]
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./postvakt.toml, else the embedded default).",
)


class _Group(click.Group):
    """Turns ConfigError and directory errors into one-line messages, and
    loads the subsystems' commands only when they are used."""

    LAZY = {
        "explain": "postvakt.diagnose.explain:explain",
        "queue": "postvakt.queue.commands:queue",
        "doctor": "postvakt.diagnose.commands:doctor",
        "relaytest": "postvakt.diagnose.commands:relaytest",
        "limits": "postvakt.server.limits:limits",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            module, _, attr = self.LAZY[cmd_name].partition(":")
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from postvakt.directory import DirectoryError

        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"postvakt: {e}", err=True)
            sys.exit(2)
        except DirectoryError as e:
            click.echo(f"postvakt: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="postvakt")
def main() -> None:
    """postvakt: a small mail server that is never an open relay."""


# ---------------------------------------------------------------- serve / init


@main.command()
@config_option
@click.option("--role", type=click.Choice(["front", "queue-manager"]), default="front", hidden=True)
@click.option("--wake-fd", type=int, default=None, hidden=True)
def serve(config_path: str | None, role: str, wake_fd: int | None) -> None:
    """Run every configured listener until SIGTERM (SIGHUP reloads the config)."""
    from postvakt.server.app import serve as run_serve

    cfg, path = resolve_config(config_path)
    if role == "queue-manager":
        # Started by the front itself (server/manager_process.py), never by hand.
        if wake_fd is None:
            raise click.UsageError("--role queue-manager needs --wake-fd")
        sys.exit(run_serve(cfg, path, wake_fd=wake_fd))
    if path is None:
        _print_default_banner(cfg)
    sys.exit(run_serve(cfg, path))


def _print_default_banner(cfg: Config) -> None:
    domain = cfg.domains.local[0]
    sub = cfg.listen.submission[0]
    smtp = cfg.listen.smtp[0]
    click.echo(
        f"postvakt: no --config and no ./{DEFAULT_CONFIG_NAME}: running the embedded default.\n"
        f"  data in {cfg.data_dir}, local domain {domain}, host name {cfg.hostname}\n"
        f"  smtp {smtp}, submission {sub}, submissions {cfg.listen.submissions[0]},"
        f" pop3 {cfg.listen.pop3[0]}, pop3s {cfg.listen.pop3s[0]}\n"
        f"  add a user (in another terminal, same directory):\n"
        f"    postvakt user add alice@{domain}\n"
        f"  send yourself a test mail, logged in on the submission port:\n"
        f"    swaks --server {sub.host} --port {sub.port} --tls --auth-user alice@{domain}"
        f" --auth-password PASSWORD --from alice@{domain} --to alice@{domain}\n"
        f"  ask why a message would be relayed or refused:\n"
        f"    postvakt explain --client 192.0.2.7 --from alice@{domain} --to friend@other.example\n"
        f"  write a config of your own: postvakt init --dir DIR --domain YOUR.DOMAIN",
        err=False,
    )


INIT_TEMPLATE = """\
# postvakt configuration, written by `postvakt init`.
# Every key is optional except where noted; `postvakt serve --config {config}`
# refuses unknown keys and names the file, key and problem.

hostname = "{hostname}"          # the name in the banner, EHLO and Received: headers
data_dir = "{data_dir}"          # queue, mailboxes, user database (relative to this file)
# postmaster = "admin@{domain}"  # where postmaster@ every local domain goes

[listen]                          # lists of "host:port"; remove a key to turn that listener off
smtp = ["{host}:{p_smtp}"]                 # MX: mail for our domains from anyone
submission = ["{host}:{p_sub}"]            # STARTTLS, then AUTH, then mail
submissions = ["{host}:{p_subs}"]          # implicit TLS (RFC 8314), AUTH required
pop3 = ["{host}:{p_pop3}"]                 # STLS before any login
pop3s = ["{host}:{p_pop3s}"]               # implicit TLS

[tls]
# The names mail programs connect to (what users type as "server"). The
# self-signed certificate in data_dir/tls covers them all; with a certificate
# of your own (Let's Encrypt, say), uncomment cert and key: `serve` warns when
# it does not cover one of these names.
names = {names}
# cert = "/etc/letsencrypt/live/{hostname}/fullchain.pem"
# key = "/etc/letsencrypt/live/{hostname}/privkey.pem"

[domains]
local = ["{domain}"]              # mailboxes live here
relay = []                        # accepted from anyone and forwarded (backup MX)

[relay]
# The four roads to relaying to a foreign domain: AUTH (always), POP-before-SMTP,
# our own network, allowed clients. Everyone else gets the reject reply below.
networks = ["127.0.0.0/8", "::1/128"]     # our own network (Postfix: mynetworks)
clients = []                              # more addresses or ranges allowed to relay
pop_before_smtp = "30m"                   # "0" turns POP-before-SMTP off
# grant_store = "sqlite"                  # keep POP-before-SMTP grants across restarts
# reject_code = 553                       # qmail style:
# reject_enhanced = "5.7.1"
# reject_text = "sorry, that domain isn't in my list of allowed rcpthosts"
# explain_in_reply = true                 # tell the client which roads were tried

[sender]                          # each check: off | warn (log + header) | reject
# authenticated = "reject"          # a logged-in user may send only as their own addresses
# unauthenticated_local = "reject"  # nobody may claim our domains without logging in
# header_from = "reject"            # the same rules for the From:/Sender: header
# header_from_outside = "warn"      # header check for mail from outside (mailing lists)
# networks = "any"                  # senders clients in `networks` may use: any | domain
# clients = "any"                   # likewise for `clients`
# pop_before_smtp = "any"           # any | domain | owner (the user who logged in to POP3)
# trusted = "reject"                # when those three are not met: off | warn | reject

[delivery]
# smarthost = "relay.example.net:587"       # send everything through this host
# routes = {{ "partner.example" = "10.0.0.5:25" }}   # per domain, before MX lookup

# [limits]                        # outbound abuse control; 0 = no limit
# store = "sqlite"                # keep counters across restarts
# notify_user = true              # also tell a user whose mail was held
# auth_failures = 10              # failed logins per (address, login) before 454 4.7.0
# auth_failures_address = 100     # failed logins per address, all logins together
# [limits.user]                   # per logged-in user (also [limits.address], [limits.networks])
# messages_per_hour = 200
# recipients_per_hour = 1000
# outcome = "hold"                # defer | reject | hold: held mail waits for
#                                 # `postvakt queue release ID`, postmaster is told
# [limits.users."news@{domain}"]  # one user's own limits
# messages_per_hour = 5000
"""


@main.command()
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write postvakt.toml.",
)
@click.option("--domain", required=True, help="The mail domain whose mailboxes live here.")
@click.option("--hostname", default=None, help="This server's name (default mail.DOMAIN).")
@click.option(
    "--names",
    "names_arg",
    multiple=True,
    metavar="NAMES",
    help="Host names mail programs connect to, comma separated or repeated"
    " (default: the host name; asked for on a terminal). The certificate covers them all.",
)
@click.option(
    "--ports",
    type=click.Choice(["standard", "unprivileged"]),
    default="standard",
    help="standard: 25/587/465/110/995; unprivileged: 2525/2587/2465/2110/2995.",
)
@click.option("--listen-host", default="0.0.0.0", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing postvakt.toml.")
def init(
    directory: str,
    domain: str,
    hostname: str | None,
    names_arg: tuple[str, ...],
    ports: str,
    listen_host: str,
    force: bool,
) -> None:
    """Write a commented DIR/postvakt.toml, the data directory and a certificate."""
    from postvakt.server.tls import certificate_names, ensure_self_signed, fingerprint

    d = Path(directory)
    target = d / DEFAULT_CONFIG_NAME
    dom = config_mod.normalize_domain(domain, "--domain", "--domain")
    host = config_mod.normalize_domain(hostname or f"mail.{dom}", "--hostname", "--hostname")
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists already (use --force to overwrite)")
    if not names_arg and sys.stdin.isatty():
        names_arg = (
            click.prompt(
                "Host names your users' mail programs will connect to (comma separated)",
                default=host,
            ),
        )
    raw = [n for arg in names_arg for n in arg.replace(",", " ").split()]
    names = list(
        dict.fromkeys([host, *(config_mod.normalize_host(n, "--names", "--names") for n in raw)])
    )
    p = (25, 587, 465, 110, 995) if ports == "standard" else (2525, 2587, 2465, 2110, 2995)
    text = INIT_TEMPLATE.format(
        config=target,
        hostname=host,
        data_dir="data",
        domain=dom,
        host=listen_host,
        p_smtp=p[0],
        p_sub=p[1],
        p_subs=p[2],
        p_pop3=p[3],
        p_pop3s=p[4],
        names="[" + ", ".join(f'"{n}"' for n in names) + "]",
    )
    cfg = config_mod.loads(text, source=str(target), base_dir=d)  # the template must load
    d.mkdir(parents=True, exist_ok=True)
    (d / "data").mkdir(exist_ok=True)
    target.write_text(text)
    cert, _ = ensure_self_signed(cfg)
    pem = cert.read_bytes()
    click.echo(
        f"wrote {target}\n"
        f"self-signed certificate {cert}\n"
        f"  covers {', '.join(certificate_names(pem))}\n"
        f"  SHA-256 fingerprint {fingerprint(pem)}\n"
        f"  give this file to your users' mail programs, or use a certificate of your own\n"
        f"  ([tls] cert and key; the README shows both)\n"
        f"next: postvakt user add someone@{dom} --config {target}"
    )


# ---------------------------------------------------------------- users, aliases, send-as


def _directory(config_path: str | None) -> Any:
    from postvakt.directory import Directory

    cfg = load_config(config_path)
    return Directory.for_config(cfg)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
        if not pw:
            raise click.ClickException("no password on standard input")
        return pw
    if not sys.stdin.isatty():
        raise click.ClickException("no terminal to ask for a password: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@main.group()
def user() -> None:
    """Manage users (mailboxes with a password)."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
def user_add(address: str, password_stdin: bool, config_path: str | None) -> None:
    d = _directory(config_path)
    a = d.add_user(address, _read_password(password_stdin))
    click.echo(f"added {a}")


@user.command("del")
@click.argument("address")
@config_option
def user_del(address: str, config_path: str | None) -> None:
    d = _directory(config_path)
    d.delete_user(address)
    click.echo(f"deleted {address} (the mailbox files are kept)")


@user.command("list")
@config_option
def user_list(config_path: str | None) -> None:
    for u in _directory(config_path).users():
        click.echo(u)


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
def user_passwd(address: str, password_stdin: bool, config_path: str | None) -> None:
    d = _directory(config_path)
    if not d.user_exists(address):
        raise click.ClickException(f"{address}: no such user")
    d.set_password(address, _read_password(password_stdin))
    click.echo(f"changed the password of {address}")


@user.group("sendas")
def user_sendas() -> None:
    """Addresses a user may send as, beyond their own and their personal aliases."""


@user_sendas.command("add")
@click.argument("login")
@click.argument("address")
@config_option
def sendas_add(login: str, address: str, config_path: str | None) -> None:
    _directory(config_path).add_sendas(login, address)
    click.echo(f"{login} may now send as {address}")


@user_sendas.command("del")
@click.argument("login")
@click.argument("address")
@config_option
def sendas_del(login: str, address: str, config_path: str | None) -> None:
    _directory(config_path).delete_sendas(login, address)
    click.echo(f"{login} may no longer send as {address}")


@user_sendas.command("list")
@click.argument("login")
@config_option
def sendas_list(login: str, config_path: str | None) -> None:
    for a in _directory(config_path).sendas(login):
        click.echo(a)


@main.group()
def alias() -> None:
    """Manage aliases (an address that delivers to one or more others)."""


@alias.command("add")
@click.argument("alias_address")
@click.argument("target")
@config_option
def alias_add(alias_address: str, target: str, config_path: str | None) -> None:
    _directory(config_path).add_alias(alias_address, target)
    click.echo(f"{alias_address} -> {target}")


@alias.command("del")
@click.argument("alias_address")
@click.argument("target", required=False)
@config_option
def alias_del(alias_address: str, target: str | None, config_path: str | None) -> None:
    _directory(config_path).delete_alias(alias_address, target)
    click.echo(f"deleted {alias_address}" + (f" -> {target}" if target else ""))


@alias.command("list")
@config_option
def alias_list(config_path: str | None) -> None:
    for a, t in _directory(config_path).aliases():
        click.echo(f"{a} -> {t}")


# ---------------------------------------------------------------- grants


@main.group()
def grants() -> None:
    """POP-before-SMTP grants: which address may relay until when."""


@grants.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def grants_list(config_path: str | None, as_json: bool) -> None:
    import datetime
    import json
    import time

    cfg = load_config(config_path)
    from postvakt.grants import list_grants

    now = time.time()
    rows = list_grants(cfg, now)
    if as_json:
        click.echo(json.dumps([{"ip": g.ip, "login": g.login, "expires": g.expires} for g in rows]))
        return
    if not rows:
        click.echo("no address may relay by POP-before-SMTP now")
    for g in rows:
        until = datetime.datetime.fromtimestamp(g.expires).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{g.ip:<40} {g.login:<30} until {until} ({int(g.expires - now)} s left)")


# ---------------------------------------------------------------- subsystems' commands
# Registered in _Group.LAZY and imported on first use: `postvakt user add` does
# not load the diagnostics, and a server start does not load the queue CLI.
