"""`postvakt doctor`: probe a mail server like a careful mail client, name the case.

Rules of the house:
- Never send a message: the client in client.py cannot say DATA; every
  attempt stops after RCPT and says RSET/QUIT.
- First the attempt "as configured" (the user's port, security and login
  setting); its answer decides the exit code, and only a retry of that very
  attempt after a POP3 login (POP-before-SMTP) can turn it into an accept.
  Every other probe (the port survey, the certificate, the other ports with
  login) only explains and finds the fix.
- The case is chosen from the stage where the attempt stopped and the kind of
  reply (classify.py), in one table, `CASE_TABLE`; first match wins.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvakt.config import HostPort
from postvakt.diagnose import catalogue
from postvakt.diagnose import classify as k
from postvakt.diagnose.client import (
    DEFAULT_TIMEOUT,
    CertInfo,
    POP3Probe,
    ProbeError,
    SMTPProbe,
    Transcript,
    check_certificate,
)
from postvakt.diagnose.result import (
    EXIT_ACCEPTED,
    EXIT_REFUSED,
    Diagnosis,
    Finding,
    Probe,
)

# The standard ports (RFC 5321 §4.5.4 / RFC 6409 / RFC 8314); `--ports` overrides.
STANDARD_PORTS = {"smtp": 25, "submission": 587, "submissions": 465}
POP3_PORT = 110
POP3S_PORT = 995
# A certificate closer to expiry than this gets a warning (Let's Encrypt renews at 30 days left).
CERT_WARN_DAYS = 21
SECURITIES = ("auto", "none", "starttls", "ssl")


@dataclass(frozen=True)
class DoctorOptions:
    host: str
    port: int
    sender: str
    rcpt: str
    login: str | None = None
    password: str | None = None
    smtp_auth: bool | None = None  # None: log in when a login is given
    security: str = "auto"
    pop3_host: str | None = None
    pop3_port: int = POP3_PORT
    pop3_security: str = "auto"
    ports: dict[str, int] = field(default_factory=lambda: dict(STANDARD_PORTS))
    source: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    tls_name: str | None = None
    cafile: Path | None = None

    @property
    def use_login(self) -> bool:
        if self.login is None or self.password is None:
            return False
        return True if self.smtp_auth is None else self.smtp_auth

    @property
    def server_name(self) -> str:
        return self.tls_name or self.host

    def security_for(self, port: int) -> str:
        if self.security != "auto":
            return self.security
        if port == self.ports.get("submissions") or port == 465:
            return "ssl"
        return "auto"  # STARTTLS when offered


@dataclass
class Attempt:
    """One SMTP conversation up to RCPT; what happened and where it stopped."""

    port: int
    security: str
    login: str | None
    stage: str = "connect"
    outcome: str = ""
    reply: str = ""
    reply_code: int = 0
    detail: str = ""
    caps_plain: dict[str, str] = field(default_factory=dict)
    caps_tls: dict[str, str] | None = None
    tls_version: str = ""
    used_tls: bool = False
    peer_der: bytes | None = None
    transcript: Transcript = field(default_factory=Transcript)

    @property
    def accepted(self) -> bool:
        return self.outcome == k.ACCEPTED and self.stage == "rcpt"

    def mechs_plain(self) -> tuple[str, ...]:
        return tuple(self.caps_plain.get("AUTH", "").upper().split())

    def mechs_tls(self) -> tuple[str, ...]:
        return tuple((self.caps_tls or {}).get("AUTH", "").upper().split())

    def probe(self, name: str, host: str) -> Probe:
        sec = "ssl" if self.security == "ssl" else ("starttls" if self.used_tls else "none")
        return Probe(
            name=name,
            host=host,
            port=self.port,
            security=sec,
            login=self.login,
            outcome=self.outcome,
            stage=self.stage,
            reply=self.reply,
            transcript=tuple(self.transcript.lines),
        )


def _one_line(reply_text: str, code: int, enhanced: str) -> str:
    head = f"{code} {enhanced}".strip()
    return f"{head} {' '.join(reply_text.split(chr(10)))}".strip()


def run_attempt(
    opts: DoctorOptions,
    port: int,
    security: str,
    *,
    login: bool,
    envelope: bool = True,
) -> Attempt:
    """Connect, EHLO, STARTTLS (per `security`), AUTH (if `login`), MAIL, RCPT; then RSET/QUIT.

    With `envelope=False` it stops after EHLO (and STARTTLS/EHLO): a survey of the port.
    """
    a = Attempt(port=port, security=security, login=opts.login if login else None)
    client = SMTPProbe(
        opts.host,
        port,
        source=opts.source,
        timeout=opts.timeout,
        implicit_tls=(security == "ssl"),
        server_name=opts.server_name,
        transcript=a.transcript,
    )

    def stop(stage: str, reply: Any, kind: str | None = None) -> Attempt:
        a.stage = stage
        a.reply = _one_line(reply.text, reply.code, reply.enhanced)
        a.reply_code = reply.code
        a.outcome = kind or k.classify(reply.code, reply.enhanced, reply.text, stage.upper())
        return a

    try:
        try:
            banner = client.connect()
        except ProbeError as e:
            a.stage = "connect" if client.conn is None else "banner"
            a.outcome = "no_banner" if (e.kind == "timeout" and client.conn is not None) else e.kind
            a.detail = e.detail
            return a
        if security == "ssl":
            a.used_tls = True
            a.tls_version = _tls_version(client)
        if banner.code != 220:
            return stop("banner", banner, "banner_rejected")
        a.stage = "ehlo"
        r = client.ehlo()
        if r.code != 250:
            r = client.command("HELO doctor.postvakt.invalid")
            if r.code != 250:
                return stop("ehlo", r)
        if security == "ssl":
            a.caps_tls = dict(client.capabilities)
        else:
            a.caps_plain = dict(client.capabilities)
        wants_tls = security == "starttls" or (
            security == "auto" and "STARTTLS" in client.capabilities
        )
        if security != "ssl" and wants_tls:
            if "STARTTLS" not in client.capabilities:
                a.stage, a.outcome = "starttls", "starttls_unavailable"
                a.detail = "STARTTLS not offered"
                return a
            a.stage = "starttls"
            try:
                r = client.starttls()
            except ProbeError as e:
                a.stage, a.outcome, a.detail = "starttls", "tls", e.detail
                return a
            if r.code != 220:
                return stop("starttls", r, "tls")
            a.used_tls = True
            a.tls_version = _tls_version(client)
            a.stage = "ehlo"
            r = client.ehlo()
            if r.code != 250:
                return stop("ehlo", r)
            a.caps_tls = dict(client.capabilities)
        if not envelope:
            a.stage, a.outcome = "ehlo", k.ACCEPTED
            return a
        if login:
            assert opts.login is not None and opts.password is not None
            a.stage = "auth"
            r = client.auth(opts.login, opts.password)
            if r.code != 235:
                mechs = client.auth_mechanisms
                kind = k.classify(r.code, r.enhanced, r.text, "AUTH")
                if (
                    not mechs
                    and r.code in (500, 502, 503, 504)
                    and kind not in (k.AUTH_REQUIRES_TLS, k.TLS_REQUIRED)
                ):
                    kind = "auth_unavailable"
                return stop("auth", r, kind)
        a.stage = "mail"
        r = client.mail(opts.sender)
        if r.code != 250:
            return stop("mail", r)
        a.stage = "rcpt"
        r = client.rcpt(opts.rcpt)
        stop("rcpt", r)
        try:
            client.rset()
        except ProbeError:
            pass
        return a
    except ProbeError as e:
        a.outcome, a.detail = e.kind, e.detail
        if not a.reply:
            a.reply = e.detail
        return a
    finally:
        a.peer_der = client.peer_der
        client.close()


def _tls_version(client: SMTPProbe) -> str:
    sock = client.conn.sock if client.conn else None
    version = getattr(sock, "version", None)
    return str(version()) if callable(version) else ""


def pop3_login(opts: DoctorOptions) -> tuple[bool, Probe, str]:
    """Log in to the POP3 server from the same source address; (ok, probe, reply)."""
    assert opts.pop3_host is not None and opts.login is not None and opts.password is not None
    t = Transcript()
    sec = opts.pop3_security
    if sec == "auto":
        sec = "ssl" if opts.pop3_port == POP3S_PORT else "auto"
    client = POP3Probe(
        opts.pop3_host,
        opts.pop3_port,
        source=opts.source,
        timeout=opts.timeout,
        implicit_tls=(sec == "ssl"),
        server_name=opts.tls_name or opts.pop3_host,
        transcript=t,
    )
    ok = False
    reply = ""
    outcome = "auth_failed"
    try:
        greeting = client.connect()
        if not greeting.startswith("+OK"):
            reply, outcome = greeting, "banner_rejected"
        else:
            client.capa()
            if sec in ("auto", "starttls") and "STLS" in client.capabilities:
                status = client.stls()
                if status.startswith("+OK"):
                    client.capa()
            reply = client.login(opts.login, opts.password)
            ok = reply.startswith("+OK")
            outcome = k.ACCEPTED if ok else "auth_failed"
    except ProbeError as e:
        reply, outcome = e.detail, e.kind
    finally:
        client.close()
    security = "ssl" if sec == "ssl" else ("starttls" if "STLS" in client.capabilities else "none")
    probe = Probe(
        "pop3_login",
        opts.pop3_host,
        opts.pop3_port,
        security,
        opts.login,
        outcome,
        "pop3",
        reply,
        tuple(t.lines),
    )
    return ok, probe, reply


# ---------------------------------------------------------------- the case


ANY = "*"
EARLY = frozenset({"connect", "banner"})
AUTH_STAGE = frozenset({"auth"})

# (stages, outcome, logged in?) -> case. First match wins; ANY matches everything.
# Stages are where the as-configured attempt stopped; outcomes are reply kinds
# (classify.py) or network failures (client.ProbeError kinds).
CASE_TABLE: tuple[tuple[frozenset[str] | str, str, bool | str, str], ...] = (
    (EARLY, "timeout", ANY, "port_blocked"),
    (EARLY, "no_banner", ANY, "port_blocked"),
    (EARLY, "refused", ANY, "connection_refused"),
    (EARLY, "tls", ANY, "tls_problem"),
    (EARLY, "banner_rejected", ANY, "server_rejects_connection"),
    (EARLY, "closed", ANY, "server_rejects_connection"),
    (EARLY, ANY, ANY, "server_unreachable"),
    (ANY, "tls", ANY, "tls_problem"),
    (ANY, "starttls_unavailable", ANY, "tls_problem"),
    (frozenset({"ehlo"}), ANY, ANY, "server_rejects_connection"),
    (ANY, "closed", ANY, "rejected_other"),
    (ANY, "timeout", ANY, "rejected_other"),
    (ANY, "protocol", ANY, "rejected_other"),
    (ANY, k.TLS_REQUIRED, ANY, "tls_required"),
    (ANY, k.AUTH_REQUIRES_TLS, ANY, "auth_requires_tls"),
    (ANY, k.TOO_MANY_ERRORS, ANY, "too_many_errors"),
    # diagnose() turns auth_unavailable into auth_requires_tls when STARTTLS would bring AUTH.
    (AUTH_STAGE, "auth_unavailable", ANY, "auth_unavailable"),
    (AUTH_STAGE, k.AUTH_FAILED, ANY, "auth_failed"),
    (AUTH_STAGE, k.OTHER, ANY, "auth_failed"),
    (ANY, k.SENDER_NOT_OWNED, ANY, "sender_not_owned"),
    (ANY, k.SENDER_NOT_LOGGED_IN, ANY, "sender_not_logged_in"),
    (ANY, k.AUTH_REQUIRED, False, "auth_not_used"),
    (ANY, k.RELAY_DENIED, True, "relay_denied_after_auth"),
    (ANY, k.RELAY_DENIED, False, "relay_denied_no_auth"),
    (ANY, k.RECIPIENT_UNKNOWN, ANY, "recipient_unknown"),
    (ANY, k.SENDER_REJECTED, ANY, "sender_rejected"),
    (ANY, k.TOO_BIG, ANY, "message_too_big"),
    (ANY, k.TEMPORARY, ANY, "temporary_failure"),
    (ANY, k.AUTH_FAILED, ANY, "auth_failed"),
    (ANY, ANY, ANY, "rejected_other"),
)


def _case_for(a: Attempt) -> str:
    """The case named by where the as-configured attempt stopped and why (CASE_TABLE)."""
    if a.accepted:
        return "ok"
    logged_in = a.login is not None
    for stages, outcome, login, case in CASE_TABLE:
        if stages != ANY and a.stage not in stages:
            continue
        if outcome not in (ANY, a.outcome):
            continue
        if login not in (ANY, logged_in):
            continue
        return case
    return "rejected_other"


def _security_label(a: Attempt) -> str:
    if a.security == "ssl":
        return "ssl"
    return "starttls" if a.used_tls else "none"


def _survey(opts: DoctorOptions) -> dict[str, Attempt]:
    """EHLO (and STARTTLS + EHLO) on every standard port, in parallel: who answers, what is offered."""
    services = dict(opts.ports)
    if opts.port not in services.values():
        services["configured"] = opts.port
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = {
            name: pool.submit(
                run_attempt,
                opts,
                port,
                "ssl" if (name == "submissions" or opts.security_for(port) == "ssl") else "auto",
                login=False,
                envelope=False,
            )
            for name, port in services.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _port_findings(survey: dict[str, Attempt]) -> list[Finding]:
    out: list[Finding] = []
    for service, a in survey.items():
        p: dict[str, Any] = {"port": a.port, "service": service, "detail": a.detail}
        if a.stage == "connect" or (a.stage == "banner" and a.outcome != "banner_rejected"):
            fid = {
                "refused": "port_refused",
                "timeout": "port_timeout",
                "no_banner": "port_no_banner",
                "tls": "port_tls",
            }.get(a.outcome, "port_unreachable")
            out.append(Finding(fid, "warning", p))
            continue
        if a.outcome == "banner_rejected":
            out.append(Finding("port_rejected", "warning", {**p, "banner": a.reply}))
            continue
        banner = next((ln[3:] for ln in a.transcript.lines if ln.startswith("S: 220")), "")
        out.append(Finding("port_open", "ok", {**p, "banner": banner.strip(" -")}))
    return out


def _looks_blocked(a: Attempt) -> bool:
    return a.outcome in ("timeout", "no_banner")


def _cert_findings(cert: CertInfo, name: str) -> list[Finding]:
    out: list[Finding] = []
    names = ", ".join(cert.names) or cert.subject
    if cert.days_left < 0:
        out.append(Finding("cert_expired", "problem", {"date": cert.not_after[:10]}))
    elif cert.days_left < CERT_WARN_DAYS:
        out.append(Finding("cert_expires_soon", "warning", {"days": cert.days_left}))
    if cert.self_signed and not cert.verified:
        out.append(Finding("cert_self_signed", "warning", {}))
    elif not cert.verified:
        out.append(Finding("cert_untrusted", "warning", {"error": cert.verify_error}))
    if not cert.name_matches:
        out.append(Finding("cert_name_mismatch", "warning", {"names": names, "name": name}))
    if cert.verified and cert.name_matches and cert.days_left >= CERT_WARN_DAYS:
        out.append(Finding("cert_ok", "ok", {"names": names, "days": cert.days_left}))
    return out


def diagnose(opts: DoctorOptions) -> Diagnosis:
    findings: list[Finding] = []
    probes: list[Probe] = []
    params: dict[str, Any] = {
        # "[2001:db8::1]:587" for an IPv6 address, as mail programs write it.
        "server": str(HostPort(opts.host, opts.port)),
        "host": opts.host,
        "port": opts.port,
        "sender": opts.sender,
        "rcpt": opts.rcpt,
        "login": opts.login or "",
        "pop3": str(HostPort(opts.pop3_host, opts.pop3_port)) if opts.pop3_host else "",
        "reply": "",
        "detail": "",
    }

    survey = _survey(opts)
    findings += _port_findings(survey)
    for name, a in survey.items():
        probes.append(a.probe(f"survey_{name}", opts.host))

    main = run_attempt(opts, opts.port, opts.security_for(opts.port), login=opts.use_login)
    probes.append(main.probe("as_configured", opts.host))
    case = _case_for(main)
    params["reply"] = main.reply or main.detail
    params["detail"] = main.detail or main.reply
    accepted = main.accepted

    # What this port offers, before and after encryption.
    conf = survey.get("configured") or next(
        (a for a in survey.values() if a.port == opts.port), main
    )
    mechs_plain, mechs_tls = conf.mechs_plain(), conf.mechs_tls()
    if conf.stage not in ("connect", "banner"):
        if conf.security != "ssl":
            if "STARTTLS" in conf.caps_plain:
                findings.append(Finding("starttls_offered", "ok", {"port": conf.port}))
            else:
                findings.append(Finding("starttls_missing", "warning", {"port": conf.port}))
        if mechs_plain:
            findings.append(Finding("auth_before_tls", "info", {"mechs": " ".join(mechs_plain)}))
            if conf.security != "ssl":
                findings.append(Finding("plaintext_auth", "warning", {"port": conf.port}))
        if mechs_tls:
            findings.append(Finding("auth_after_tls", "info", {"mechs": " ".join(mechs_tls)}))
            if not mechs_plain and conf.security != "ssl":
                findings.append(Finding("auth_after_tls_only", "info", {}))
        if not mechs_plain and not mechs_tls:
            findings.append(Finding("auth_not_offered", "info", {"port": conf.port}))
        if conf.tls_version:
            findings.append(
                Finding("tls_version", "info", {"port": conf.port, "version": conf.tls_version})
            )

    # A login asked for on a plaintext connection where AUTH only exists after STARTTLS.
    if case == "auth_unavailable" and mechs_tls and not main.used_tls:
        case = "auth_requires_tls"
    if main.stage == "auth" and main.outcome != "auth_unavailable":
        findings.append(
            Finding(
                "login_failed",
                "problem",
                {"login": opts.login, "port": main.port, "reply": main.reply},
            )
        )
    elif main.login and main.stage in ("mail", "rcpt"):
        findings.append(Finding("login_ok", "ok", {"login": opts.login, "port": main.port}))

    # Port 25 blocked while the submission ports answer: the classic home-network block.
    smtp_a = survey.get("smtp")
    others_open = [
        a for n, a in survey.items() if n != "smtp" and a.stage not in ("connect", "banner")
    ]
    if smtp_a is not None and _looks_blocked(smtp_a) and others_open:
        findings.append(Finding("port25_blocked", "warning", {"port": smtp_a.port}))
    if case in ("port_blocked", "connection_refused") and others_open:
        params["open_ports"] = [a.port for a in others_open]

    # Refused for want of a login, while the server does offer one somewhere.
    if case in ("relay_denied_no_auth", "sender_not_logged_in", "auth_not_used"):
        offering = sorted({a.port for a in survey.values() if a.mechs_plain() or a.mechs_tls()})
        if offering:
            findings.append(
                Finding("auth_offered", "info", {"ports": ", ".join(map(str, offering))})
            )

    # POP-before-SMTP: a denial that a fresh POP3 login turns into an accept.
    relay_like = case in ("relay_denied_no_auth", "auth_not_used", "sender_not_logged_in")
    if opts.pop3_host and not accepted:
        if opts.login is None or opts.password is None:
            findings.append(Finding("pop3_no_credentials", "info", {}))
        elif relay_like:
            ok, pprobe, preply = pop3_login(opts)
            probes.append(pprobe)
            fp = {"login": opts.login, "pop3": params["pop3"], "reply": preply, "detail": preply}
            if ok:
                findings.append(Finding("pop3_login_ok", "ok", fp))
                again = run_attempt(opts, opts.port, opts.security_for(opts.port), login=False)
                probes.append(again.probe("after_pop3_login", opts.host))
                if again.accepted:
                    case, accepted = "pop_before_smtp", True
            elif pprobe.outcome == "auth_failed":
                findings.append(Finding("pop3_login_failed", "problem", fp))
            else:
                findings.append(Finding("pop3_unreachable", "warning", fp))

    # The fix: with the user's login, which standard setting works?
    fixable = case in (
        "relay_denied_no_auth",
        "relay_denied_after_auth",
        "auth_not_used",
        "auth_requires_tls",
        "tls_required",
        "port_blocked",
        "connection_refused",
        "tls_problem",
        "auth_unavailable",
        "sender_not_logged_in",
        "server_rejects_connection",
    )
    if not accepted and fixable and opts.login and opts.password:
        for service, sec in (("submission", "starttls"), ("submissions", "ssl")):
            port = opts.ports.get(service)
            if port is None:
                continue
            s = survey.get(service)
            if s is not None and s.stage in ("connect", "banner"):
                continue
            fix = run_attempt(opts, port, sec, login=True)
            probes.append(fix.probe(f"fix_{service}", opts.host))
            if fix.accepted:
                findings.append(
                    Finding("works_with", "ok", {"port": port, "security": _sec_name(sec)})
                )
                break

    # Certificate of the configured port (or the first TLS port that answers); last,
    # because a verifying handshake that fails makes some servers slow to the next one.
    tls_target = _tls_target(survey, conf, opts)
    if tls_target is not None:
        try:
            cert = check_certificate(
                opts.host,
                tls_target.port,
                starttls=tls_target.security != "ssl",
                source=opts.source,
                timeout=opts.timeout,
                server_name=opts.server_name,
                cafile=opts.cafile,
                der=tls_target.peer_der,
            )
            findings += _cert_findings(cert, opts.server_name)
        except ProbeError as e:
            findings.append(
                Finding(
                    "port_tls",
                    "warning",
                    {
                        "port": tls_target.port,
                        "service": "tls",
                        "detail": e.detail,
                    },
                )
            )

    findings.insert(
        0,
        Finding(
            "attempt",
            "ok" if accepted and case == "ok" else "problem",
            {
                "port": main.port,
                "security": _sec_name(_security_label(main)),
                "auth": "@with_login" if main.login else "@without_login",
                "outcome": _outcome_text(main),
            },
        ),
    )
    return Diagnosis(
        case=case,
        accepted=accepted,
        params=params,
        findings=tuple(findings),
        probes=tuple(probes),
        exit_code=EXIT_ACCEPTED if accepted else EXIT_REFUSED,
    )


def _outcome_text(a: Attempt) -> str:
    """The server's own words when it spoke; else a translated name for the network failure."""
    if a.accepted:
        return "@accepted_short"
    if a.reply_code:
        return a.reply
    if f"net_{a.outcome}" in catalogue.LABELS:
        return f"@net_{a.outcome}"
    return a.detail or a.outcome


def _sec_name(sec: str) -> str:
    """A catalogue label reference, translated when the finding is rendered."""
    return {"ssl": "@ssl", "starttls": "@starttls", "none": "@no_encryption"}.get(sec, sec)


def _tls_target(survey: dict[str, Attempt], conf: Attempt, opts: DoctorOptions) -> Attempt | None:
    if conf.stage not in ("connect", "banner") and (
        conf.security == "ssl" or conf.caps_tls is not None
    ):
        return conf
    for name in ("submission", "submissions", "smtp"):
        a = survey.get(name)
        if a is not None and a.stage not in ("connect", "banner") and a.caps_tls is not None:
            return a
    return None


__all__ = ["DoctorOptions", "diagnose", "run_attempt", "SECURITIES", "STANDARD_PORTS"]
