"""The test zones: outside domains with SPF, DKIM and DMARC records, served by NSD.

The outside client of the tests is 127.0.0.2 (see tests/support.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postvakt.mailauth import signing
from postvakt.mailauth.signing import SigningKey

OUTSIDE_IP = "127.0.0.2"
# The key outside domains sign with; published as s1._domainkey.<domain>.
SELECTOR = "s1"


@dataclass
class OutsideKeys:
    """One RSA key per outside domain, made once per test module (2048-bit keygen is slow)."""

    keys: dict[str, SigningKey]

    @classmethod
    def make(cls, domains: list[str]) -> OutsideKeys:
        pem = signing.generate_pem("rsa")
        return cls({d: signing.key_from_pem(pem, d, SELECTOR, "test") for d in domains})

    def sign(self, message: bytes, domain: str) -> bytes:
        return signing.sign(message, [self.keys[domain]])

    def record(self, domain: str) -> str:
        return signing.zone_line(domain, SELECTOR, self.keys[domain].record)


# domain -> (SPF record or None, DMARC record or None)
OUTSIDE = {
    # SPF allows the test client: pass.
    "pass.example": ("v=spf1 ip4:127.0.0.2 -all", "v=DMARC1; p=reject"),
    # The client is not listed: fail / softfail / neutral.
    "fail.example": ("v=spf1 ip4:192.0.2.1 -all", None),
    "softfail.example": ("v=spf1 ip4:192.0.2.1 ~all", None),
    "neutral.example": ("v=spf1 ?all", None),
    # No SPF record at all.
    "nospf.example": (None, None),
    # An include of a zone no server answers for: temperror.
    "temp.example": ("v=spf1 include:spf.unserved.test -all", "v=DMARC1; p=reject"),
    # Syntax the RFC does not know: permerror.
    "perm.example": ("v=spf1 ip4:127.0.0.2 frobnicate -all", None),
    # SPF via the MX's addresses (mx mechanism, then an A lookup).
    "viamx.example": ("v=spf1 mx -all", None),
    # DMARC domains whose SPF never passes for the test client, so only a DKIM
    # signature can make DMARC pass.
    "reject.example": ("v=spf1 -all", "v=DMARC1; p=reject"),
    "quarantine.example": ("v=spf1 -all", "v=DMARC1; p=quarantine"),
    "monitor.example": ("v=spf1 -all", "v=DMARC1; p=none"),
}


def zone_records(domain: str, keys: OutsideKeys) -> list[str]:
    spf, dmarc = OUTSIDE[domain]
    out = ["@ IN A 192.0.2.80", "mail IN A 127.0.0.2", 'mail IN TXT "v=spf1 a -all"']
    if spf is not None:
        out.append(f'@ IN TXT "{spf}"')
    if dmarc is not None:
        out.append(f'_dmarc IN TXT "{dmarc}"')
    if domain == "viamx.example":
        out.append("@ IN MX 10 mail.viamx.example.")
    out.append(keys.record(domain))
    return out


def all_zones(keys: OutsideKeys) -> dict[str, list[str]]:
    # The parent zone answers for names above the test domains (a DMARC tree
    # walk asks _dmarc.example) as a real TLD would: they do not exist.
    zones = {"example": []}
    zones.update({d: zone_records(d, keys) for d in OUTSIDE})
    return zones


def message(from_addr: str, to: str, subject: str, extra: str = "") -> bytes:
    return (
        f"From: <{from_addr}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n"
        f"{extra}\r\nHello.\r\n"
    ).encode()


def write_outside_key(path: Path) -> None:
    path.write_bytes(signing.generate_pem("rsa"))
