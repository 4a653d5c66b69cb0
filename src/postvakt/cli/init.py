"""`postvakt init`: a commented config file and the data directory."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from postvakt import config as config_mod
from postvakt.cli.common import DEFAULT_CONFIG_NAME
from postvakt.cli.system import DATA_DIR, ETC_DIR, QUEUE_DIR, install_system
from postvakt.server.tls import certificate_names, ensure_self_signed, fingerprint

INIT_TEMPLATE = """\
# postvakt configuration, written by `postvakt init`.
# Every key is optional except where noted; `postvakt serve --config {config}`
# refuses unknown keys and names the file, key and problem.

hostname = "{hostname}"          # the name in the banner, EHLO and Received: headers
data_dir = "{data_dir}"          # mailboxes, user database, keys (relative to this file)
{queue_line}
# postmaster = "admin@{domain}"  # where postmaster@ every local domain goes
# mail_dir = "data/mail"         # the Maildirs (default: data_dir/mail); may be a shared mount
# queue_dir = "data/queue"       # this server's own queue (default: data_dir/queue); never shared

# [server]                        # started as root, the server binds its ports, then runs as
# user = "postvakt"               # this user and group for good; `postvakt dovecot config`
# group = "postvakt"              # runs Dovecot's mail and auth processes as them too
# drop_privileges = true          # false: started as root, stay root (not recommended)
# max_connections = 0             # on all listeners; 0 = what the descriptor limit leaves room for
# workers = 2                     # front processes sharing the ports (default 1); needs
                                  # [store] state = "sqlite" or "redis://..."

[listen]                          # lists of "host:port"; remove a key to turn that listener off
smtp = ["{host}:{p_smtp}"]                 # MX: mail for our domains from anyone
submission = ["{host}:{p_sub}"]            # STARTTLS, then AUTH, then mail
submissions = ["{host}:{p_subs}"]          # implicit TLS (RFC 8314), AUTH required
pop3 = ["{host}:{p_pop3}"]                 # STLS before any login
pop3s = ["{host}:{p_pop3s}"]               # implicit TLS
# proxy_protocol = ["smtp"]                # behind HAProxy: these listeners require a PROXY header
# proxy_trusted = ["10.0.0.5/32"]          # from these addresses only (empty: nobody)

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

# [smtp]                          # the SMTP front (Postfix's defaults where it has one)
# max_connections_per_client = 50 # per address on 25/587/465 together, from accept; networks exempt
# max_line_length = 65536         # octets per message line; longer: 554 5.6.0 (0 = only the size)
# [pop3]
# max_connections_per_client = 50 # per address on 110/995 together, from accept; networks exempt

[delivery]
# smarthost = "relay.example.net:587"       # send everything through this host
# routes = {{ "partner.example" = "10.0.0.5:25" }}   # per domain, before MX lookup

[auth_checks]                     # mail from outside on port 25: SPF, DKIM, DMARC
spf_fail = "warn"                 # off | warn (Authentication-Results: + log) | reject (550 5.7.23)
dmarc_reject = "warn"             # off | warn | reject: p=reject -> 550 5.7.1, p=quarantine -> held

# [store]                         # shared state and users (docs/deployment.md)
# state = "sqlite"                # grants, counters, failed logins: sqlite (one node, any
#                                 # number of processes) or "redis://10.0.0.7:6379/0" (several nodes)
# directory = "sqlite"            # users, aliases, send-as: or "postgresql://postvakt@10.0.0.8/postvakt"
#                                 # (then `postvakt store migrate`; move users: `postvakt store copy`)
# timeout = "2s"                  # one call to Redis or PostgreSQL waits at most this long

# [server]
# node = "mx1"                    # this node's name in grants and logs (default: the host name)

# [dns]                           # who answers every lookup (MX, SPF, DKIM, DMARC)
# servers = ["127.0.0.1:53"]      # default: the system's resolvers (/etc/resolv.conf)
# timeout = "10s"

# [dkim]                          # sign what our users send (and our bounces)
# sign = {{ "{domain}" = "s2026" }}   # or ["s2026", "s2026e"]: RSA, then an ed25519 signature
#                                 # make the key and the DNS record: postvakt dkim keygen {domain}
# key_dir = "/etc/postvakt/dkim"  # default: data_dir/dkim

