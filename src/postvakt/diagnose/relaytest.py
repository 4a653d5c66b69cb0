"""`postvakt relaytest`: the open-relay battery, against any server you run.

Rules of the house:
- Every attempt is its own connection (so one refusal's error counter or
  tar-pit cannot hide the next trick) and stops after RCPT: RSET, QUIT.
  The client cannot send DATA (client.py), so nothing is ever relayed.
- The battery is a table: trick id (robustness anchors §2: R1-R18, S3),
  MAIL path, RCPT path, and what acceptance means:
    "foreign"   - the correct reading is another domain: accepted = open relay;
    "local"     - the correct reading is our domain: accepted is expected;
    "ambiguous" - local under a literal reading, foreign if the server treats
                  % or ! as routing: accepted = warning, not proof.
- The control (a stranger's mail to postmaster@OUR_DOMAIN) must be accepted,
  or nothing can be concluded: a server that refuses everyone from here
  passes every trick without proving anything.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

from postvakt.diagnose import catalogue
from postvakt.diagnose.client import DEFAULT_TIMEOUT, ProbeError, SMTPProbe, Transcript

FOREIGN = "foreign"
LOCAL = "local"
AMBIGUOUS = "ambiguous"

# Outcomes of one trick.
REFUSED = "refused"
RELAYED = "relayed"
LOCAL_OK = "local_ok"
ACCEPTED_AMBIGUOUS = "ambiguous"
ERROR = "error"

# Exit codes: 0 closed, 1 open relay, 2 inconclusive.
EXIT_CLOSED = 0
EXIT_OPEN = 1
EXIT_INCONCLUSIVE = 2


@dataclass(frozen=True)
class Trick:
    id: str
    mail: str  # the path exactly as sent after "MAIL FROM:"
    rcpts: tuple[str, ...]  # paths after "RCPT TO:"; the last one is judged
    meaning: str  # FOREIGN | LOCAL | AMBIGUOUS
    mark: str = ""  # the routing character for AMBIGUOUS ("%" or "!")


@dataclass(frozen=True)
class RelayTestOptions:
    host: str
    port: int
    domain: str
    local_user: str = "postmaster"
    foreign_domain: str = "relaytest.example"
    server_ip: str | None = None
    source: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def battery(
    domain: str, foreign: str, ip: str, hostname: str, local_user: str = "postmaster"
) -> tuple[Trick, ...]:
    """The tricks of robustness anchors §2, for one server. L = domain, X = foreign."""
    L, X, H = domain, foreign, hostname
    lit = f"[{ip}]" if ":" not in ip else f"[IPv6:{ip}]"
    u = local_user
    stranger = f"<spam@{X}>"
    return (
        Trick("R1", stranger, (f"<v@{X}>",), FOREIGN),
        Trick("R2", "<>", (f"<v@{X}>",), FOREIGN),
        Trick("R3-local-sender", f"<postmaster@{L}>", (f"<v@{X}>",), FOREIGN),
        Trick("R3-host-sender", f"<{u}@{H}>", (f"<v@{X}>",), FOREIGN),
        Trick("R4", f"<{u}@{lit}>", (f"<v@{X}>",), FOREIGN),
        Trick("R5-percent", stranger, (f"<v%{X}@{L}>",), AMBIGUOUS, "%"),
        Trick("R5-percent-literal", stranger, (f"<v%{X}@{lit}>",), AMBIGUOUS, "%"),
        Trick("R6-bang", stranger, (f"<{X}!v@{L}>",), AMBIGUOUS, "!"),
        Trick("R6-bang-literal", stranger, (f"<{X}!v@{lit}>",), AMBIGUOUS, "!"),
        Trick("R6-bang-bare", stranger, (f"<{X}!v>",), AMBIGUOUS, "!"),
        Trick("R7-quoted", stranger, (f'<"v@{X}"@{L}>',), FOREIGN),
        Trick("R7-quoted-literal", stranger, (f'<"v@{X}"@{lit}>',), FOREIGN),
        Trick("R8-quoted-bare", stranger, (f'<"v@{X}">',), FOREIGN),
        Trick("R8-quoted-percent", stranger, (f'<"v%{X}">',), FOREIGN),
        Trick("R9-double-at", stranger, (f"<v@{X}@{L}>",), FOREIGN),
        Trick("R9-double-at-literal", stranger, (f"<v@{X}@{lit}>",), FOREIGN),
        Trick("R9-double-at-host", stranger, (f"<v@{X}@{H}>",), FOREIGN),
        Trick("R10-source-route", stranger, (f"<@{L}:v@{X}>",), FOREIGN),
        Trick("R10-source-route-literal", stranger, (f"<@{lit}:v@{X}>",), FOREIGN),
        Trick("R11-route-to-local", stranger, (f"<@{X}:{u}@{L}>",), LOCAL),
        Trick("R12-trailing-dot", stranger, (f"<v@{X}.>",), FOREIGN),
        Trick("R12-case", stranger, (f"<v@{X.upper()}>",), FOREIGN),
        Trick("R13-local-case-dot", stranger, (f"<{u}@{L.upper()}.>",), LOCAL),
        Trick("R14-prefix", stranger, (f"<v@evil{L}>",), FOREIGN),
        Trick("R14-suffix", stranger, (f"<v@{L}.{X}>",), FOREIGN),
        Trick("R14-subdomain", stranger, (f"<v@sub.{L}>",), FOREIGN),
        # TEST-NET-1 (RFC 5737): an address literal that can be no one's.
        Trick("R15-ipv4-literal", stranger, ("<v@[192.0.2.1]>",), FOREIGN),
        Trick("R15-ipv6-literal", stranger, ("<v@[IPv6:2001:db8::1]>",), FOREIGN),
        Trick("R15-bare-ip", stranger, ("<v@192.0.2.1>",), FOREIGN),
        Trick("R16-unqualified", stranger, ("<v>",), LOCAL),
        Trick("R17-nul", stranger, (f"<{u}@{L}\x00@{X}>",), FOREIGN),
        Trick("R17-cr", stranger, (f"<v@{X}\r>",), FOREIGN),
        Trick("R18-8bit-no-smtputf8", stranger, (f"<v@exämple.{X}>",), FOREIGN),
        Trick("R19-local-then-foreign", stranger, (f"<{u}@{L}>", f"<v@{X}>"), FOREIGN),
        Trick("S3-auth-param", f"<x@{X}> AUTH=<{u}@{L}>", (f"<v@{X}>",), FOREIGN),
    )


@dataclass(frozen=True)
class TrickResult:
    trick: Trick
    outcome: str
    reply: str
    stage: str
    transcript: tuple[str, ...] = ()


@dataclass
class RelayReport:
    target: str
    source: str
    control: TrickResult | None
    results: list[TrickResult] = field(default_factory=list)
    error: str = ""

    @property
    def relayed(self) -> list[TrickResult]:
        return [r for r in self.results if r.outcome == RELAYED]

    @property
    def ambiguous(self) -> list[TrickResult]:
        return [r for r in self.results if r.outcome == ACCEPTED_AMBIGUOUS]

    @property
    def inconclusive(self) -> str:
        if self.error:
            return self.error
        if self.control is None or self.control.outcome != LOCAL_OK:
            reply = self.control.reply if self.control else ""
            return f"the control (a stranger's mail to our own domain) was not accepted: {reply}"
        return ""

    @property
    def exit_code(self) -> int:
        if self.relayed:
            return EXIT_OPEN
        if self.inconclusive:
            return EXIT_INCONCLUSIVE
        return EXIT_CLOSED

    def to_text(self, lang: str) -> str:
        lab = catalogue.label
        out = [lab("relay_title", lang, server=self.target, source=self.source or "-"), ""]
        rows = ([self.control] if self.control else []) + self.results
        width = max((len(r.trick.id) for r in rows), default=10)
        for r in rows:
            rcpt = " ".join(_show(p) for p in r.trick.rcpts)
            verdict = {
                REFUSED: lab("relay_refused", lang),
                RELAYED: lab("relay_accepted", lang),
                LOCAL_OK: lab("relay_local_ok", lang),
                ACCEPTED_AMBIGUOUS: lab("relay_ambiguous", lang, mark=r.trick.mark),
                ERROR: lab("relay_error", lang, detail=r.reply),
            }[r.outcome]
            mark = (
                "!!"
                if r.outcome == RELAYED
                else ("! " if r.outcome == ACCEPTED_AMBIGUOUS else "  ")
            )
            out.append(
                f"{mark} {r.trick.id:<{width}}  MAIL FROM:{_show(r.trick.mail)}  RCPT TO:{rcpt}"
            )
            reply = f"  [{r.stage}] {r.reply}" if r.reply and r.outcome != ERROR else ""
            out.append(f"   {'':<{width}}  -> {verdict}{reply}")
        out.append("")
        total = len(self.results)
        if self.relayed:
            out.append(lab("relay_summary_open", lang, count=len(self.relayed), total=total))
        elif self.inconclusive:
            out.append(lab("relay_inconclusive", lang, detail=self.inconclusive))
        else:
            out.append(lab("relay_summary_closed", lang, total=total))
        if self.ambiguous:
            out.append(lab("relay_ambiguous_summary", lang, count=len(self.ambiguous)))
        return "\n".join(out) + "\n"

    def to_json(self) -> str:
        def one(r: TrickResult) -> dict[str, Any]:
            return {
                "id": r.trick.id,
                "mail": r.trick.mail,
                "rcpt": list(r.trick.rcpts),
                "meaning": r.trick.meaning,
                "outcome": r.outcome,
                "stage": r.stage,
                "reply": r.reply,
                "transcript": list(r.transcript),
            }

        return json.dumps(
            {
                "target": self.target,
                "source": self.source,
                "open_relay": bool(self.relayed),
                "inconclusive": self.inconclusive,
                "exit_code": self.exit_code,
                "control": one(self.control) if self.control else None,
                "relayed": [r.trick.id for r in self.relayed],
                "ambiguous": [r.trick.id for r in self.ambiguous],
                "results": [one(r) for r in self.results],
            },
            indent=2,
            ensure_ascii=False,
        )


def _show(path: str) -> str:
    return (
        path.encode("unicode_escape").decode("ascii")
        if any(c in path for c in "\x00\r\n")
        else path
    )


def _one_line(code: int, enhanced: str, text: str) -> str:
    return " ".join(x for x in (str(code), enhanced, " ".join(text.split("\n"))) if x)


def run_trick(opts: RelayTestOptions, trick: Trick) -> TrickResult:
    t = Transcript()
    c = SMTPProbe(
        opts.host,
        opts.port,
        source=opts.source,
        timeout=opts.timeout,
        transcript=t,
        allow_bare_cr=True,
    )
    stage = "connect"
    try:
        banner = c.connect()
        stage = "banner"
        if banner.code != 220:
            return TrickResult(
                trick,
                REFUSED,
                _one_line(banner.code, banner.enhanced, banner.text),
                stage,
                tuple(t.lines),
            )
        stage = "ehlo"
        r = c.ehlo("relaytest.postvakt.invalid")
        if r.code != 250:
            r = c.command("HELO relaytest.postvakt.invalid")
            if r.code != 250:
                return TrickResult(
                    trick, REFUSED, _one_line(r.code, r.enhanced, r.text), stage, tuple(t.lines)
                )
        stage = "mail"
        r = c.mail_raw(trick.mail)
        if r.code != 250:
            return TrickResult(
                trick, REFUSED, _one_line(r.code, r.enhanced, r.text), stage, tuple(t.lines)
            )
        stage = "rcpt"
        for path in trick.rcpts:
            r = c.rcpt_raw(path)
        ok = 200 <= r.code < 300
        outcome = REFUSED
        if ok:
            outcome = {FOREIGN: RELAYED, LOCAL: LOCAL_OK, AMBIGUOUS: ACCEPTED_AMBIGUOUS}[
                trick.meaning
            ]
        try:
            c.rset()
        except ProbeError:
            pass
        return TrickResult(
            trick, outcome, _one_line(r.code, r.enhanced, r.text), stage, tuple(t.lines)
        )
    except ProbeError as e:
        # A server that hangs up on a trick has refused it; one that cannot be reached is an error.
        outcome = REFUSED if (e.kind == "closed" and stage != "connect") else ERROR
        return TrickResult(trick, outcome, f"{e.kind}: {e.detail}", stage, tuple(t.lines))
    finally:
        c.close()


def _server_identity(opts: RelayTestOptions) -> tuple[str, str]:
    """The server's IP (for [IP] literals) and the name it greets with (for user@H)."""
    ip = opts.server_ip
    if ip is None:
        try:
            ip = str(socket.getaddrinfo(opts.host, opts.port, proto=socket.IPPROTO_TCP)[0][4][0])
        except OSError as e:
            raise ProbeError("dns", str(e)) from None
    c = SMTPProbe(opts.host, opts.port, source=opts.source, timeout=opts.timeout)
    try:
        c.connect()
        r = c.ehlo("relaytest.postvakt.invalid")
        name = r.text.split("\n")[0].split(" ")[0] if r.code == 250 else ""
    finally:
        c.close()
    return ip, (name or opts.host).rstrip(".").lower()


def run_relaytest(opts: RelayTestOptions) -> RelayReport:
    target = f"{opts.host}:{opts.port}"
    try:
        ip, hostname = _server_identity(opts)
    except ProbeError as e:
        return RelayReport(target, opts.source or "", None, error=f"{e.kind}: {e.detail}")
    control = run_trick(
        opts,
        Trick(
            "control",
            f"<spam@{opts.foreign_domain}>",
            (f"<{opts.local_user}@{opts.domain}>",),
            LOCAL,
        ),
    )
    report = RelayReport(target, opts.source or "", control)
    for trick in battery(opts.domain, opts.foreign_domain, ip, hostname, opts.local_user):
        report.results.append(run_trick(opts, trick))
    return report
