"""DKIM signing of mail our users send and mail we generate (RFC 6376, RFC 8463).

Who is signed (`signing_domain`, a pure decision):
- mail that came by a road (logged in, POP-before-SMTP, `networks`,
  `clients`) and whose sender checks passed without a warning: the front
  records that road in the envelope (`Envelope.road`); mail from outside has
  none and is never signed;
- mail we generate ourselves (bounces, notices: road `GENERATED`);
- and only when its From: names one domain, which is ours (for a user's
  mail: one of `[domains] local`) and is, or is under, a domain of
  `[dkim] sign` (relaxed DMARC alignment, RFC 7489 §3.1.1).

How: relaxed/relaxed, rsa-sha256 with the first selector's key (2048 bits
by default; RFC 8301 §3.2), and a second signature for each further selector
(an ed25519-sha256 key, RFC 8463, or the next key of a rotation). The
signed fields are the ones a reader sees and a forger would change; From:
is signed once more than it occurs, so none can be added (RFC 6376 §8.15).

Keys are PKCS#8 PEM files `DOMAIN.SELECTOR.key` in `[dkim] key_dir`
(default data_dir/dkim), mode 0600, made by `postvakt dkim keygen`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postvakt.address import AddressError, parse_header_addresses
from postvakt.config import Algorithm, Config, DKIMConfig
from postvakt.mailauth.headers import header_fields
from postvakt.policy.roads import GENERATED

# What signing raises on a message or key it cannot use.
DKIMException = dkim.DKIMException

# RFC 8301 §3.2: signers SHOULD use at least 2048 bits (maddy's default too).
RSA_BITS = 2048
# RFC 8017 / common practice: the public exponent 65537.
RSA_EXPONENT = 65537
# RFC 1035 §3.3.14: one character-string of a TXT record holds at most 255 octets.
TXT_STRING = 255

# Fields signed when present (RFC 6376 §5.4.1's list, trimmed to what a
# reader sees or a client acts on); From: is oversigned.
SIGNED_FIELDS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-language",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED = ("from",)


class DKIMKeyError(Exception):
    """A key that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: Algorithm
    # What dkimpy signs with: PEM for RSA, the base64 seed for ed25519.
    secret: bytes
    record: str  # the TXT record to publish: "v=DKIM1; k=rsa; p=..."

    @property
    def dkim_algorithm(self) -> bytes:
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"


# ---------------------------------------------------------------- keys


def key_path(config: Config, domain: str, selector: str) -> Path:
    return config.dkim_key_dir / f"{domain}.{selector}.key"


def generate_pem(algorithm: Algorithm) -> bytes:
    """A new private key as PKCS#8 PEM."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes, domain: str, selector: str, where: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise DKIMKeyError(f"{where}: not a PEM private key without password ({e})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise DKIMKeyError(f"{where}: RSA key of {key.key_size} bits; at least 1024 (RFC 8301)")
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
        return SigningKey(domain, selector, "rsa", pem, record)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # RFC 8463 §4.2: p= is the base64 of the raw 32-byte public key.
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
        return SigningKey(domain, selector, "ed25519", base64.b64encode(seed), record)
    raise DKIMKeyError(f"{where}: neither an RSA nor an ed25519 key")


def load_key(config: Config, domain: str, selector: str) -> SigningKey:
    path = key_path(config, domain, selector)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise DKIMKeyError(
            f"{path}: no such key (make one: postvakt dkim keygen {domain} --selector {selector})"
        ) from None
    except OSError as e:
        raise DKIMKeyError(f"{path}: cannot read: {e.strerror}") from None
    return key_from_pem(pem, domain, selector, str(path))


def write_key(path: Path, pem: bytes) -> None:
    """Create the key file, 0600, never over an existing one (a live key lost is mail refused)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def zone_line(domain: str, selector: str, record: str) -> str:
    """One zone-file line; the value cut into quoted strings of at most 255 octets."""
    parts = [record[i : i + TXT_STRING] for i in range(0, len(record), TXT_STRING)]
    strings = " ".join(f'"{p}"' for p in parts)
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


