"""DMARC (RFC 7489): does the From: domain's owner vouch for this message?

A message passes when an SPF or DKIM pass is *aligned* with the From:
domain: the same domain (strict) or the same organizational domain
(relaxed, the default). The record is found, and the organizational domain
determined, by the DNS tree walk of DMARCbis (draft-ietf-dmarc-dmarcbis
§4.10) rather than by a copy of the Public Suffix List: everything comes
from DNS, and a list that ages on disk cannot misjudge a domain.

`parse_record` and `evaluate` are pure; `discover` and `org_domain` ask DNS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from postvakt.dnsclient import DNSError
from postvakt.mailauth.results import (
    DKIMCheck,
    DKIMResult,
    DMARCCheck,
    DMARCPolicy,
    DMARCResult,
    SPFCheck,
    SPFResult,
)

# DMARCbis §4.10.1: a walk starts at most 8 labels deep (longer names jump
# to their 7 rightmost labels after the first query), so a name can cost at
# most 8 queries.
MAX_WALK_LABELS = 8

Alignment = Literal["r", "s"]
_POLICIES: tuple[DMARCPolicy, ...] = ("none", "quarantine", "reject")


class TXTLookup(Protocol):
    async def txt(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class DMARCRecord:
    policy: DMARCPolicy
    subdomain_policy: DMARCPolicy | None = None
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    # DMARCbis psd=: "y" a public suffix domain, "n" an organizational domain, "u" unknown.
    psd: Literal["y", "n", "u"] = "u"


class TempError(Exception):
    """A DMARC lookup failed for now."""


def parse_record(text: str) -> DMARCRecord | None:
    """A DMARC record, or None when `text` is not a valid one (RFC 7489 §6.3, §6.6.3)."""
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        name, eq, value = part.strip().partition("=")
        name, value = name.strip().lower(), value.strip()
        if not name and not eq:
            continue
        if i == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        # §6.6.3: an invalid or missing p= with a valid rua= is read as p=none.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    psd = tags.get("psd", "u").lower()
    return DMARCRecord(
        policy=_policy(p),
        subdomain_policy=_policy(sp) if sp in _POLICIES else None,
        adkim="s" if adkim == "s" else "r",
        aspf="s" if aspf == "s" else "r",
        psd="y" if psd == "y" else "n" if psd == "n" else "u",
    )


def _policy(text: str) -> DMARCPolicy:
    for p in _POLICIES:
        if p == text:
            return p
    return "none"


class Walker:
    """DMARC record lookups for one message, each name asked at most once."""

    def __init__(self, dns: TXTLookup) -> None:
        self.dns = dns
        self._cache: dict[str, DMARCRecord | None] = {}

    async def record_at(self, domain: str) -> DMARCRecord | None:
        if domain in self._cache:
            return self._cache[domain]
        try:
            txts = await self.dns.txt(f"_dmarc.{domain}")
        except DNSError as e:
            if e.temporary:
                raise TempError(str(e)) from None
            txts = []
        found = [t for t in txts if t.replace(" ", "").lower().startswith("v=dmarc1")]
        record = parse_record(found[0]) if len(found) == 1 else None
        self._cache[domain] = record
        return record

    def _walk_names(self, domain: str) -> list[str]:
        labels = domain.split(".")
        names = [domain]
        if len(labels) > MAX_WALK_LABELS:
            labels = labels[-(MAX_WALK_LABELS - 1) :]
            names.append(".".join(labels))
        while len(labels) > 1:
            labels = labels[1:]
            names.append(".".join(labels))
        return list(dict.fromkeys(names))

    async def discover(self, domain: str) -> tuple[DMARCRecord | None, str]:
        """The record that governs `domain` and where it was found (DMARCbis §4.10.1)."""
        for name in self._walk_names(domain):
            record = await self.record_at(name)
            if record is not None:
                return record, name
        return None, ""

    async def org_domain(self, domain: str) -> str:
        """DMARCbis §4.10.2: psd=n marks the organizational domain, psd=y the
        public suffix above it; else the shortest name with a record; else the
        name itself."""
        names = self._walk_names(domain)
        shortest = ""
        for i, name in enumerate(names):
            record = await self.record_at(name)
            if record is None:
                continue
            if record.psd == "n":
                return name
            if record.psd == "y":
                return names[i - 1] if i > 0 else name
            shortest = name
        return shortest or domain


def _aligned(identifier: str, from_domain: str, mode: Alignment, orgs: dict[str, str]) -> bool:
    if identifier == from_domain:
        return True
    if mode == "s":
        return False
    return orgs.get(identifier, identifier) == orgs.get(from_domain, from_domain)


def evaluate(
    from_domain: str,
    record: DMARCRecord | None,
    found_at: str,
    spf: SPFCheck | None,
    dkim: Sequence[DKIMCheck],
    orgs: dict[str, str],
) -> DMARCCheck:
    """Pure: the DMARC result from the record and the SPF/DKIM results.

    `orgs` maps each domain involved to its organizational domain.
    """
    org = orgs.get(from_domain, from_domain)
    if record is None:
        return DMARCCheck(from_domain, DMARCResult.NONE, None, "no DMARC record", org)
    policy = record.policy
    if found_at != from_domain and record.subdomain_policy is not None:
        policy = record.subdomain_policy
    for d in dkim:
        if d.result == DKIMResult.PASS and _aligned(d.domain, from_domain, record.adkim, orgs):
            return DMARCCheck(
                from_domain, DMARCResult.PASS, policy, f"DKIM signature of {d.domain} aligned", org
            )
    if (
        spf is not None
        and spf.result == SPFResult.PASS
        and _aligned(spf.domain, from_domain, record.aspf, orgs)
    ):
        return DMARCCheck(
            from_domain, DMARCResult.PASS, policy, f"SPF pass for {spf.domain} aligned", org
        )
    temp = [d for d in dkim if d.result == DKIMResult.TEMPERROR]
    if spf is not None and spf.result == SPFResult.TEMPERROR:
        return DMARCCheck(
            from_domain, DMARCResult.TEMPERROR, policy, f"SPF for {spf.domain}: temperror", org
        )
    if temp:
        return DMARCCheck(
            from_domain,
            DMARCResult.TEMPERROR,
            policy,
            f"DKIM key of {temp[0].domain}: temperror",
            org,
        )
    return DMARCCheck(from_domain, DMARCResult.FAIL, policy, "no aligned SPF or DKIM pass", org)


async def check(
    dns: TXTLookup, from_domains: Sequence[str], spf: SPFCheck | None, dkim: Sequence[DKIMCheck]
) -> DMARCCheck:
    """The DMARC result for the message's From: domain(s)."""
    domains = sorted({d.lower().rstrip(".") for d in from_domains if d})
    if not domains:
        return DMARCCheck("", DMARCResult.PERMERROR, None, "no From: domain to judge")
    if len(domains) > 1:
        # RFC 7489 §6.6.1: several author domains cannot be judged as one.
        return DMARCCheck(domains[0], DMARCResult.PERMERROR, None, "From: names several domains")
    from_domain = domains[0]
    walker = Walker(dns)
    try:
        record, found_at = await walker.discover(from_domain)
        if record is None:
            return evaluate(from_domain, None, "", spf, dkim, {})
        orgs = {from_domain: await walker.org_domain(from_domain)}
        org = orgs[from_domain]
        others = {d.domain for d in dkim if d.result == DKIMResult.PASS}
        if spf is not None and spf.result == SPFResult.PASS:
            others.add(spf.domain)
        for ident in sorted(others):
            # An org domain is a suffix of its name: only names under ours can share it.
            if ident != from_domain and (ident == org or ident.endswith("." + org)):
                orgs[ident] = await walker.org_domain(ident)
    except TempError as e:
        return DMARCCheck(from_domain, DMARCResult.TEMPERROR, None, f"DNS: {e}")
    return evaluate(from_domain, record, found_at, spf, dkim, orgs)
