"""A small, careful SMTP and POP3 client for the doctor and the relay test.

Rules of the house:
- The SMTP client can only say EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, RSET,
  NOOP and QUIT. DATA, BDAT, VRFY and friends are not in the table, so no code
  path here can hand a message to a server: the doctor probes, it never sends.
- Every network step has a timeout; a silent server is a finding, not a hang.
- Every line sent and received goes to the transcript, passwords masked.
- Certificates are fetched without verification (to keep diagnosing) and
  judged separately (`check_certificate`), so a bad certificate is reported,
  never a reason to stop.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postvakt.reply import Reply, parse_reply

# Commands the probe may send. DATA and BDAT are absent on purpose.
SMTP_ALLOWED = frozenset(
    {"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "RSET", "NOOP", "QUIT"}
)
POP3_ALLOWED = frozenset({"CAPA", "STLS", "USER", "PASS", "AUTH", "QUIT"})
# Verbs that hand over a message; refused even behind a bare CR inside a line.
NEVER = frozenset({"DATA", "BDAT"})


def check_command(line: str, allowed: frozenset[str], *, allow_bare_cr: bool = False) -> None:
    """Refuse a command line that is not on the list, or that smuggles a second line.

    A LF (or, outside the relay test, any CR) inside a line would let an address
    like "x@y>\r\nDATA" turn one command into two: the allowed-verb rule is only
    as good as this check.
    """
    verb = line.split(" ", 1)[0].upper()
    if verb not in allowed:
        raise ValueError(f"the probe never sends {verb}")
    if "\n" in line or ("\r" in line and not allow_bare_cr):
        raise ValueError("the probe never sends a line break inside a command")
    for fragment in line.split("\r")[1:]:
        if fragment.lstrip().upper().startswith(tuple(NEVER)):
            raise ValueError("the probe never sends DATA, not even behind a bare CR")


# RFC 5321 §4.5.3.2: a client should wait 5 minutes for most replies; a doctor
# run by a person on the phone with a helpdesk cannot, 10 s tells "silent" apart.
DEFAULT_TIMEOUT = 10.0
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; allow generous slack
# for servers that ignore it, but never buffer without bound.
MAX_LINE = 4096
# A multi-line EHLO reply with more lines than this is not a mail server.
MAX_REPLY_LINES = 200


class ProbeError(Exception):
    """A network or protocol failure, named by kind for the classifier.

    Kinds: refused, timeout, unreachable, dns, closed, tls, protocol.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: str  # ISO 8601, UTC
    days_left: int
    self_signed: bool
    verified: bool
    verify_error: str
    name_matches: bool


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)

    def client(self, text: str) -> None:
        self.lines.append("C: " + text)

    def server(self, text: str) -> None:
        self.lines.append("S: " + text)

    def note(self, text: str) -> None:
        self.lines.append("-- " + text)