# [limits]                        # outbound abuse control; 0 = no limit
# notify_user = true              # also tell a user whose mail was held
# auth_failures = 10              # failed logins per (address, login) before 454 4.7.0
# auth_failures_address = 100     # failed logins per address, all logins together
# ipv6_prefix = 64                # an IPv6 client is its /64: limits, failed logins, connections
# [limits.user]                   # per logged-in user (also [limits.address], [limits.networks])
# messages_per_hour = 200
# recipients_per_hour = 1000
# outcome = "hold"                # defer | reject | hold: held mail waits for
#                                 # `postvakt queue release ID`, postmaster is told
# [limits.users."news@{domain}"]  # one user's own limits
# messages_per_hour = 5000

# [web]                           # autoconfig, Autodiscover, /help (docs/helpdesk.md); absent = off
# listen = "127.0.0.1:8080"       # plain HTTP: put a TLS proxy in front for the world
# public_host = "mail.{domain}"   # the name mail programs are told (default: hostname)
# proxy_trusted = ["127.0.0.1/32"]  # proxies whose X-Forwarded-For is believed

# [metrics]                       # Prometheus text format at /metrics; absent = off
# listen = "127.0.0.1:9154"       # the node's totals, whichever process counted them

# [log]                           # to standard error (journald), one line per event
# format = "json"                 # text (default) | json: one object per line
"""


@click.command()
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to write postvakt.toml (with --system: /etc/postvakt).",
)
@click.option(
    "--system",
    is_flag=True,
    help="Install for a service manager: /etc/postvakt, data_dir /var/lib/postvakt,"
    " queue_dir /var/spool/postvakt with owners and modes, the postvakt user, the systemd unit.",
)
@click.option(
    "--root",
    "root",
    default="/",
    type=click.Path(file_okay=False),
    help="With --system: write everything under this directory instead of /.",
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
    directory: str | None,
    system: bool,
    root: str,
    domain: str,
    hostname: str | None,
    names_arg: tuple[str, ...],
    ports: str,
    listen_host: str,
    force: bool,
) -> None:
    """Write a commented DIR/postvakt.toml, the data directory and a certificate."""
    if system:
        if directory is not None and Path(directory) != ETC_DIR:
            raise click.UsageError("--system writes /etc/postvakt: leave out --dir")
        directory = str(ETC_DIR)
    elif directory is None:
        raise click.UsageError("name the directory for postvakt.toml: --dir DIR (or --system)")
    elif root != "/":
        raise click.UsageError("--root goes with --system")
    d = Path(directory)
    target = d / DEFAULT_CONFIG_NAME
    dom = config_mod.normalize_domain(domain, "--domain", "--domain")
    host = config_mod.normalize_domain(hostname or f"mail.{dom}", "--hostname", "--hostname")
    if target.exists() and not force and not system:
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
        data_dir=str(DATA_DIR) if system else "data",
        queue_line=(
            f'queue_dir = "{QUEUE_DIR}"        # this node\'s queue (default: data_dir/queue)'
            if system
            else '# queue_dir = "/var/spool/postvakt"  # this node\'s queue (default: data_dir/queue)'
        ),
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
    if system:
        _init_system(Path(root), text, cfg, force)
        return
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


def _init_system(root: Path, text: str, cfg: config_mod.Config, force: bool) -> None:
    def certificate(data_dir: Path) -> tuple[Path, Path]:
        return ensure_self_signed(replace(cfg, data_dir=data_dir))

    layout, account, created = install_system(root.resolve(), text, force, certificate)
    cert = layout.data_dir / "tls" / "cert.pem"
    pem = cert.read_bytes()
    user = cfg.server.user
    click.echo(
        ("created system user " if created else "system user ")
        + f"{user} (uid {account.uid}, gid {account.gid})\n"
        f"wrote {layout.config} (root:{user} 0640)\n"
        f"data_dir {layout.data_dir}, queue_dir {layout.queue_dir} ({user}:{user} 0750)\n"
        f"self-signed certificate {cert}\n"
        f"  covers {', '.join(certificate_names(pem))}\n"
        f"  SHA-256 fingerprint {fingerprint(pem)}\n"
        f"systemd unit {layout.unit}\n"
        f"next: postvakt user add postmaster@{cfg.domains.local[0]} --config {ETC_DIR / DEFAULT_CONFIG_NAME}\n"
        f"      postvakt check --config {ETC_DIR / DEFAULT_CONFIG_NAME}\n"
        f"      systemctl daemon-reload && systemctl enable --now postvakt"
    )