def record_tags(text: str) -> dict[str, str]:
    """A DKIM key record's tags (RFC 6376 §3.6.1), whitespace inside values removed."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    return tags


def same_key(published: str, ours: str) -> bool:
    """Does a published record carry our key (same k= and p=)?"""
    a, b = record_tags(published), record_tags(ours)
    return a.get("p") == b.get("p") and a.get("k", "rsa") == b.get("k", "rsa") and bool(a.get("p"))


# ---------------------------------------------------------------- who signs


def from_domains(message: bytes) -> list[str]:
    """The domains of the addresses in From: (empty when there is none or it cannot be read)."""
    out: list[str] = []
    for name, value in header_fields(message):
        if name.lower() != "from":
            continue
        try:
            out += [a.domain.lower() for a in parse_header_addresses(value, smtputf8=True)]
        except AddressError:
            return []
    return out


def signing_domain(
    road: str | None,
    domains: Sequence[str],
    local_domains: Iterable[str],
    dkim_config: DKIMConfig,
) -> tuple[str | None, str]:
    """Which `[dkim] sign` domain signs this message, or None; and why, for the log."""
    if road is None:
        return None, "not signed: mail from outside (or with a sender warning)"
    found = set(domains)
    if not found:
        return None, "not signed: no From: address"
    if len(found) > 1:
        return None, "not signed: From: names several domains"
    domain = found.pop()
    if road != GENERATED and domain not in set(local_domains):
        return None, f"not signed: From: domain {domain} is not one of our local domains"
    best = None
    for signer, _ in dkim_config.sign:
        if (domain == signer or domain.endswith("." + signer)) and (
            best is None or len(signer) > len(best)
        ):
            best = signer
    if best is None:
        return None, f"not signed: [dkim] sign names no key for {domain}"
    return best, f"signed for {best} (From: {domain}, came by {road})"


# ---------------------------------------------------------------- signing


def _include_headers(message: bytes) -> list[bytes]:
    present = [name.lower() for name, _ in header_fields(message)]
    out = [f.encode() for f in SIGNED_FIELDS for _ in range(present.count(f))]
    out += [f.encode() for f in OVERSIGNED]
    return out


def sign(message: bytes, keys: Sequence[SigningKey]) -> bytes:
    """The message with one DKIM-Signature per key on top, the first key's topmost
    (a verifier that knows only RSA meets the RSA signature first).

    Blocking (RSA): the caller runs it in a thread.
    """
    include = _include_headers(message)
    signatures: list[bytes] = []
    for key in keys:
        d = dkim.DKIM(message)
        signatures.append(
            d.sign(
                key.selector.encode(),
                key.domain.encode(),
                key.secret,
                signature_algorithm=key.dkim_algorithm,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        )
    return b"".join(signatures) + message


class Signer:
    """The keys of `[dkim] sign`, loaded once (at start and on reload)."""

    def __init__(
        self,
        config: Config,
        keys: dict[str, tuple[SigningKey, ...]],
        problems: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.keys = keys
        # Keys that could not be loaded: `serve` refuses to start with any.
        self.problems = tuple(problems)

    @classmethod
    def load(cls, config: Config) -> Signer:
        """Every configured key that can be used, and a line per one that cannot."""
        keys: dict[str, tuple[SigningKey, ...]] = {}
        problems: list[str] = []
        for domain, selectors in config.dkim.sign:
            loaded = []
            for sel in selectors:
                try:
                    loaded.append(load_key(config, domain, sel))
                except DKIMKeyError as e:
                    problems.append(str(e))
            keys[domain] = tuple(loaded)
        return cls(config, keys, problems)

    def plan(self, road: str | None, message: bytes) -> tuple[tuple[SigningKey, ...], str]:
        """The keys to sign this message with (none: not signed) and why."""
        if not self.keys:
            return (), "not signed: [dkim] sign is empty"
        domain, why = signing_domain(
            road, from_domains(message), self.config.domains.local, self.config.dkim
        )
        if domain is None:
            return (), why
        return self.keys.get(domain, ()), why
