"""DKIM verification of a received message (RFC 6376 §6), with dkimpy.

The keys are fetched first, concurrently, through the DNS client (async, with
its lifetime); then dkimpy verifies in a thread, answering its key lookups
from what was fetched. So the event loop never waits on DNS or on RSA, and a
key whose lookup failed for a while is a temperror, not a failed signature.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Protocol

import dkim
import dkim.util

from postvakt.dnsclient import DNSError
from postvakt.mailauth.results import HEADER_B_LENGTH, DKIMCheck, DKIMResult

# Signatures verified per message: each costs a DNS lookup and a hash of the
# body; a message with dozens is an attack, not mail (OpenDKIM's
# MaximumSignaturesToVerify has the same purpose).
MAX_SIGNATURES = 5
# RFC 8301 §3.2: RSA keys below 1024 bits are not to be trusted.
MIN_RSA_BITS = 1024


class TXTLookup(Protocol):
    async def txt(self, name: str) -> list[str]: ...


class _KeyMissing:
    """A lookup that found no key (a permanent answer)."""

    def __init__(self, why: str) -> None:
        self.why = why


class _KeyTemp:
    def __init__(self, why: str) -> None:
        self.why = why


KeyAnswer = bytes | _KeyMissing | _KeyTemp


def _signatures(message: bytes) -> list[dict[bytes, bytes] | str]:
    """Each DKIM-Signature's tags (top first), or why it cannot be read."""
    try:
        d = dkim.DKIM(message)
    except dkim.DKIMException as e:
        if b"dkim-signature" not in message.lower():
            return []
        return [f"message not readable: {e}"]
    out: list[dict[bytes, bytes] | str] = []
    for name, value in d.headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            out.append(dkim.util.parse_tag_value(value))
        except dkim.util.InvalidTagValueList as e:
            out.append(f"signature not readable: {e}")
    return out


def key_name(tags: Mapping[bytes, bytes]) -> str:
    return (
        tags.get(b"s", b"").decode("ascii", "replace")
        + "._domainkey."
        + tags.get(b"d", b"").decode("ascii", "replace")
    ).lower()


async def _fetch(dns: TXTLookup, name: str) -> KeyAnswer:
    try:
        records = await dns.txt(name)
    except DNSError as e:
        if e.temporary:
            return _KeyTemp(f"key lookup {name}: {e}")
        return _KeyMissing(f"no key published at {name}")
    keys = [r for r in records if "p=" in r]
    if not keys:
        return _KeyMissing(f"no key published at {name}")
    return keys[0].encode("utf-8", "replace")


def _verify_all(
    message: bytes, sigs: list[dict[bytes, bytes] | str], keys: Mapping[str, KeyAnswer]
) -> list[DKIMCheck]:
    """Blocking: hashes and RSA; run in a thread."""
    d = dkim.DKIM(message, minkey=MIN_RSA_BITS)
    out: list[DKIMCheck] = []
    for idx, tags in enumerate(sigs):
        if isinstance(tags, str):
            out.append(DKIMCheck("", "", "", DKIMResult.PERMERROR, tags))
            continue
        dom = tags.get(b"d", b"").decode("ascii", "replace").lower()
        sel = tags.get(b"s", b"").decode("ascii", "replace")
        alg = tags.get(b"a", b"").decode("ascii", "replace")
        b = re.sub(r"\s+", "", tags.get(b"b", b"").decode("ascii", "replace"))[:HEADER_B_LENGTH]

        def check(result: DKIMResult, detail: str) -> DKIMCheck:
            return DKIMCheck(dom, sel, alg, result, detail, b)  # noqa: B023

        key = keys.get(key_name(tags))
        if isinstance(key, _KeyTemp):
            out.append(check(DKIMResult.TEMPERROR, key.why))
            continue
        if isinstance(key, _KeyMissing) or key is None:
            why = key.why if key is not None else "no key"
            out.append(check(DKIMResult.PERMERROR, why))
            continue
        answer = key

        def dnsfunc(name: bytes | str, timeout: float = 5, _key: bytes = answer) -> bytes:
            return _key

        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.ValidationError as e:
            out.append(check(DKIMResult.FAIL, str(e).split(" (got")[0]))
            continue
        except dkim.DKIMException as e:
            out.append(check(DKIMResult.PERMERROR, str(e) or type(e).__name__))
            continue
        if ok:
            out.append(check(DKIMResult.PASS, f"signature by {dom} verified"))
        else:
            out.append(check(DKIMResult.FAIL, "signature did not verify"))
    return out


async def verify(dns: TXTLookup, message: bytes) -> tuple[DKIMCheck, ...]:
    """Every DKIM-Signature of `message` (up to MAX_SIGNATURES), top first."""
    sigs = await asyncio.to_thread(_signatures, message)
    extra = len(sigs) - MAX_SIGNATURES
    sigs = sigs[:MAX_SIGNATURES]
    names = sorted({key_name(t) for t in sigs if not isinstance(t, str)})
    answers = await asyncio.gather(*(_fetch(dns, n) for n in names))
    keys = dict(zip(names, answers, strict=True))
    checks = await asyncio.to_thread(_verify_all, message, sigs, keys)
    if extra > 0:
        checks.append(
            DKIMCheck("", "", "", DKIMResult.POLICY, f"{extra} more signatures not verified")
        )
    return tuple(checks)
