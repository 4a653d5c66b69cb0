"""The decision on SPF/DMARC findings, as a table: (findings, modes) ->
(verdict, reply code, rule names and results in the trace). Pure: no DNS."""

from __future__ import annotations

import pytest

from postvakt.config import AuthChecksConfig, CheckMode
from postvakt.mailauth.headers import strip_auth_results
from postvakt.mailauth.results import (
    AuthResults,
    DMARCCheck,
    DMARCPolicy,
    DMARCResult,
    SPFCheck,
    SPFResult,
    authserv_id_of,
)
from postvakt.policy import Verdict
from postvakt.policy.authchecks import (
    DMARC_REJECT,
    SPF_FAIL,
    check_authentication,
    hold_reason,
)


def findings(
    spf: SPFResult | None, dmarc: DMARCResult | None, p: DMARCPolicy | None
) -> AuthResults:
    return AuthResults(
        spf_mailfrom=None
        if spf is None
        else SPFCheck("mailfrom", "a@x.example", "x.example", spf, "test"),
        dmarc=None if dmarc is None else DMARCCheck("x.example", dmarc, p, "test"),
    )


S, D = SPFResult, DMARCResult
# (spf, dmarc, p, spf_fail mode, dmarc_reject mode) -> (verdict, code, trace "rule=result" list)
TABLE: list[
    tuple[
        tuple[SPFResult | None, DMARCResult | None, DMARCPolicy | None, CheckMode, CheckMode],
        tuple[Verdict, int, list[str]],
    ]
] = [
    (
        (S.PASS, D.PASS, "reject", "reject", "reject"),
        (Verdict.PERMIT, 250, ["spf_fail=permit", "dmarc_reject=permit"]),
    ),
    ((S.FAIL, None, None, "reject", "off"), (Verdict.REJECT, 550, ["spf_fail=reject"])),
    (
        (S.FAIL, None, None, "warn", "off"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=off"]),
    ),
    (
        (S.FAIL, None, None, "off", "off"),
        (Verdict.PERMIT, 250, ["spf_fail=off", "dmarc_reject=off"]),
    ),
    (
        (S.SOFTFAIL, None, None, "reject", "off"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=off"]),
    ),
    (
        (S.NONE, None, None, "reject", "off"),
        (Verdict.PERMIT, 250, ["spf_fail=permit", "dmarc_reject=off"]),
    ),
    (
        (S.NEUTRAL, None, None, "reject", "off"),
        (Verdict.PERMIT, 250, ["spf_fail=permit", "dmarc_reject=off"]),
    ),
    (
        (S.PERMERROR, None, None, "reject", "off"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=off"]),
    ),
    # A DNS failure is never a permanent refusal: 451 only where the mode would refuse.
    (
        (S.TEMPERROR, None, None, "reject", "off"),
        (Verdict.DEFER, 451, ["spf_fail=defer", "dmarc_reject=off"]),
    ),
    (
        (S.TEMPERROR, None, None, "warn", "off"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=off"]),
    ),
    (
        (S.FAIL, D.FAIL, "reject", "warn", "reject"),
        (Verdict.REJECT, 550, ["spf_fail=warn", "dmarc_reject=reject"]),
    ),
    (
        (S.FAIL, D.FAIL, "reject", "warn", "warn"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=warn"]),
    ),
    (
        (S.FAIL, D.FAIL, "quarantine", "warn", "reject"),
        (Verdict.HOLD, 250, ["spf_fail=warn", "dmarc_reject=hold"]),
    ),
    (
        (S.FAIL, D.FAIL, "quarantine", "warn", "warn"),
        (Verdict.WARN, 250, ["spf_fail=warn", "dmarc_reject=warn"]),
    ),
    (
        (S.FAIL, D.FAIL, "none", "off", "reject"),
        (Verdict.WARN, 250, ["spf_fail=off", "dmarc_reject=warn"]),
    ),
    (
        (S.NONE, D.NONE, None, "off", "reject"),
        (Verdict.PERMIT, 250, ["spf_fail=off", "dmarc_reject=permit"]),
    ),
    (
        (S.PASS, D.TEMPERROR, None, "off", "reject"),
        (Verdict.DEFER, 451, ["spf_fail=off", "dmarc_reject=defer"]),
    ),
    (
        (S.PASS, D.TEMPERROR, "reject", "off", "reject"),
        (Verdict.DEFER, 451, ["spf_fail=off", "dmarc_reject=defer"]),
    ),
    (
        (S.PASS, D.TEMPERROR, "none", "off", "reject"),
        (Verdict.WARN, 250, ["spf_fail=off", "dmarc_reject=warn"]),
    ),
    (
        (S.PASS, D.TEMPERROR, "reject", "off", "warn"),
        (Verdict.WARN, 250, ["spf_fail=off", "dmarc_reject=warn"]),
    ),
    (
        (S.PASS, D.PERMERROR, None, "off", "reject"),
        (Verdict.WARN, 250, ["spf_fail=off", "dmarc_reject=warn"]),
    ),
    # An SPF refusal comes first; a DMARC refusal wins over an SPF deferral.
    ((S.FAIL, D.FAIL, "reject", "reject", "reject"), (Verdict.REJECT, 550, ["spf_fail=reject"])),
    (
        (S.TEMPERROR, D.FAIL, "reject", "reject", "reject"),
        (Verdict.REJECT, 550, ["spf_fail=defer", "dmarc_reject=reject"]),
    ),
]


def _id(row: object) -> str:
    (spf, dmarc, p, sm, dm), _ = row  # type: ignore[misc]
    return f"spf_{spf}-dmarc_{dmarc}-p_{p}-{SPF_FAIL}={sm}-{DMARC_REJECT}={dm}"


@pytest.mark.parametrize("row", TABLE, ids=[_id(r) for r in TABLE])
def test_decision_table(row: object) -> None:
    (spf, dmarc, p, spf_mode, dmarc_mode), (verdict, code, trace) = row  # type: ignore[misc]
    modes = AuthChecksConfig(dmarc_reject=dmarc_mode, spf_fail=spf_mode)
    decision = check_authentication(findings(spf, dmarc, p), modes)
    assert decision.verdict == verdict
    assert decision.reply.code == code
    assert [f"{s.rule}={s.result}" for s in decision.trace] == trace


def test_reject_replies_say_why() -> None:
    spf = check_authentication(findings(S.FAIL, None, None), AuthChecksConfig(spf_fail="reject"))
    assert str(spf.reply).startswith("550 5.7.23 <a@x.example>: SPF check failed")
    dmarc = check_authentication(
        findings(S.FAIL, D.FAIL, "reject"), AuthChecksConfig(dmarc_reject="reject")
    )
    assert str(dmarc.reply).startswith("550 5.7.1 Message rejected: x.example asks receivers")
    assert "p=reject" in str(dmarc.reply)
    temp = check_authentication(
        findings(S.TEMPERROR, None, None), AuthChecksConfig(spf_fail="reject")
    )
    assert str(temp.reply).startswith("451 4.7.0 ")


def test_quarantine_hold_reason_names_the_rule() -> None:
    held = check_authentication(
        findings(S.FAIL, D.FAIL, "quarantine"), AuthChecksConfig(dmarc_reject="reject")
    )
    reason = hold_reason(held)
    assert reason is not None and reason.startswith("dmarc_reject: DMARC fail")


@pytest.mark.parametrize(
    ("value", "ours"),
    [
        ("mx.pv.test; dkim=pass", True),
        ("MX.PV.TEST; spf=pass", True),
        ("mx.pv.test 1; spf=pass", True),
        ("(forged) mx.pv.test; spf=pass", True),
        ("mx.other.example; spf=pass", False),
        ("mx.pv.test.evil.example; spf=pass", False),
    ],
)
def test_forged_authentication_results_are_recognised(value: str, ours: bool) -> None:
    assert (authserv_id_of(value) == "mx.pv.test") is ours


def test_forged_authentication_results_removed_others_kept() -> None:
    msg = (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.pv.test;\r\n\tdkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: mx.other.example; spf=fail\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mx.pv.test; in the body, untouched\r\n"
    )
    out, n = strip_auth_results(msg, "mx.pv.test")
    assert n == 1
    assert out == (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.other.example; spf=fail\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mx.pv.test; in the body, untouched\r\n"
    )
