"""Server TLS contexts: the admin's certificate, or a self-signed one we make.

Without `[tls]` in the config, a self-signed certificate for the hostname is
generated once into data_dir/tls/ (key mode 0600) and reused, so that STARTTLS,
465 and 995 work from the first start; clients will call it untrusted, which
`postvakt doctor` explains.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt.config import ConfigError

if TYPE_CHECKING:
    from postvakt.config import Config

# Long enough not to surprise a self-hoster, short enough to be renewed now and then.
SELF_SIGNED_DAYS = 825


def self_signed_paths(config: Config) -> tuple[Path, Path]:
    d = config.data_dir / "tls"
    return d / "cert.pem", d / "key.pem"


def ensure_self_signed(config: Config) -> tuple[Path, Path]:
    cert_path, key_path = self_signed_paths(config)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, config.hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(config.hostname), x509.DNSName("localhost")]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
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


def server_context(config: Config) -> ssl.SSLContext:
    """The context for STARTTLS, STLS, 465 and 995. Errors name the file and the reason."""
    if config.tls.cert is not None and config.tls.key is not None:
        cert, key = config.tls.cert, config.tls.key
        source_key = "[tls] cert"
    else:
        cert, key = ensure_self_signed(config)
        source_key = "[tls] (self-signed in data_dir)"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as e:
        raise ConfigError(
            config.source, source_key, f"cannot read {e.filename}: no such file"
        ) from None
    except PermissionError as e:
        raise ConfigError(
            config.source, source_key, f"cannot read {e.filename}: permission denied"
        ) from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            config.source, source_key, f"{cert} / {key}: not a usable certificate and key ({e})"
        ) from None
    return ctx
