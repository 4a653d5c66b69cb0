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
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


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


def ensure_self_signed(config: Config) -> tuple[Path, Path]:
    cert_path, key_path = self_signed_paths(config)
    names = wanted_names(config)
    if cert_path.exists() and key_path.exists():
        try:
            have = certificate_names(cert_path.read_bytes())
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
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, config.hostname)])
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
    return cert_path, key_path


def certificate_paths(config: Config) -> tuple[Path, Path, str]:
    """The certificate and key files to serve (making the self-signed ones), and their key name."""
    if config.tls.cert is not None and config.tls.key is not None:
        return config.tls.cert, config.tls.key, "[tls] cert"
    cert, key = ensure_self_signed(config)
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
        ctx.names = certificate_names(Path(cert).read_bytes())
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
