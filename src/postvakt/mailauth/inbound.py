"""The checks on mail from outside: SPF (MAIL FROM and HELO), DKIM, DMARC.

One coroutine, `check_inbound`, looks up and verifies what `[auth_checks]`
asks for and returns the findings (`AuthResults`); what to do with them is
the policy's (`policy/authchecks.py`). Each check has a deadline of its own,
so a DNS server that answers slowly makes a temperror, never a hung session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from postvakt.config import AuthChecksConfig, Config
from postvakt.dnsclient import DNSClient
from postvakt.mailauth import dkimverify, dmarc, spf
from postvakt.mailauth.results import (
    AUTH_RESULTS,
    AuthResults,
    DKIMCheck,
    DKIMResult,
    DMARCCheck,
    DMARCResult,
    SPFCheck,
    SPFIdentity,
    SPFResult,
    authentication_results,
)
from postvakt.policy.authchecks import check_authentication, hold_reason
from postvakt.policy.types import Decision

# A check that takes longer than this is a temperror: well inside the 10
# minutes a client waits for the reply to the end of DATA (RFC 5321
# §4.5.3.2.6), and near what RFC 7208 §4.6.4 suggests for a whole SPF
# evaluation (at least 20 s).
CHECK_DEADLINE = 20.0


@dataclass(frozen=True)
class Inbound:
    """What the server saw of a message from outside."""

    ip: str
    helo: str
    mail_from: str  # "" for <>
    # The message as received (None: not available, e.g. `explain` without --message).
    message: bytes | None = None
    from_domains: tuple[str, ...] = ()


def _helo_domain(helo: str) -> str:
    h = helo.strip().rstrip(".").lower()
    return "" if h.startswith("[") else h


async def _spf(dns: DNSClient, identity: SPFIdentity, ip: str, sender: str, helo: str) -> SPFCheck:
    domain = sender.rpartition("@")[2].lower()
    try:
        out = await asyncio.wait_for(spf.check_host(dns, ip, domain, sender, helo), CHECK_DEADLINE)
    except TimeoutError:
        out = spf.Outcome(SPFResult.TEMPERROR, f"no answer within {CHECK_DEADLINE:g} s")
    return SPFCheck(identity, sender, domain, out.result, out.detail)


async def _dkim(dns: DNSClient, message: bytes) -> tuple[DKIMCheck, ...]:
    try:
        return await asyncio.wait_for(dkimverify.verify(dns, message), CHECK_DEADLINE)
    except TimeoutError:
        return (
            DKIMCheck("", "", "", DKIMResult.TEMPERROR, f"no answer within {CHECK_DEADLINE:g} s"),
        )


async def _dmarc(
    dns: DNSClient,
    from_domains: Sequence[str],
    spf_check: SPFCheck | None,
    dkim: Sequence[DKIMCheck],
) -> DMARCCheck:
    try:
        return await asyncio.wait_for(
            dmarc.check(dns, from_domains, spf_check, dkim), CHECK_DEADLINE
        )
    except TimeoutError:
        domain = from_domains[0] if from_domains else ""
        return DMARCCheck(
            domain, DMARCResult.TEMPERROR, None, f"no answer within {CHECK_DEADLINE:g} s"
        )


async def check_inbound(dns: DNSClient, modes: AuthChecksConfig, msg: Inbound) -> AuthResults:
    """Run the checks `modes` turns on; SPF and DKIM concurrently, then DMARC on both."""
    if not modes.enabled:
        return AuthResults()
    helo = _helo_domain(msg.helo)
    # RFC 7208 §2.4: with a null sender, the MAIL FROM identity is postmaster@HELO.
    mail_sender = msg.mail_from or (f"postmaster@{helo}" if helo else "")
    jobs = []
    if mail_sender:
        jobs.append(_spf(dns, "mailfrom", msg.ip, mail_sender, msg.helo))
    if helo and msg.mail_from:
        jobs.append(_spf(dns, "helo", msg.ip, f"postmaster@{helo}", msg.helo))
    want_dmarc = modes.dmarc_reject != "off"
    spf_jobs = asyncio.gather(*jobs)
    dkim: tuple[DKIMCheck, ...] = ()
    if want_dmarc and msg.message is not None:
        spf_checks, dkim = await asyncio.gather(spf_jobs, _dkim(dns, msg.message))
    else:
        spf_checks = await spf_jobs
    mailfrom = next((c for c in spf_checks if c.identity == "mailfrom"), None)
    helo_check = next((c for c in spf_checks if c.identity == "helo"), None)
    dmarc_check = None
    if want_dmarc and msg.message is not None:
        # RFC 7489 §4.1: SPF's domain for DMARC is the MAIL FROM one (HELO's for <>).
        dmarc_check = await _dmarc(dns, msg.from_domains, mailfrom, dkim)
    return AuthResults(
        spf_mailfrom=mailfrom,
        spf_helo=helo_check,
        dkim=dkim,
        dkim_checked=want_dmarc and msg.message is not None,
        dmarc=dmarc_check,
    )


@dataclass(frozen=True)
class Judgement:
    """The findings, the policy's decision on them, and the header that records them."""

    results: AuthResults
    decision: Decision
    header: str  # "Authentication-Results: ..." (one line, no CRLF)
    hold: str | None  # the hold reason for a DMARC quarantine


async def judge(dns: DNSClient, config: Config, msg: Inbound) -> Judgement:
    """Check a message from outside and decide, as the live server and `explain` do."""
    results = await check_inbound(dns, config.auth_checks, msg)
    decision = check_authentication(results, config.auth_checks)
    header = f"{AUTH_RESULTS}: {authentication_results(config.hostname, results)}"
    return Judgement(results, decision, header, hold_reason(decision))
