"""`postvakt explain`: what the server would decide, and why, without a session.

The admin names a client (address, login, port) and an envelope; explain
builds the same `Client` the live server builds (the grant comes from the
same store), runs the same policy functions, and prints every rule tried
with its outcome, then the replies the server would send. Nothing here
decides anything itself: the text is a rendering of the policy's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from postvakt.address import (
    NULL_PATH,
    Address,
    AddressError,
    parse_header_addresses,
    parse_path,
)
from postvakt.config import Config
from postvakt.directory import Directory
from postvakt.directory.rows import DirectoryUnavailable, SchemaError
from postvakt.mailauth.results import AuthResults
from postvakt.net import parse_ip
from postvakt.policy import Client, Decision, DirectoryView, Grant
from postvakt.policy.authchecks import check_authentication, not_checked
from postvakt.policy.limits import Usage, subject_for
from postvakt.policy.roads import each_road, first_open
from postvakt.policy.session import (
    Counted,
    HeaderAnswer,
    on_end_of_data,
    on_mail,
    on_rcpt,
)
from postvakt.policy.types import port_kind
from postvakt.smtp import header_section_of
from postvakt.store import StateUnavailable, list_counters, list_grants

if TYPE_CHECKING:
    from postvakt.mailauth.inbound import Judgement


class ExplainError(ValueError):
    """Input explain cannot judge (bad IP, bad address); the message is for the admin."""


class GrantLookup(Protocol):
    def lookup(self, ip: str, now: float) -> Grant | None: ...


@dataclass(frozen=True)
class Checked:
    """One command and the policy's decision on it."""

    command: str
    decision: Decision
    # False when the server would never get to ask (MAIL already refused).
    reached: bool = True