def _classify_oserror(e: OSError) -> ProbeError:
    if isinstance(e, socket.gaierror):
        return ProbeError("dns", str(e))
    if isinstance(e, TimeoutError | socket.timeout):
        return ProbeError("timeout", "no answer within the time limit")
    if isinstance(e, ConnectionRefusedError):
        return ProbeError("refused", "connection refused")
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return ProbeError("unreachable", e.strerror or str(e))
    if isinstance(e, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return ProbeError("closed", "the server closed the connection")
    return ProbeError("unreachable", e.strerror or str(e))


def open_connection(host: str, port: int, *, source: str | None, timeout: float) -> socket.socket:
    """TCP connect, optionally from a chosen local address (an "outside" client)."""
    try:
        return socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
    except OSError as e:
        raise _classify_oserror(e) from None


def connect_probe(
    host: str,
    port: int,
    *,
    source: str | None,
    timeout: float,
    implicit_tls: bool,
    server_name: str | None,
    transcript: Transcript,
) -> socket.socket:
    """Connect for a probe (SMTP or POP3), with TLS from the first byte on 465/995."""
    transcript.note(f"connect {host}:{port}" + (" (TLS)" if implicit_tls else ""))
    sock = open_connection(host, port, source=source, timeout=timeout)
    if not implicit_tls:
        return sock
    try:
        sock.settimeout(timeout)
        return unverified_context().wrap_socket(sock, server_hostname=server_name or None)
    except ssl.SSLError as e:
        sock.close()
        raise ProbeError("tls", e.reason or str(e)) from None
    except OSError as e:
        sock.close()
        raise _classify_oserror(e) from None


def unverified_context() -> ssl.SSLContext:
    """Accept any certificate: the probe must see the server even when TLS is wrong."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verifying_context(cafile: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    return ctx


class _LineConnection:
    """A socket with our own receive buffer (no hidden buffering before STARTTLS)."""

    def __init__(self, sock: socket.socket, transcript: Transcript, timeout: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.transcript = transcript
        self.timeout = timeout
        self.tls = isinstance(sock, ssl.SSLSocket)
        sock.settimeout(timeout)

    def send_line(self, text: str, shown: str | None = None) -> None:
        self.transcript.client(shown if shown is not None else text)
        try:
            self.sock.sendall(text.encode("utf-8") + b"\r\n")
        except OSError as e:
            raise _classify_oserror(e) from None

    def read_line(self) -> str:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                raw = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(self.buf) > MAX_LINE:
                raise ProbeError("protocol", "reply line too long")
            try:
                chunk = self.sock.recv(4096)
            except ssl.SSLError as e:
                raise ProbeError("tls", e.reason or str(e)) from None
            except OSError as e:
                raise _classify_oserror(e) from None
            if not chunk:
                raise ProbeError("closed", "the server closed the connection")
            self.buf += chunk

    def start_tls(self, server_name: str | None) -> None:
        if self.buf:
            # Bytes that arrived before the handshake cannot be trusted (CVE-2011-0411 class).
            raise ProbeError("protocol", "the server sent data before the TLS handshake")
        try:
            self.sock = unverified_context().wrap_socket(
                self.sock, server_hostname=server_name or None
            )
        except ssl.SSLError as e:
            raise ProbeError("tls", e.reason or str(e)) from None
        except OSError as e:
            raise _classify_oserror(e) from None
        self.sock.settimeout(self.timeout)
        self.tls = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _ProbeClient:
    """What the SMTP and POP3 probes share: where to connect, from where, and how."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        implicit_tls: bool = False,
        server_name: str | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout = timeout
        self.implicit_tls = implicit_tls
        self.server_name = server_name or host
        self.transcript = transcript or Transcript()
        self.conn: _LineConnection | None = None

    def _open(self) -> None:
        sock = connect_probe(
            self.host,
            self.port,
            source=self.source,
            timeout=self.timeout,
            implicit_tls=self.implicit_tls,
            server_name=self.server_name,
            transcript=self.transcript,
        )
        self.conn = _LineConnection(sock, self.transcript, self.timeout)


class SMTPProbe(_ProbeClient):
    """The doctor's SMTP session (delivery has its own client). Only the verbs in SMTP_ALLOWED exist."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        implicit_tls: bool = False,
        server_name: str | None = None,
        transcript: Transcript | None = None,
        allow_bare_cr: bool = False,
    ) -> None:
        super().__init__(
            host,
            port,
            source=source,
            timeout=timeout,
            implicit_tls=implicit_tls,
            server_name=server_name,
            transcript=transcript,
        )
        # Only the relay test sends a bare CR on purpose (trick R17).
        self.allow_bare_cr = allow_bare_cr
        self.capabilities: dict[str, str] = {}
        self.banner: Reply | None = None
        self.peer_der: bytes | None = None

    @property
    def tls(self) -> bool:
        return bool(self.conn and self.conn.tls)

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        return tuple(self.capabilities.get("AUTH", "").upper().split())

    def connect(self) -> Reply:
        self._open()
        if self.implicit_tls:
            self._remember_cert()
        self.banner = self.read_reply()
        return self.banner

    def _remember_cert(self) -> None:
        assert self.conn is not None
        if isinstance(self.conn.sock, ssl.SSLSocket):
            self.peer_der = self.conn.sock.getpeercert(binary_form=True)
            self.transcript.note(f"TLS established ({self.conn.sock.version()})")

    def read_reply(self) -> Reply:
        assert self.conn is not None
        lines: list[str] = []
        while True:
            line = self.conn.read_line()
            self.transcript.server(line)
            if len(line) < 3 or not (line[:3].isascii() and line[:3].isdigit()):
                raise ProbeError("protocol", f"not an SMTP reply: {line[:80]!r}")
            lines.append(line)
            if len(lines) > MAX_REPLY_LINES:
                raise ProbeError("protocol", "reply too long")
            if len(line) == 3 or line[3] != "-":
                return parse_reply(lines)

    def command(self, line: str, shown: str | None = None) -> Reply:
        check_command(line, SMTP_ALLOWED, allow_bare_cr=self.allow_bare_cr)
        assert self.conn is not None, "connect() first"
        self.conn.send_line(line, shown)
        return self.read_reply()

    def ehlo(self, name: str = "doctor.postvakt.invalid") -> Reply:
        r = self.command(f"EHLO {name}")
        self.capabilities = {}
        if r.code == 250:
            for ln in r.text.split("\n")[1:]:
                key, _, value = ln.partition(" ")
                self.capabilities[key.upper()] = value
                if key.upper().startswith("AUTH="):  # old-style "AUTH=LOGIN PLAIN"
                    self.capabilities.setdefault("AUTH", ln[5:].replace("=", " "))
        return r

    def starttls(self) -> Reply:
        r = self.command("STARTTLS")
        if r.code == 220:
            assert self.conn is not None
            self.conn.start_tls(self.server_name)
            self._remember_cert()
            self.capabilities = {}
        return r

    def auth(self, login: str, password: str) -> Reply:
        """Log in with the best mechanism both sides know: PLAIN, LOGIN, CRAM-MD5."""
        mechs = self.auth_mechanisms
        if "PLAIN" in mechs or not mechs:
            token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
            return self.command(f"AUTH PLAIN {token}", "AUTH PLAIN <credentials hidden>")
        if "LOGIN" in mechs:
            r = self.command("AUTH LOGIN")
            if r.code != 334:
                return r
            assert self.conn is not None
            self.conn.send_line(base64.b64encode(login.encode()).decode())
            r = self.read_reply()
            if r.code != 334:
                return r
            self.conn.send_line(base64.b64encode(password.encode()).decode(), "<password hidden>")
            return self.read_reply()
        if "CRAM-MD5" in mechs:
            r = self.command("AUTH CRAM-MD5")
            if r.code != 334:
                return r
            challenge = base64.b64decode(r.text.strip() or "")
            digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
            assert self.conn is not None
            self.conn.send_line(
                base64.b64encode(f"{login} {digest}".encode()).decode(), "<response hidden>"
            )
            return self.read_reply()
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return self.command(f"AUTH PLAIN {token}", "AUTH PLAIN <credentials hidden>")

    def mail(self, sender: str) -> Reply:
        return self.command(f"MAIL FROM:<{sender}>")

    def rcpt(self, rcpt: str) -> Reply:
        return self.command(f"RCPT TO:<{rcpt}>")

    def mail_raw(self, path: str) -> Reply:
        return self.command(f"MAIL FROM:{path}")

    def rcpt_raw(self, path: str) -> Reply:
        return self.command(f"RCPT TO:{path}")

    def rset(self) -> Reply:
        return self.command("RSET")

    def close(self) -> None:
        """Say QUIT if the connection still works, then close; never raises."""
        if self.conn is None:
            return
        try:
            self.command("QUIT")
        except (ProbeError, OSError):
            pass
        self.conn.close()
        self.conn = None


class POP3Probe(_ProbeClient):
    """Enough POP3 to log in (for POP-before-SMTP): CAPA, STLS, USER/PASS, QUIT."""

    def __init__(self, host: str, port: int, **options: Any) -> None:
        super().__init__(host, port, **options)
        self.capabilities: list[str] = []

    def connect(self) -> str:
        self._open()
        return self._status()

    def _status(self) -> str:
        assert self.conn is not None
        line = self.conn.read_line()
        self.transcript.server(line)
        if not (line.startswith("+OK") or line.startswith("-ERR")):
            raise ProbeError("protocol", f"not a POP3 reply: {line[:80]!r}")
        return line

    def command(self, line: str, shown: str | None = None) -> str:
        check_command(line, POP3_ALLOWED)
        assert self.conn is not None
        self.conn.send_line(line, shown)
        return self._status()

    def capa(self) -> list[str]:
        status = self.command("CAPA")
        caps: list[str] = []
        if status.startswith("+OK"):
            assert self.conn is not None
            while True:
                line = self.conn.read_line()
                self.transcript.server(line)
                if line == ".":
                    break
                caps.append(line.upper())
                if len(caps) > MAX_REPLY_LINES:
                    raise ProbeError("protocol", "CAPA list too long")
        self.capabilities = caps
        return caps

    def stls(self) -> str:
        status = self.command("STLS")
        if status.startswith("+OK"):
            assert self.conn is not None
            self.conn.start_tls(self.server_name)
        return status

    def login(self, user: str, password: str) -> str:
        """USER/PASS, or AUTH PLAIN when the server offers SASL PLAIN but not USER."""
        sasl = next((c for c in self.capabilities if c.startswith("SASL")), "")
        if "USER" not in self.capabilities and "PLAIN" in sasl.split():
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            return self.command(f"AUTH PLAIN {token}", "AUTH PLAIN <credentials hidden>")
        status = self.command(f"USER {user}")
        if not status.startswith("+OK"):
            return status
        return self.command(f"PASS {password}", "PASS <password hidden>")

    @property
    def tls(self) -> bool:
        return bool(self.conn and self.conn.tls)

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            self.command("QUIT")
        except (ProbeError, OSError):
            pass
        self.conn.close()
        self.conn = None


# ---------------------------------------------------------------- certificates


def describe_certificate(
    der: bytes, expected_name: str, *, verified: bool, verify_error: str
) -> CertInfo:
    # Here, not at the top: `postvakt serve` imports this module with the
    # command line, and the server never loads `cryptography` (server/tls.py).
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        names = cn
    not_after = cert.not_valid_after_utc
    days_left = int((not_after - datetime.now(UTC)).total_seconds() // 86400)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=tuple(names),
        not_after=not_after.isoformat(),
        days_left=days_left,
        self_signed=cert.issuer == cert.subject,
        verified=verified,
        verify_error=verify_error,
        name_matches=name_matches(expected_name, names),
    )


def name_matches(expected: str, names: list[str] | tuple[str, ...]) -> bool:
    """RFC 6125 §6.4: exact match, or one wildcard for the left-most label."""
    want = expected.lower().rstrip(".")
    for n in names:
        n = n.lower().rstrip(".")
        if n == want:
            return True
        if n.startswith("*.") and "." in want and want.split(".", 1)[1] == n[2:]:
            return True
    return False


def check_certificate(
    host: str,
    port: int,
    *,
    starttls: bool,
    source: str | None,
    timeout: float,
    server_name: str,
    cafile: Path | None,
    der: bytes | None = None,
) -> CertInfo:
    """OpenSSL's verdict on the server's certificate, from one verifying handshake.

    `der` is the certificate an earlier (unverified) session already saw; without
    it a second, unverified handshake fetches it. Run this last: a client that
    aborts a handshake looks like an attacker to some servers.
    """
    verify_error = ""
    verified = False
    ctx = verifying_context(cafile)
    ctx.check_hostname = False  # the name is judged by name_matches, so an IP target still works

    def handshake(context: ssl.SSLContext) -> ssl.SSLSocket:
        sock = open_connection(host, port, source=source, timeout=timeout)
        sock.settimeout(timeout)
        if starttls:
            client = SMTPProbe(host, port, timeout=timeout)
            client.conn = _LineConnection(sock, client.transcript, timeout)
            try:
                client.read_reply()
                client.ehlo()
                r = client.command("STARTTLS")
            except ProbeError:
                sock.close()
                raise
            if r.code != 220:
                sock.close()
                raise ProbeError("tls", f"STARTTLS refused: {r}")
        try:
            return context.wrap_socket(sock, server_hostname=server_name or None)
        except ssl.SSLError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            raise _classify_oserror(e) from None

    try:
        s = handshake(ctx)
        verified = True
        der = s.getpeercert(binary_form=True) or der
        s.close()
    except ssl.SSLCertVerificationError as e:
        verify_error = e.verify_message or str(e)
    except ssl.SSLError as e:
        verify_error = f"could not verify: {e.reason or e}"
    except ProbeError as e:
        verify_error = f"could not verify: {e.detail}"
    if der is None:
        try:
            s = handshake(unverified_context())
        except ssl.SSLError as e:
            raise ProbeError("tls", e.reason or str(e)) from None
        der = s.getpeercert(binary_form=True)
        s.close()
    if der is None:
        raise ProbeError("tls", "the server sent no certificate")
    return describe_certificate(der, server_name, verified=verified, verify_error=verify_error)


@dataclass(frozen=True)
class PortResult:
    """What one TCP port says: open (banner code), refused, timeout, ..."""

    port: int
    service: str
    status: (
        str  # open | refused | timeout | unreachable | dns | closed | tls | protocol | no_banner
    )
    banner: str = ""
    code: int = 0
    detail: str = ""


def probe_port(
    host: str, port: int, service: str, *, source: str | None, timeout: float, server_name: str
) -> PortResult:
    """Connect, read the greeting (through TLS on 465), QUIT."""
    client = SMTPProbe(
        host,
        port,
        source=source,
        timeout=timeout,
        implicit_tls=(service == "submissions"),
        server_name=server_name,
    )
    try:
        banner = client.connect()
    except ProbeError as e:
        if e.kind == "timeout" and client.conn is not None:
            client.conn.close()
            return PortResult(port, service, "no_banner", detail=e.detail)
        if client.conn is not None:
            client.conn.close()
        return PortResult(port, service, e.kind, detail=e.detail)
    client.close()
    return PortResult(port, service, "open", banner=banner.text.split("\n")[0], code=banner.code)
