"""Server TLS contexts: the admin's certificate, or a self-signed one we make.

Without `[tls] cert`/`key`, a self-signed certificate is generated into
data_dir/tls/ (key mode 0600) and reused, so that STARTTLS, 465 and 995 work
from the first start; clients will call it untrusted, which `postvakt doctor`
explains. It covers every name mail programs connect to: `hostname`, `[tls]
names` (which `postvakt init --names` writes), `localhost`, 127.0.0.1 and ::1
(several programs, s-nail and fetchmail among them, ignore IP address entries,
so the names matter). When the wanted names change, it is made anew.

The context remembers which names its certificate covers, so that a failed
handshake's log line can say "the client asked for a name we do not cover".

The server never loads `cryptography` (10 MB of each front's memory, for
two jobs done at start): it reads the names of the certificate it serves with
the `ssl` module's own decoder (`served_names`), and a self-signed
certificate that must be made is made by a short-lived child,
`python -m postvakt.server.tls` (`ensure_self_signed(..., child=True)`). The
commands (`postvakt init`, `check`, `dovecot`) use `cryptography` directly.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt.config import ConfigError

if TYPE_CHECKING:
    from postvakt.config import Config

log = logging.getLogger("postvakt.tls")

# Long enough not to surprise a self-hoster, short enough to be renewed now and then.
SELF_SIGNED_DAYS = 825
# Always in the self-signed certificate: the names a test on the machine itself uses.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class ServerContext(ssl.SSLContext):
    """A server-side SSLContext that knows the names its certificate covers."""

    names: tuple[str, ...] = ()


def self_signed_paths(config: Config) -> tuple[Path, Path]:
    d = config.data_dir / "tls"
    return d / "cert.pem", d / "key.pem"


def wanted_names(config: Config) -> tuple[str, ...]:
    """What the self-signed certificate must cover, in order, without repeats."""
    return tuple(dict.fromkeys((config.hostname, *config.tls.names, *LOCAL_NAMES)))


def certificate_names(cert_pem: bytes) -> tuple[str, ...]:
    """The DNS names and IP addresses a certificate covers (its CN when it has no SAN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in cns)
    dns = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate, as `openssl x509 -fingerprint -sha256` shows it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def served_names(cert_path: Path) -> tuple[str, ...]:
    """`certificate_names` of the (first) certificate in a PEM file, read with
    the `ssl` module's decoder where it has one (the form of a peer's
    certificate, `getpeercert()`), so that the server need not load
    `cryptography`. The same names in the same order; IP addresses as
    `ipaddress` writes them."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return certificate_names(cert_path.read_bytes())
    try:
        info = decode(str(cert_path))
    except ssl.SSLError as e:
        raise ValueError(f"not a certificate: {e}") from None
    sans = info.get("subjectAltName", ())
    if not sans:
        return tuple(
            value.lower()
            for rdn in info.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        )
    dns = [value.lower() for kind, value in sans if kind == "DNS"]
    ips = [str(ipaddress.ip_address(value)) for kind, value in sans if kind == "IP Address"]
    return tuple(dns + ips)


def covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate for `names` is valid for `host` (RFC 6125: a wildcard
    stands for exactly one left-most label)."""
    host = host.lower().rstrip(".")
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _ip_or_none(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def ensure_self_signed(config: Config, *, child: bool = False) -> tuple[Path, Path]:
    """The self-signed certificate and key, made when missing or when they do
    not cover the configured names. `child`: made by a short-lived process
    (the server's way: it never loads `cryptography` itself)."""
    cert_path, key_path = self_signed_paths(config)
    names = wanted_names(config)
    if cert_path.exists() and key_path.exists():
        try:
            have = served_names(cert_path)
        except (OSError, ValueError):
            have = ()
        # Only the configured names decide: a certificate from before ::1 was
        # added is not replaced for that (clients may have trusted it).
        missing = [n for n in (config.hostname, *config.tls.names) if not covers(have, n)]
        if not missing:
            return cert_path, key_path
        log.warning(
            "self-signed certificate %s does not cover %s: making a new one for %s"
            " (mail programs that trusted the old one must accept the new one)",
            cert_path,
            ", ".join(missing),
            ", ".join(names),
        )
    if child:
        _make_in_child(cert_path, key_path, config.hostname, names)
    else:
        make_self_signed(cert_path, key_path, config.hostname, names)
    return cert_path, key_path


def _make_in_child(cert_path: Path, key_path: Path, hostname: str, names: tuple[str, ...]) -> None:
    args = [sys.executable, "-m", "postvakt.server.tls", str(cert_path), str(key_path), hostname]
    done = subprocess.run([*args, *names], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise OSError(f"cannot make a self-signed certificate: {done.stderr.strip()}")


def make_self_signed(
    cert_path: Path, key_path: Path, hostname: str, names: tuple[str, ...]
) -> None:
    """A new key and a self-signed certificate for `names` (CN `hostname`),
    each file replaced whole (the key mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        ip = _ip_or_none(n)
        sans.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)


def certificate_paths(config: Config) -> tuple[Path, Path, str]:
    """The certificate and key files to serve (making the self-signed ones), and their key name."""
    if config.tls.cert is not None and config.tls.key is not None:
        return config.tls.cert, config.tls.key, "[tls] cert"
    cert, key = ensure_self_signed(config, child=True)
    return cert, key, "[tls] (self-signed in data_dir)"


def reload_context(live: ServerContext, config: Config) -> ServerContext:
    """SIGHUP: serve the certificate and key the files hold now, in the same context.

    A new context is built first, so that a broken file refuses the reload
    (ConfigError) and leaves the live context as it was. The live one then
    loads the same files: connections made from here on get the new
    certificate, while TLS sessions already running keep the one they were
    made with (OpenSSL copies it into each connection). Every listener and
    STARTTLS share the live context, so none of them needs to be told.
    """
    fresh = server_context(config)
    cert, key, source_key = certificate_paths(config)
    try:
        live.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:  # the files changed again meanwhile
        raise ConfigError(config.source, source_key, f"{cert} / {key}: {e}") from None
    live.names = fresh.names
    return live


def server_context(config: Config) -> ServerContext:
    """The context for STARTTLS, STLS, 465 and 995. Errors name the file and the reason."""
    cert, key, source_key = certificate_paths(config)
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.names = served_names(Path(cert))
    except FileNotFoundError as e:
        raise ConfigError(
            config.source, source_key, f"cannot read {e.filename}: no such file"
        ) from None
    except PermissionError as e:
        raise ConfigError(
            config.source, source_key, f"cannot read {e.filename}: permission denied"
        ) from None
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(
            config.source, source_key, f"{cert} / {key}: not a usable certificate and key ({e})"
        ) from None
    if config.tls.cert is not None:
        for host in config.tls.names:
            if not covers(ctx.names, host):
                log.warning(
                    "[tls] names: %s is not covered by %s (it covers %s): mail programs"
                    " connecting by that name will refuse the certificate",
                    host,
                    cert,
                    ", ".join(ctx.names) or "no names",
                )
    return ctx


def main(argv: list[str]) -> int:
    """`python -m postvakt.server.tls CERT KEY HOSTNAME NAME...`: the server's
    child that makes a self-signed certificate (`ensure_self_signed`)."""
    if len(argv) < 4:
        print("usage: python -m postvakt.server.tls CERT KEY HOSTNAME NAME...", file=sys.stderr)
        return 2
    cert, key, hostname, *names = argv
    try:
        make_self_signed(Path(cert), Path(key), hostname, tuple(names))
    except (OSError, ValueError) as e:
        print(f"postvakt: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
