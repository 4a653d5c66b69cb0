"""TOML configuration -> frozen dataclasses.

Rules of the house:
- Every key has one meaning and one place; an unknown key is an error (a typo
  in `networks` must not silently leave a relay open or shut).
- Every error names the file, the key and what is wrong, in one line, and is a
  `ConfigError`, never a traceback.
- Defaults are written here, next to the key, with the reason for the number.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

from postvakt.policy.limits import (
    LIMITS,
    OUTCOMES,
    QUOTAS,
    USER,
    LimitsConfig,
    Quota,
)
from postvakt.policy.settings import (
    CHECK_MODES,
    SENDER_MODES,
    TRUSTED_SENDER_MODES,
    CheckMode,
    SenderMode,
    TrustedSenderMode,
)
from postvakt.smtp._data import DEFAULT_MAX_LINE_LENGTH

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, worded for the admin: file, key, reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + reason)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


ListenerKind = Literal["smtp", "submission", "submissions", "pop3", "pop3s"]
LISTENER_KINDS: tuple[ListenerKind, ...] = ("smtp", "submission", "submissions", "pop3", "pop3s")


@dataclass(frozen=True)
class ListenConfig:
    smtp: tuple[HostPort, ...] = ()
    submission: tuple[HostPort, ...] = ()
    submissions: tuple[HostPort, ...] = ()
    pop3: tuple[HostPort, ...] = ()
    pop3s: tuple[HostPort, ...] = ()
    # Listeners that require a PROXY protocol header (v1 or v2) before the
    # protocol starts, and who may send one (empty: nobody).
    proxy_protocol: tuple[ListenerKind, ...] = ()
    proxy_trusted: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class TLSConfig:
    cert: Path | None = None
    key: Path | None = None
    # The names (or addresses) mail programs connect to. The self-signed
    # certificate covers them all; an admin's certificate is checked against them.
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...] = ()
    relay: tuple[str, ...] = ()


@dataclass(frozen=True)
class RelayConfig:
    networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    clients: tuple[IPNetwork, ...] = ()
    # DRAC and pop-before-smtp both default to 30 minutes.
    pop_before_smtp: float = 30 * 60
    # Deprecated: the old name of `[store] state` (`_parse_store` maps it there).
    grant_store: str = "memory"
    reject_code: int = 550
    reject_enhanced: str = "5.7.1"
    reject_text: str = "<{rcpt}>: Relaying denied"
    # Append the plain-words reason (which roads were tried) to the reply.
    explain_in_reply: bool = False


@dataclass(frozen=True)
class SenderConfig:
    """Anti-spoofing: who may use which sender address."""

    # Authenticated users may use only addresses they own (their own, aliases, granted).
    authenticated: SenderMode = "reject"
    # A client allowed by no road may not claim one of our domains.
    unauthenticated_local: SenderMode = "reject"
    # Per road, what a trusted but not logged-in client may use as sender.
    networks: TrustedSenderMode = "any"
    clients: TrustedSenderMode = "any"
    pop_before_smtp: TrustedSenderMode = "any"
    # What happens when a trusted road's setting above is not met.
    trusted: SenderMode = "reject"
    # Check the header From:/Sender: at end of DATA as well.
    header_from: SenderMode = "reject"
    # The header check for a client on no road (not logged in, not in networks
    # or clients, no POP-before-SMTP grant): mailing lists and forwarders
    # deliver "From: our user" from outside, so by default that is only
    # recorded (a warning header and a log line), not refused. The envelope
    # (MAIL FROM) check for such clients stays `unauthenticated_local`.
    header_from_outside: SenderMode = "warn"


@dataclass(frozen=True)
class SMTPConfig:
    # Postfix message_size_limit default (10240000 bytes).
    max_message_size: int = 10_240_000
    # Postfix smtpd_recipient_limit default; RFC 5321 §4.5.3.1.8 asks for at least 100.
    max_recipients: int = 1000
    # RFC 5321 §4.5.3.2.7: at least 5 minutes waiting for the next command.
    idle_timeout: float = 300.0
    # Postfix smtpd_soft_error_limit / smtpd_hard_error_limit / smtpd_error_sleep_time.
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep: float = 1.0
    # Postfix hopcount_limit.
    max_hops: int = 50
    # Octets in one line of a message, CRLF not counted (RFC 5322's 998 is
    # exceeded by real mail; why 64 KiB: postvakt.smtp._data). Longer: refused
    # after DATA with "554 5.6.0 Line too long ...". 0 = no limit but the size.
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    # Postfix smtpd_client_connection_count_limit; clients in `networks` are exempt
    # (Postfix smtpd_client_event_limit_exceptions). 0 = no limit.
    max_connections_per_client: int = 50
    # Postfix smtpd_min_data_rate: DATA slower than this is cut off (slowloris).
    min_data_rate: int = 500
    # Free bytes the queue's file system must keep; below it MAIL gets
    # "452 4.3.1 Insufficient system storage" (RFC 3463 X.3.1) instead of a
    # 250 that could not be kept. 0 = 1.5 x max_message_size, as Postfix's
    # smtpd demands before it accepts a message.
    queue_minfree: int = 0


@dataclass(frozen=True)
class DeliveryConfig:
    smarthost: HostPort | None = None
    routes: tuple[tuple[str, HostPort], ...] = ()
    # RFC 5321 §4.5.4.1 suggests >= 30 min; Postfix starts at 300 s and caps at 4000 s.
    retry_initial: float = 5 * 60
    retry_max: float = 60 * 60
    # Postfix maximal_queue_lifetime: 5 days.
    give_up: float = 5 * 24 * 3600
    # Postfix delay_warning_time when enabled: 4 hours.
    delay_warning: float = 4 * 3600
    # Postfix default_destination_concurrency_limit is 20; a small server needs less.
    concurrency_per_destination: int = 5
    connect_timeout: float = 30.0
    # Outbound TLS: "opportunistic" (STARTTLS when offered) or "none".
    tls: str = "opportunistic"

    def route_for(self, domain: str) -> HostPort | None:
        for d, hp in self.routes:
            if d == domain:
                return hp
        return None


@dataclass(frozen=True)
class POP3Config:
    # Plaintext USER/PASS before STLS on port 110: "never" | "networks" | "always".
    plaintext: str = "never"
    # Dovecot: first failed login delayed 2 s, doubling, at most 15 s.
    fail_delay: float = 2.0
    fail_delay_max: float = 15.0
    max_failures: int = 3
    idle_timeout: float = 600.0
    # RFC 2449 LOGIN-DELAY: the least time between two logins of one user (ISP
    # polling policy); 0 = no limit.
    login_delay: float = 0.0
    # Connections one client address may hold on 110 and 995 together, counted
    # from accept; clients in `[relay] networks` are exempt. 0 = no limit.
    # Dovecot's mail_max_userip_connections is 10 per user and address; one
    # address can be a NAT of many users, so per address this is SMTP's 50.
    max_connections_per_client: int = 50


# Whom the server's processes run as: `serve` started as root drops to this
# user, and the Dovecot config `postvakt dovecot config` writes runs its auth
# worker and mail processes as the same user, so that both can share the
# Maildirs and the user database without opening their modes to anyone else.
DEFAULT_SERVER_USER = "postvakt"
# More front processes than this buys nothing on any machine postvakt targets
# and multiplies the per-process memory (one interpreter each).
MAX_WORKERS = 64


@dataclass(frozen=True)
class ServerConfig:
    user: str = DEFAULT_SERVER_USER
    group: str = DEFAULT_SERVER_USER
    # Connections the process holds on all listeners together, counted from
    # accept; past it a new one is refused (421 / -ERR [SYS/TEMP] / closed on
    # 465 and 995). 0 = as many as the descriptor limit leaves room for, with
    # an eighth of it (at least 64) kept for spool files and the rest.
    max_connections: int = 0
    # Front processes sharing the listening ports (one queue manager per node).
    workers: int = 1
    # false: started as root, keep running as root (a container whose root is
    # already unprivileged, a test rig); logged as a warning at every start.
    drop_privileges: bool = True
    # This node's name in grants, logs and locks; empty means the host name.
    node: str = ""


STATE_KINDS = ("memory", "sqlite")
DIRECTORY_KINDS = ("sqlite",)


@dataclass(frozen=True)
class StoreConfig:
    """Where shared state and the user directory live (docs/deployment.md).

    `state`: "sqlite" (one node, any number of processes), "memory" (one
    process; tests) or "redis://HOST:PORT/DB" (several nodes): POP-before-SMTP
    grants, outbound counters, login failures, notice de-duplication, POP3
    mailbox locks. `directory`: "sqlite" or "postgresql://...": users,
    aliases, send-as rights.
    """

    state: str = "sqlite"
    directory: str = "sqlite"
    # One call to Redis or PostgreSQL waits at most this long (connect or reply).
    timeout: float = 2.0

    @property
    def state_kind(self) -> str:
        return "redis" if self.state.startswith(("redis://", "rediss://")) else self.state

    @property
    def directory_kind(self) -> str:
        if self.directory.startswith(("postgresql://", "postgres://")):
            return "postgresql"
        return self.directory


@dataclass(frozen=True)
class DNSConfig:
    """The DNS every lookup asks: MX for delivery, SPF, DKIM and DMARC alike."""

    # Empty: the system's resolvers (/etc/resolv.conf).
    servers: tuple[HostPort, ...] = ()
    # One lookup's whole lifetime, retries included (dnspython's default is
    # 5 s; MX lookups had 10 s, which a slow authoritative server may need).
    timeout: float = 10.0


# The key types a DKIM key file may hold (RFC 6376 rsa, RFC 8463 ed25519).
Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa", "ed25519")


@dataclass(frozen=True)
class DKIMConfig:
    """Which of our domains sign outgoing mail, with which selectors (RFC 6376)."""

    # (domain, selectors): the first selector's key signs; more selectors add
    # signatures (an ed25519 one beside RSA, or the next key of a rotation).
    sign: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Default: data_dir/dkim. Keys are DOMAIN.SELECTOR.key (PKCS#8 PEM, 0600).
    key_dir: Path | None = None

    def selectors(self, domain: str) -> tuple[str, ...]:
        for d, sels in self.sign:
            if d == domain:
                return sels
        return ()


@dataclass(frozen=True)
class AuthChecksConfig:
    """SPF/DKIM/DMARC on mail from outside (port 25, a client on no road).

    Off by default: checking means DNS lookups for every message from
    outside, which an admin turns on knowingly (`postvakt init` writes
    "warn"). "warn" records the results (Authentication-Results:, log),
    "reject" refuses what the sender's domain asks to refuse.
    """

    dmarc_reject: CheckMode = "off"
    spf_fail: CheckMode = "off"

    @property
    def enabled(self) -> bool:
        return self.dmarc_reject != "off" or self.spf_fail != "off"


@dataclass(frozen=True)
class WebConfig:
    """Autoconfig, Autodiscover and the help page (postvakt.web); no listener = off."""

    listen: tuple[HostPort, ...] = ()
    # The name mail programs are told to connect to; "" = the config's hostname.
    public_host: str = ""
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed;
    # empty = nobody (the help page's own-address check sees the TCP peer).
    proxy_trusted: tuple[IPNetwork, ...] = ()
    # A request's headers, and then its body, must each arrive within this
    # (slowloris); nginx's client_header_timeout is 60 s, ours serves small pages.
    request_timeout: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: the Prometheus endpoint; no listener = off (nothing is counted)."""

    listen: HostPort | None = None


LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class LogConfig:
    """`[log]`: one line per event on stderr (journald), as text or as JSON objects."""

    format: LogFormat = "text"


@dataclass(frozen=True)
class Config:
    hostname: str
    data_dir: Path
    # The Maildirs (<mail_dir>/<domain>/<local part>); may be a shared mount.
    # None in the dataclass means data_dir/mail: use `mail_root`.
    mail_dir: Path | None = None
    # This node's queue, never a shared mount (a lock refuses a second server).
    # None means data_dir/queue: use `queue_root`.
    queue_dir: Path | None = None
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    auth_checks: AuthChecksConfig = field(default_factory=AuthChecksConfig)
    web: WebConfig = field(default_factory=WebConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    # Warnings about the config itself (old keys), logged by `serve`, printed by the CLI.
    notes: tuple[str, ...] = ()
    # Where postmaster@<local domain> and <Postmaster> go (RFC 5321 §4.5.1).
    postmaster: str = ""
    log_level: str = "info"
    source: str = "<embedded default>"

    @property
    def mail_root(self) -> Path:
        """Where the Maildirs live: `mail_dir`, by default data_dir/mail."""
        return self.mail_dir if self.mail_dir is not None else self.data_dir / "mail"

    @property
    def queue_root(self) -> Path:
        """Where the queue lives: `queue_dir`, by default data_dir/queue."""
        return self.queue_dir if self.queue_dir is not None else self.data_dir / "queue"

    @property
    def node(self) -> str:
        """This node's name: `[server] node`, by default the host name."""
        return self.server.node or socket.gethostname()

    @property
    def postmaster_address(self) -> str:
        if self.postmaster:
            return self.postmaster
        domain = self.domains.local[0] if self.domains.local else self.hostname
        return f"postmaster@{domain}"

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.domains.local

    def is_relay_domain(self, domain: str) -> bool:
        return domain in self.domains.relay

    @property
    def dkim_key_dir(self) -> Path:
        return self.dkim.key_dir if self.dkim.key_dir is not None else self.data_dir / "dkim"


# ---------------------------------------------------------------- parsing helpers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A POSIX user or group name (useradd's rule, as Debian relaxes it).
_SYSTEM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def parse_duration(value: object, source: str, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(source, key, f'{value!r} is not a duration (e.g. "30m", "2h", 0)')
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(source, key, "a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ConfigError(source, key, f'{value!r} is not a duration (e.g. "30m", "2h", "5d", 0)')


def parse_hostport(
    value: object, source: str, key: str, default_port: int | None = None
) -> HostPort:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, key, f'{value!r} is not "host:port"')
    text = value.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(source, key, f"{value!r}: missing ']' after IPv6 address")
        host = text[1:end]
        rest = text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") == 0:
        host, port_text = text, None
    else:
        raise ConfigError(source, key, f'{value!r}: write IPv6 addresses as "[::1]:25"')
    if port_text is None:
        if default_port is None:
            raise ConfigError(source, key, f'{value!r} has no port (write "host:port")')
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(source, key, f"{value!r}: port must be a number from 0 to 65535")
    if not host:
        raise ConfigError(source, key, f"{value!r} has no host")
    return HostPort(host, int(port_text))


def parse_network(value: object, source: str, key: str) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(source, key, f"{value!r} is not an address or network in quotes")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            source,
            key,
            f'{value!r} is not a valid IP address or CIDR network (e.g. "192.0.2.0/24")',
        ) from None


def normalize_domain(value: object, source: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, key, f"{value!r} is not a domain name")
    d = value.strip().rstrip(".").lower()
    try:
        d = d.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(source, key, f"{value!r} is not a valid domain name") from None
    if not _HOSTNAME.match(d):
        raise ConfigError(source, key, f"{value!r} is not a valid domain name")
    return d


def normalize_host(value: object, source: str, key: str) -> str:
    """A host name (normalized as a domain) or an IP address (as written by ipaddress)."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip().strip("[]")))
        except ValueError:
            pass
    return normalize_domain(value, source, key)


def _expect(value: object, typ: type | tuple[type, ...], source: str, key: str, what: str) -> Any:
    if isinstance(value, bool) and typ is not bool and not (isinstance(typ, tuple) and bool in typ):
        raise ConfigError(source, key, f"expected {what}, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(source, key, f"expected {what}, got {value!r}")
    return value


def _list(value: object, source: str, key: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    return list(_expect(value, list, source, key, "a list"))


def _choice(value: object, choices: tuple[str, ...], source: str, key: str) -> str:
    if value not in choices:
        raise ConfigError(source, key, f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def _check_keys(table: dict[str, Any], allowed: set[str], source: str, prefix: str) -> None:
    for k in table:
        if k not in allowed:
            where = f"[{prefix}] {k}" if prefix else k
            hint = ", ".join(sorted(allowed))
            raise ConfigError(source, where, f"unknown key (known keys here: {hint})")


def _table(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(source, f"[{name}]", "must be a table")
    return value


def _scalar_table(
    table: dict[str, Any], base: Any, source: str, section: str, durations: tuple[str, ...] = ()
) -> Any:
    """Fill a flat dataclass of ints/floats/strs/bools from a table, by the default's type."""
    _check_keys(table, {f.name for f in fields(base)}, source, section)
    changes: dict[str, Any] = {}
    for k, v in table.items():
        key = f"[{section}] {k}"
        default = getattr(base, k)
        if k in durations:
            changes[k] = parse_duration(v, source, key)
        elif isinstance(default, bool):
            changes[k] = _expect(v, bool, source, key, "true or false")
        elif isinstance(default, int):
            n = _expect(v, int, source, key, "a whole number")
            if n < 0:
                raise ConfigError(source, key, "cannot be negative")
            changes[k] = n
        elif isinstance(default, float):
            changes[k] = float(_expect(v, (int, float), source, key, "a number"))
        else:
            changes[k] = _expect(v, str, source, key, "a string")
    return replace(base, **changes)


# ---------------------------------------------------------------- loading

TOP_KEYS = {
    "hostname",
    "data_dir",
    "mail_dir",
    "queue_dir",
    "postmaster",
    "log_level",
    "listen",
    "store",
    "tls",
    "domains",
    "relay",
    "sender",
    "smtp",
    "delivery",
    "pop3",
    "limits",
    "dns",
    "dkim",
    "auth_checks",
    "web",
    "server",
    "metrics",
    "log",
}

# RFC 6376 §3.1: a selector is one or more dot-separated labels.
_SELECTOR = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def is_selector(text: str) -> bool:
    """A DKIM selector as `[dkim] sign` and `postvakt dkim --selector` accept it."""
    return bool(_SELECTOR.match(text))


def _parse_dns(table: dict[str, Any], source: str) -> DNSConfig:
    _check_keys(table, {"servers", "timeout"}, source, "dns")
    servers = tuple(
        parse_hostport(x, source, "[dns] servers", 53)
        for x in _list(table.get("servers", []), source, "[dns] servers")
    )
    timeout = DNSConfig.timeout
    if "timeout" in table:
        timeout = parse_duration(table["timeout"], source, "[dns] timeout")
        if timeout <= 0:
            raise ConfigError(source, "[dns] timeout", "must be more than 0")
    return DNSConfig(servers=servers, timeout=timeout)


def _parse_dkim(
    table: dict[str, Any], source: str, path_of: Callable[[object, str], Path]
) -> DKIMConfig:
    _check_keys(table, {"sign", "key_dir"}, source, "dkim")
    sign = table.get("sign", {})
    if not isinstance(sign, dict):
        raise ConfigError(
            source,
            "[dkim] sign",
            'must be a table { "domain" = "selector" } (or a list of selectors)',
        )
    entries: list[tuple[str, tuple[str, ...]]] = []
    for d, sels in sign.items():
        key = f"[dkim] sign.{d}"
        domain = normalize_domain(d, source, key)
        selectors = tuple(_list(sels, source, key))
        if not selectors:
            raise ConfigError(source, key, "name at least one selector")
        for sel in selectors:
            if not isinstance(sel, str) or not is_selector(sel):
                raise ConfigError(
                    source, key, f"{sel!r} is not a valid selector (letters, digits, '-', '.')"
                )
        if len(set(selectors)) != len(selectors):
            raise ConfigError(source, key, "a selector is named twice")
        entries.append((domain, tuple(s.lower() for s in selectors)))
    key_dir = path_of(table["key_dir"], "[dkim] key_dir") if "key_dir" in table else None
    return DKIMConfig(sign=tuple(entries), key_dir=key_dir)


def _parse_auth_checks(table: dict[str, Any], source: str) -> AuthChecksConfig:
    _check_keys(table, {"dmarc_reject", "spf_fail"}, source, "auth_checks")
    modes = {
        k: cast(CheckMode, _choice(table[k], CHECK_MODES, source, f"[auth_checks] {k}"))
        for k in ("dmarc_reject", "spf_fail")
        if k in table
    }
    return AuthChecksConfig(**modes)


def load(path: Path | str) -> Config:
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, "", f"cannot read: {e}") from None
    return loads(text, source=source, base_dir=p.resolve().parent)