@dataclass(frozen=True)
class Explanation:
    client: Client
    checks: tuple[Checked, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return all(c.decision.accepted for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.accepted else 1


def client_ip_arg(text: str) -> str:
    """An address as typed: "192.0.2.7", "2001:db8::7", "[2001:db8::7]", "IPv6:2001:db8::7";
    IPv4-mapped IPv6 as the IPv4 address the server sees."""
    ip = parse_ip(text)
    if ip is None:
        raise ExplainError(f"--client: {text!r} is not an IP address")
    return str(ip)


def _address(value: Address | str, what: str, *, allow_null: bool, smtputf8: bool) -> Address:
    if isinstance(value, Address):
        return value
    text = value.strip()
    if allow_null and text in ("", "<>"):
        return NULL_PATH
    path = text if text.startswith("<") else f"<{text}>"
    try:
        return parse_path(path, smtputf8=smtputf8, allow_null=allow_null)
    except AddressError as e:
        raise ExplainError(
            f"{what}: {e.reply.text} (the server would answer {e.reply.code} {e.reply.enhanced})"
        ) from None


def _headers(
    header_from: str | Sequence[Address] | None,
    header_sender: str | None,
    message: bytes | None,
) -> tuple[tuple[tuple[str, str], ...], bool] | None:
    """The header fields the end of data would see, and whether they are all of them.

    `--header-from`/`--header-sender` as given (a value that does not parse is
    the admin's typo, a usage error); else the message's own header section,
    read by the same reader the live server uses. None: no end of data to judge.
    """
    if header_from is None and header_sender is None:
        return header_section_of(message) if message is not None else None
    fields: list[tuple[str, str]] = []
    for name, value in (("From", header_from), ("Sender", header_sender)):
        if isinstance(value, str):
            try:
                parse_header_addresses(value)
            except AddressError as e:
                raise ExplainError(f"--header-{name.lower()}: {e.reply.text}") from None
            fields.append((name, value))
        elif value is not None:
            fields.append((name, ", ".join(f"<{a}>" for a in value)))
    return tuple(fields), True


def _end_of_data_command(answer: HeaderAnswer) -> str:
    parts = []
    if answer.header_from:
        parts.append("From: " + ", ".join(str(a) for a in answer.header_from))
    if answer.header_sender:
        parts.append("Sender: " + ", ".join(str(a) for a in answer.header_sender))
    return "end of DATA, " + (", ".join(parts) if parts else "header section")


@dataclass(frozen=True)
class Question:
    """One imagined session: who the client is, what it sends, and when.

    `usage` is what the client's subject already sent in the current windows
    (from the counter store); the outbound limits judge MAIL and each RCPT.
    `helo` and `message` feed the SPF/DKIM/DMARC checks of `[auth_checks]`,
    which look up DNS (`[dns]`) as the live server does; the message's
    From: and Sender: feed the end-of-data header check.
    """

    client_ip: str
    now: float
    login: str | None = None
    port: str = "smtp"
    mail_from: Address | str = ""
    rcpts: Sequence[Address | str] = ()
    header_from: str | Sequence[Address] | None = None
    header_sender: str | None = None
    smtputf8: bool = False
    usage: Usage | None = None
    helo: str | None = None
    message: bytes | None = None


def run_explain(
    config: Config,
    directory: DirectoryView,
    grants_store: GrantLookup | None,
    *,
    client_ip: str,
    login: str | None = None,
    port: str = "smtp",
    mail_from: Address | str = "",
    rcpts: Sequence[Address | str] = (),
    header_from: str | Sequence[Address] | None = None,
    header_sender: str | None = None,
    now: float,
    smtputf8: bool = False,
    usage: Usage | None = None,
    helo: str | None = None,
    message: bytes | None = None,
) -> Explanation:
    """Run the live server's policy for one imagined session (see `Question`)."""
    question = Question(
        client_ip=client_ip,
        now=now,
        login=login,
        port=port,
        mail_from=mail_from,
        rcpts=rcpts,
        header_from=header_from,
        header_sender=header_sender,
        smtputf8=smtputf8,
        usage=usage,
        helo=helo,
        message=message,
    )
    return ask(config, directory, grants_store, question)


def _imagined_client(q: Question, grants_store: GrantLookup | None) -> Client:
    """The `Client` the live server would build for this question."""
    try:
        kind = port_kind(q.port)
    except ValueError as e:
        raise ExplainError(f"--port: {e}") from None
    ip = client_ip_arg(q.client_ip)
    return Client(
        ip=ip,
        port=kind,
        # On 587 AUTH needs STARTTLS first; on 465 TLS is implicit; on 25 assume plain.
        tls=kind == "submissions" or (kind == "submission" and q.login is not None),
        login=q.login,
        grant=grants_store.lookup(ip, q.now) if grants_store is not None else None,
        now=q.now,
    )


def ask(
    config: Config, directory: DirectoryView, grants_store: GrantLookup | None, q: Question
) -> Explanation:
    """Every stage of the transaction through `policy.session`, as the live server runs it."""
    client = _imagined_client(q, grants_store)
    sender = _address(q.mail_from, "--from", allow_null=True, smtputf8=q.smtputf8)
    recipients = [_address(r, "--to", allow_null=False, smtputf8=q.smtputf8) for r in q.rcpts]
    headers = _headers(q.header_from, q.header_sender, q.message)
    limited = subject_for(client, config.limits, config.relay.networks, config.relay.clients)
    counted = Counted(limited, q.usage if q.usage is not None else Usage())

    def counts() -> Counted:
        return counted

    mail = on_mail(client, sender, config, directory, counts).decision
    checks = [Checked(f"MAIL FROM:<{sender}>", mail)]
    in_message = 0
    for rcpt in recipients:
        decision = on_rcpt(client, rcpt, config, directory, counts, in_message).decision
        in_message += decision.accepted
        checks.append(Checked(f"RCPT TO:<{rcpt}>", decision, mail.accepted))
    # The server reads a message only after MAIL and at least one RCPT were taken.
    data = mail.accepted and (in_message > 0 or not recipients)
    header: HeaderAnswer | None = None
    if headers is not None:
        header = on_end_of_data(client, headers[0], headers[1], config, directory)
        checks.append(Checked(_end_of_data_command(header), header.decision, data))
    notes: list[str] = []
    if q.helo is not None or q.message is not None or config.auth_checks.enabled:
        if header is None and q.message is not None:
            from postvakt.mailauth.signing import from_domains  # dkimpy: see _authentication

            domains = tuple(from_domains(q.message))
        else:
            found = header.header_from if header else ()
            domains = tuple(a.domain.lower() for a in found if a.domain)
        decision, notes = _authentication(config, client, sender, q.helo or "", q.message, domains)
        # The live server checks only a message whose header section it took.
        data = data and (header is None or header.decision.accepted)
        checks.append(Checked("end of DATA, authentication (SPF, DKIM, DMARC)", decision, data))
    return Explanation(client, tuple(checks), tuple(notes))


def _authentication(
    config: Config,
    client: Client,
    sender: Address,
    helo: str,
    message: bytes | None,
    domains: tuple[str, ...],
) -> tuple[Decision, list[str]]:
    """The live server's checks on mail from outside, with real DNS lookups."""
    road = first_open(each_road(client, config))
    if client.port != "smtp":
        return not_checked(f"port {client.port}: only mail from outside on port 25 is checked"), []
    if road is not None:
        return not_checked(f"the client came by {road.rule}: our own mail is not checked"), []
    if not config.auth_checks.enabled:
        return check_authentication(AuthResults(), config.auth_checks), []
    # The checks' stack (dkimpy, PyNaCl, dnspython: ~100 modules, ~3 MB) is imported only
    # when they run, as the live server does: `postvakt serve` registers this command too.
    from postvakt.dnsclient import client_for
    from postvakt.mailauth.inbound import Inbound, judge

    inbound = Inbound(
        ip=client.ip,
        helo=helo,
        mail_from="" if sender.is_null else str(sender),
        message=message,
        from_domains=domains,
    )
    judgement = _run(judge(client_for(config.dns), config, inbound))
    notes = [f"the message would get: {judgement.header}"]
    if message is None:
        notes.append("no --message: DKIM and DMARC need the message and were not checked")
    if not helo:
        notes.append("no --helo: the HELO name was not checked")
    return judgement.decision, notes


def _run(coro: Coroutine[Any, Any, Judgement]) -> Judgement:
    """Run a lookup coroutine from this synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _describe_client(client: Client, config: Config) -> str:
    parts = [f"client {client.ip} on port {client.port}"]
    parts.append("with TLS" if client.tls else "without TLS")
    parts.append(f"logged in as {client.login}" if client.login else "not logged in")
    if client.grant is not None:
        left = client.grant.expires - client.now
        parts.append(
            f"{client.grant.login_kind} by {client.grant.login}"
            f" (grant valid {max(0, int(left))} s more)"
        )
    elif config.relay.pop_before_smtp > 0:
        parts.append("no POP3 login grant")
    return ", ".join(parts)


def render_text(exp: Explanation, config: Config, notes: Sequence[str] = ()) -> str:
    lines = [_describe_client(exp.client, config)]
    lines.extend(f"note: {n}" for n in (*exp.notes, *notes))
    width = max((len(s.rule) for c in exp.checks for s in c.decision.trace), default=0)
    rwidth = max((len(s.result) for c in exp.checks for s in c.decision.trace), default=0)
    for check in exp.checks:
        lines.append("")
        lines.append(check.command)
        for step in check.decision.trace:
            lines.append(f"  {step.rule:<{width}}  {step.result:<{rwidth}}  {step.detail}")
        lines.append(f"  => {check.decision.verdict.value.upper()} by {check.decision.rule}")
    lines.append("")
    lines.append("The server would reply:")
    for check in exp.checks:
        lines.append(f"  C: {check.command}")
        if not check.reached:
            lines.append("     (not reached: an earlier command was refused)")
            continue
        for reply_line in check.decision.reply.lines():
            lines.append(f"  S: {reply_line}")
    lines.append("")
    lines.append("result: accepted" if exp.accepted else "result: refused")
    return "\n".join(lines) + "\n"


def _decision_dict(check: Checked) -> dict[str, Any]:
    d = check.decision
    return {
        "command": check.command,
        "reached": check.reached,
        "verdict": d.verdict.value,
        "rule": d.rule,
        "reply": d.reply.lines(),
        "trace": [{"rule": s.rule, "result": s.result, "detail": s.detail} for s in d.trace],
    }


def render_json(exp: Explanation, notes: Sequence[str] = ()) -> dict[str, Any]:
    c = exp.client
    grant = (
        None
        if c.grant is None
        else {
            "ip": c.grant.ip,
            "protocol": c.grant.protocol,
            "login": c.grant.login,
            "expires": c.grant.expires,
        }
    )
    return {
        "client": {
            "ip": c.ip,
            "port": c.port,
            "tls": c.tls,
            "login": c.login,
            "grant": grant,
            "now": c.now,
        },
        "checks": [_decision_dict(check) for check in exp.checks],
        "notes": [*exp.notes, *notes],
        "accepted": exp.accepted,
        "exit_code": exp.exit_code,
    }


def explain_text(
    config: Config, directory: DirectoryView, grants_store: GrantLookup | None, **question: Any
) -> tuple[str, int]:
    """Every rule tried, then the replies; exit code 0 if everything is accepted, else 1.

    The keywords are the fields of `Question`."""
    exp = ask(config, directory, grants_store, Question(**question))
    return render_text(exp, config), exp.exit_code


def explain_json(
    config: Config, directory: DirectoryView, grants_store: GrantLookup | None, **question: Any
) -> dict[str, Any]:
    """The same as `explain_text`, as data (for scripts and CI)."""
    return render_json(ask(config, directory, grants_store, Question(**question)))


# ---------------------------------------------------------------- what the command reads


class _NoUsers:
    """Directory view before any user exists: nothing local exists, nobody owns anything."""

    def recipient_exists(self, address: str) -> bool:
        return address.lower() == "postmaster" or address.lower().startswith("postmaster@")

    def may_send_as(self, login: str, address: str) -> bool:
        return login.lower() == address.lower()


@dataclass
class _GrantList:
    grants: list[Grant]

    def lookup(self, ip: str, now: float) -> Grant | None:
        for g in self.grants:
            if g.ip == ip and g.expires > now:
                return g
        return None


def open_directory(config: Config) -> tuple[DirectoryView, Any, list[str]]:
    """The real directory when it exists; explain never creates one."""
    if config.store.directory_kind == "postgresql":
        try:
            d = Directory.for_config(config)
        except (DirectoryUnavailable, SchemaError) as e:
            note = f"{e}: local recipients are unknown, senders own only themselves"
            return _NoUsers(), None, [note]
        return d, d, []
    path = config.data_dir / "directory.sqlite3"
    if not path.exists():
        note = (
            f"no user database at {path}: local recipients are unknown, senders own only themselves"
        )
        return _NoUsers(), None, [note]
    d = Directory.for_config(config)
    return d, d, []


def open_grants(
    config: Config, ip: str, pop_login: str | None, now: float
) -> tuple[GrantLookup, list[str]]:
    notes: list[str] = []
    grants: list[Grant] = []
    if pop_login is not None:
        expires = now + config.relay.pop_before_smtp
        grants.append(Grant(ip, pop_login, expires))
        notes.append(f"assuming {pop_login} logged in to POP3 from {ip} just now")
        return _GrantList(grants), notes
    kind = config.store.state_kind
    store_file = Path(config.data_dir) / ("grants.sqlite3" if kind == "sqlite" else "grants.json")
    if kind == "redis" or store_file.exists():
        try:
            grants = list_grants(config, now)
        except StateUnavailable as e:
            notes.append(f"{e}: no grant could be read (the server would refuse this road too)")
    return _GrantList(grants), notes


def limit_usage(config: Config, ip: str, login: str | None, now: float) -> Usage:
    """What the client's subject sent in the current windows, as `limits show` sees it."""
    subject = subject_for(
        Client(ip=ip, login=login), config.limits, config.relay.networks, any_road=True
    )
    if subject is None:
        return Usage()
    try:
        found = {u.subject: u.usage for u in list_counters(config, now)}
    except StateUnavailable:
        return Usage()
    return found.get(subject.counter_key, Usage())


def canonical_login(text: str) -> str:
    """The login as the directory reports it after a successful AUTH (lower case)."""
    try:
        return str(parse_path(f"<{text.strip().strip('<>')}>", smtputf8=True)).lower()
    except AddressError as e:
        raise ExplainError(f"--auth/--pop-login: {e.reply.text}") from None