def loads(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", f"not valid TOML: {e}") from None
    return from_dict(raw, source=source, base_dir=base_dir or Path.cwd())


# ---------------------------------------------------------------- [limits]


def _quota_from(table: Any, base: Quota, source: str, section: str) -> Quota:
    if not isinstance(table, dict):
        raise ConfigError(source, f"[{section}]", "must be a table")
    _check_keys(table, {f.name for f in fields(Quota)}, source, section)
    changes: dict[str, Any] = {}
    for k, v in table.items():
        key = f"[{section}] {k}"
        if k == "outcome":
            changes[k] = _choice(v, OUTCOMES, source, key)
        elif k == "outcomes":
            if not isinstance(v, dict):
                raise ConfigError(
                    source, key, 'must be a table { recipients_per_message = "defer" }'
                )
            pairs = []
            for limit, outcome in v.items():
                if limit not in LIMITS:
                    raise ConfigError(
                        source, f"{key}.{limit}", f"not a limit (limits: {', '.join(LIMITS)})"
                    )
                pairs.append((limit, _choice(outcome, OUTCOMES, source, f"{key}.{limit}")))
            # Overrides given here replace the default's per-limit outcomes for the same limits only.
            kept = tuple(p for p in base.outcomes if p[0] not in v)
            changes[k] = kept + tuple(pairs)
        else:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(source, key, f"expected a whole number (0 = no limit), got {v!r}")
            changes[k] = v
    # A quota-wide outcome given without per-limit outcomes applies to every limit.
    if "outcome" in changes and "outcomes" not in changes:
        changes["outcomes"] = ()
    return replace(base, **changes)


def parse_limits(table: Any, source: str) -> LimitsConfig:
    """`[limits]` from TOML; errors are `ConfigError` naming file, key and reason."""
    if not isinstance(table, dict):
        raise ConfigError(source, "[limits]", "must be a table")
    base = LimitsConfig()
    _check_keys(table, {f.name for f in fields(LimitsConfig)}, source, "limits")
    changes: dict[str, Any] = {}
    for k, v in table.items():
        key = f"[limits] {k}"
        if k in QUOTAS:
            changes[k] = _quota_from(v, getattr(base, k), source, f"limits.{k}")
        elif k == "users":
            if not isinstance(v, dict):
                raise ConfigError(source, key, 'must be a table: [limits.users."news@example.org"]')
            changes[k] = v  # resolved below, over the final [limits.user]
        elif k == "exempt":
            items = [v] if isinstance(v, str) else v
            if not isinstance(items, list):
                raise ConfigError(source, key, "expected a list of addresses or networks")
            changes[k] = tuple(parse_network(x, source, key) for x in items)
        elif k == "store":
            changes[k] = _choice(v, ("memory", "sqlite"), source, key)
        elif k in ("enabled", "notify_user"):
            if not isinstance(v, bool):
                raise ConfigError(source, key, f"expected true or false, got {v!r}")
            changes[k] = v
        elif k == "ipv6_prefix":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 128:
                raise ConfigError(source, key, f"expected a prefix length from 1 to 128, got {v!r}")
            changes[k] = v
        elif k in ("auth_failures", "auth_failures_address"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(source, key, f"expected a whole number of at least 1, got {v!r}")
            changes[k] = v
        else:
            changes[k] = parse_duration(v, source, key)
    user_base: Quota = changes.get(USER, base.user)
    users = changes.pop("users", {})
    overrides = []
    for login, sub in users.items():
        name = str(login).strip().lower()
        if "@" not in name:
            raise ConfigError(
                source, f"[limits.users.{login!r}]", "must be an address, e.g. news@example.org"
            )
        overrides.append((name, _quota_from(sub, user_base, source, f"limits.users.{login}")))
    changes["users"] = tuple(overrides)
    cfg = replace(base, **changes)
    if cfg.auth_delay_max < cfg.auth_delay:
        raise ConfigError(source, "[limits] auth_delay_max", "must not be smaller than auth_delay")
    return cfg


def from_dict(raw: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> Config:
    base_dir = base_dir or Path.cwd()
    _check_keys(raw, TOP_KEYS, source, "")

    def path_of(v: object, key: str) -> Path:
        s = _expect(v, str, source, key, "a path")
        q = Path(s).expanduser()
        return q if q.is_absolute() else (base_dir / q)

    hostname = normalize_domain(raw.get("hostname", "localhost.localdomain"), source, "hostname")
    data_dir = path_of(raw.get("data_dir", "postvakt-data"), "data_dir")
    mail_dir = path_of(raw["mail_dir"], "mail_dir") if "mail_dir" in raw else None
    queue_dir = path_of(raw["queue_dir"], "queue_dir") if "queue_dir" in raw else None

    lt = _table(raw, "listen", source)
    _check_keys(lt, {f.name for f in fields(ListenConfig)}, source, "listen")
    listen = ListenConfig(
        **{
            k: tuple(
                parse_hostport(x, source, f"[listen] {k}")
                for x in _list(v, source, f"[listen] {k}")
            )
            for k, v in lt.items()
            if k in LISTENER_KINDS
        },
        proxy_protocol=tuple(
            dict.fromkeys(
                cast(ListenerKind, _choice(x, LISTENER_KINDS, source, "[listen] proxy_protocol"))
                for x in _list(lt.get("proxy_protocol", []), source, "[listen] proxy_protocol")
            )
        ),
        proxy_trusted=tuple(
            parse_network(x, source, "[listen] proxy_trusted")
            for x in _list(lt.get("proxy_trusted", []), source, "[listen] proxy_trusted")
        ),
    )

    tt = _table(raw, "tls", source)
    _check_keys(tt, {"cert", "key", "names"}, source, "tls")
    tls = TLSConfig(
        cert=path_of(tt["cert"], "[tls] cert") if "cert" in tt else None,
        key=path_of(tt["key"], "[tls] key") if "key" in tt else None,
        names=tuple(
            dict.fromkeys(
                normalize_host(x, source, "[tls] names")
                for x in _list(tt.get("names", []), source, "[tls] names")
            )
        ),
    )
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(source, "[tls]", "give both cert and key, or neither")

    dt = _table(raw, "domains", source)
    _check_keys(dt, {"local", "relay"}, source, "domains")
    local = tuple(
        normalize_domain(d, source, "[domains] local")
        for d in _list(dt.get("local", []), source, "[domains] local")
    )
    relay_domains = tuple(
        normalize_domain(d, source, "[domains] relay")
        for d in _list(dt.get("relay", []), source, "[domains] relay")
    )
    for d in relay_domains:
        if d in local:
            raise ConfigError(source, "[domains] relay", f"{d!r} is also a local domain")
    domains = DomainsConfig(local=local, relay=relay_domains)

    rt = dict(_table(raw, "relay", source))
    _check_keys(rt, {f.name for f in fields(RelayConfig)}, source, "relay")
    rchanges: dict[str, Any] = {}
    for k in ("networks", "clients"):
        if k in rt:
            rchanges[k] = tuple(
                parse_network(x, source, f"[relay] {k}")
                for x in _list(rt.pop(k), source, f"[relay] {k}")
            )
    relay = _scalar_table(rt, RelayConfig(), source, "relay", durations=("pop_before_smtp",))
    relay = replace(relay, **rchanges)
    _choice(relay.grant_store, ("memory", "sqlite"), source, "[relay] grant_store")
    if not 400 <= relay.reject_code <= 599:
        raise ConfigError(source, "[relay] reject_code", "must be a 4xx or 5xx code")

    sender = _scalar_table(_table(raw, "sender", source), SenderConfig(), source, "sender")
    for k in (
        "authenticated",
        "unauthenticated_local",
        "header_from",
        "header_from_outside",
        "trusted",
    ):
        _choice(getattr(sender, k), SENDER_MODES, source, f"[sender] {k}")
    # "owner" needs a user behind the road: only a POP-before-SMTP grant names one.
    for k in ("networks", "clients"):
        _choice(getattr(sender, k), ("any", "domain"), source, f"[sender] {k}")
    _choice(sender.pop_before_smtp, TRUSTED_SENDER_MODES, source, "[sender] pop_before_smtp")

    smtp = _scalar_table(
        _table(raw, "smtp", source),
        SMTPConfig(),
        source,
        "smtp",
        durations=("idle_timeout", "error_sleep"),
    )

    dlt = dict(_table(raw, "delivery", source))
    _check_keys(dlt, {f.name for f in fields(DeliveryConfig)}, source, "delivery")
    dchanges: dict[str, Any] = {}
    if "smarthost" in dlt:
        sh = dlt.pop("smarthost")
        dchanges["smarthost"] = (
            parse_hostport(sh, source, "[delivery] smarthost", 25) if sh else None
        )
    if "routes" in dlt:
        routes = dlt.pop("routes")
        if not isinstance(routes, dict):
            raise ConfigError(
                source, "[delivery] routes", 'must be a table { "domain" = "host:port" }'
            )
        dchanges["routes"] = tuple(
            (
                normalize_domain(d, source, "[delivery] routes"),
                parse_hostport(hp, source, f"[delivery] routes.{d}", 25),
            )
            for d, hp in routes.items()
        )
    delivery = _scalar_table(
        dlt,
        DeliveryConfig(),
        source,
        "delivery",
        durations=("retry_initial", "retry_max", "give_up", "delay_warning", "connect_timeout"),
    )
    delivery = replace(delivery, **dchanges)
    _choice(delivery.tls, ("opportunistic", "none"), source, "[delivery] tls")

    pop3 = _scalar_table(
        _table(raw, "pop3", source),
        POP3Config(),
        source,
        "pop3",
        durations=("fail_delay", "fail_delay_max", "idle_timeout", "login_delay"),
    )
    _choice(pop3.plaintext, ("never", "networks", "always"), source, "[pop3] plaintext")

    limits = parse_limits(_table(raw, "limits", source), source)
    web = _parse_web(_table(raw, "web", source), source)

    dns = _parse_dns(_table(raw, "dns", source), source)
    dkim = _parse_dkim(_table(raw, "dkim", source), source, path_of)
    auth_checks = _parse_auth_checks(_table(raw, "auth_checks", source), source)
    server = _scalar_table(_table(raw, "server", source), ServerConfig(), source, "server")
    for k in ("user", "group"):
        if not _SYSTEM_NAME.match(getattr(server, k)):
            raise ConfigError(source, f"[server] {k}", "is not a user or group name")
    if not 1 <= server.workers <= MAX_WORKERS:
        raise ConfigError(source, "[server] workers", f"must be 1 to {MAX_WORKERS}")
    mt = _table(raw, "metrics", source)
    _check_keys(mt, {"listen"}, source, "metrics")
    metrics = MetricsConfig(
        listen=parse_hostport(mt["listen"], source, "[metrics] listen") if "listen" in mt else None
    )
    lgt = _table(raw, "log", source)
    _check_keys(lgt, {"format"}, source, "log")
    log = LogConfig(
        format=cast(
            LogFormat, _choice(lgt.get("format", "text"), LOG_FORMATS, source, "[log] format")
        )
    )

    store, notes = _parse_store(_table(raw, "store", source), raw, source)
    if server.workers > 1 and store.state == "memory":
        # "memory" state is one process's own: a grant or a counter seen by one
        # worker would not exist for the others.
        raise ConfigError(
            source,
            "[server] workers",
            f'{server.workers} workers need state every process shares: set [store] state = "sqlite"'
            ' (or "redis://…"); "memory" is one process\'s own',
        )

    postmaster = raw.get("postmaster", "")
    _expect(postmaster, str, source, "postmaster", "an address")
    log_level = _choice(
        raw.get("log_level", "info"), ("debug", "info", "warning", "error"), source, "log_level"
    )

    cfg = Config(
        hostname=hostname,
        data_dir=data_dir,
        mail_dir=mail_dir,
        queue_dir=queue_dir,
        listen=listen,
        tls=tls,
        domains=domains,
        relay=relay,
        sender=sender,
        smtp=smtp,
        delivery=delivery,
        pop3=pop3,
        limits=limits,
        dns=dns,
        dkim=dkim,
        auth_checks=auth_checks,
        web=web,
        server=server,
        metrics=metrics,
        log=log,
        store=store,
        notes=notes,
        postmaster=postmaster,
        log_level=log_level,
        source=source,
    )
    return cfg


def _parse_store(
    st: dict[str, Any], raw: dict[str, Any], source: str
) -> tuple[StoreConfig, tuple[str, ...]]:
    """`[store]`, and the old `[relay] grant_store` / `[limits] store` mapped onto it."""
    _check_keys(st, {f.name for f in fields(StoreConfig)}, source, "store")
    notes: list[str] = []
    state = st.get("state")
    old = {
        key: value
        for key, value in (
            ("[relay] grant_store", dict(raw.get("relay") or {}).get("grant_store")),
            ("[limits] store", dict(raw.get("limits") or {}).get("store")),
        )
        if value is not None
    }
    for key in old:
        notes.append(f"{source}: {key} is deprecated: use [store] state (see docs/deployment.md)")
    if state is None and old:
        # One state store serves both now; "sqlite" wins if either old key asked for it.
        state = "sqlite" if "sqlite" in old.values() else "memory"
    if state is None:
        state = StoreConfig.state
    _expect(state, str, source, "[store] state", 'a string ("sqlite", "memory" or "redis://…")')
    if state not in STATE_KINDS:
        _check_url(
            state,
            ("redis://", "rediss://"),
            source,
            "[store] state",
            'one of "sqlite", "memory" or a redis:// URL',
        )
    directory = st.get("directory", StoreConfig.directory)
    _expect(directory, str, source, "[store] directory", 'a string ("sqlite" or "postgresql://…")')
    if directory not in DIRECTORY_KINDS:
        _check_url(
            directory,
            ("postgresql://", "postgres://"),
            source,
            "[store] directory",
            '"sqlite" or a postgresql:// URL',
        )
    timeout = parse_duration(st.get("timeout", StoreConfig.timeout), source, "[store] timeout")
    if timeout <= 0:
        raise ConfigError(source, "[store] timeout", "must be more than 0")
    return StoreConfig(state=state, directory=directory, timeout=timeout), tuple(notes)


def _check_url(value: str, schemes: tuple[str, ...], source: str, key: str, what: str) -> None:
    if not value.startswith(schemes):
        raise ConfigError(source, key, f"{value!r} is not {what}")
    parsed = urllib.parse.urlsplit(value)
    try:
        _ = parsed.port
    except ValueError:
        raise ConfigError(source, key, f"{value!r}: the port is not a number") from None
    if not parsed.hostname and not parsed.path.strip("/"):
        raise ConfigError(source, key, f"{value!r} names no host")


def _parse_web(wt: dict[str, Any], source: str) -> WebConfig:
    _check_keys(wt, {f.name for f in fields(WebConfig)}, source, "web")
    listen = tuple(
        parse_hostport(x, source, "[web] listen")
        for x in _list(wt.get("listen", []), source, "[web] listen")
    )
    public_host = wt.get("public_host", "")
    if public_host != "":
        public_host = normalize_domain(public_host, source, "[web] public_host")
    trusted = tuple(
        parse_network(x, source, "[web] proxy_trusted")
        for x in _list(wt.get("proxy_trusted", []), source, "[web] proxy_trusted")
    )
    timeout = WebConfig.request_timeout
    if "request_timeout" in wt:
        timeout = parse_duration(wt["request_timeout"], source, "[web] request_timeout")
        if timeout <= 0:
            raise ConfigError(source, "[web] request_timeout", "must be more than 0")
    return WebConfig(
        listen=listen, public_host=public_host, proxy_trusted=trusted, request_timeout=timeout
    )


def embedded_default(cwd: Path | None = None) -> Config:
    """What `postvakt serve` runs with no config file: see DESIGN.md."""
    base = cwd or Path.cwd()
    return from_dict(
        {
            "hostname": "mail.example.test",
            "data_dir": "postvakt-data",
            "listen": {
                "smtp": ["127.0.0.1:2525"],
                "submission": ["127.0.0.1:2587"],
                "submissions": ["127.0.0.1:2465"],
                "pop3": ["127.0.0.1:2110"],
                "pop3s": ["127.0.0.1:2995"],
            },
            "domains": {"local": ["example.test"]},
            # A trial in the current directory on high ports, whoever starts it.
            "server": {"drop_privileges": False},
        },
        source="<embedded default>",
        base_dir=base,
    )


# Keys a running server cannot take over on SIGHUP: sockets already bound,
# files and stores already open, a user already dropped to. Everything else
# reloads (sessions in flight finish on the settings they started with).
RESTART_KEYS: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("data_dir", lambda c: c.data_dir),
    ("mail_dir", lambda c: c.mail_root),
    ("queue_dir", lambda c: c.queue_root),
    # Who may send a PROXY header is read at each connection: no restart needed.
    ("[listen]", lambda c: replace(c.listen, proxy_trusted=())),
    ("[web] listen", lambda c: c.web.listen),
    ("[metrics] listen", lambda c: c.metrics.listen),
    ("[log] format", lambda c: c.log.format),
    ("[server] user", lambda c: c.server.user),
    ("[server] group", lambda c: c.server.group),
    ("[server] drop_privileges", lambda c: c.server.drop_privileges),
    ("[server] workers", lambda c: c.server.workers),
    ("[server] max_connections", lambda c: c.server.max_connections),
    ("[store]", lambda c: c.store),
)


def restart_only_changes(old: Config, new: Config) -> tuple[str, ...]:
    """The keys whose change `new` asks for that only a restart can apply."""
    return tuple(name for name, get in RESTART_KEYS if get(old) != get(new))
