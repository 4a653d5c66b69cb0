"""What to do with mail from outside whose SPF or DMARC does not check out.

Rules of the house:
- Pure: the findings (`AuthResults`, looked up by `postvakt.mailauth`) and
  the `[auth_checks]` modes in, a `Decision` with its trace out.
- Only mail from outside is judged: port 25 and a client on no road (not
  logged in, not in `networks` or `clients`, no POP-before-SMTP grant).
  Our own users' mail is never refused for what DNS says of its domain.
- A rule's name is its config key: `spf_fail`, `dmarc_reject`.
- SPF decides on the MAIL FROM identity (postmaster@HELO for `<>`, RFC 7208
  §2.4); the HELO identity's own result is recorded, never refused on:
  HELO names are too often wrong on honest servers.
- Only a definite "fail" refuses; a DNS failure that might have passed
  (temperror) is `451 4.7.0` when the mode would refuse, never a 5xx; every
  other finding is recorded and accepted.
- DMARC `p=quarantine` in "reject" mode holds the message (the hold queue,
  `postvakt queue release` delivers it): kept apart for the admin as the
  domain's owner asks, and never lost. In "warn" mode it is only recorded.
"""

from __future__ import annotations

from postvakt.mailauth.results import (
    AuthResults,
    DMARCResult,
    SPFResult,
)
from postvakt.policy.limits import HOLD
from postvakt.policy.settings import AuthCheckModes
from postvakt.policy.types import (
    DEFER,
    NO_MATCH,
    OFF,
    PERMIT,
    REJECT,
    WARN,
    Decision,
    Step,
    Verdict,
)
from postvakt.reply import Reply

AUTH_CHECKS = "auth_checks"
SPF_FAIL = "spf_fail"
DMARC_REJECT = "dmarc_reject"
AUTH_CHECK_RULES = (AUTH_CHECKS, SPF_FAIL, DMARC_REJECT)

# After DATA the SMTP layer sends its own "queued as"; this stands for "no objection".
CHECKS_OK = Reply(250, "2.0.0", "Ok")
# RFC 7372 §3.2: X.7.23 "SPF validation failed".
SPF_FAILED_CODE = (550, "5.7.23")
# RFC 3463 X.7.1: delivery not authorized, message refused (the and
# common practice's code for DMARC p=reject).
DMARC_REJECTED_CODE = (550, "5.7.1")
# RFC 3463 X.7.0: a temporary security failure; the client tries again later.
TEMPORARY_CODE = (451, "4.7.0")

# SPF results that say nothing against the sender.
_SPF_OK = (SPFResult.PASS, SPFResult.NONE, SPFResult.NEUTRAL)


def not_checked(why: str) -> Decision:
    """Mail the checks do not apply to (our own clients, the submission ports)."""
    step = Step(AUTH_CHECKS, NO_MATCH, why)
    return Decision(Verdict.PERMIT, CHECKS_OK, AUTH_CHECKS, (step,))


def _spf_step(results: AuthResults, modes: AuthCheckModes) -> tuple[Step, Reply | None]:
    mode = modes.spf_fail
    spf = results.spf_mailfrom
    if mode == "off":
        return Step(SPF_FAIL, OFF, "[auth_checks] spf_fail = off: SPF does not decide"), None
    if spf is None:
        return Step(SPF_FAIL, NO_MATCH, "no sender identity to check"), None
    what = f"SPF {spf.result} for {spf.sender} ({spf.detail})"
    if spf.result in _SPF_OK:
        return Step(SPF_FAIL, PERMIT, what), None
    if spf.result == SPFResult.FAIL and mode == "reject":
        code, enhanced = SPF_FAILED_CODE
        text = f"<{spf.sender}>: SPF check failed: {spf.detail}"
        return Step(SPF_FAIL, REJECT, what), Reply(code, enhanced, text)
    if spf.result == SPFResult.TEMPERROR and mode == "reject":
        code, enhanced = TEMPORARY_CODE
        text = f"SPF check of {spf.domain} could not be completed ({spf.detail}), try again later"
        return Step(SPF_FAIL, DEFER, what), Reply(code, enhanced, text)
    mild = "" if spf.result == SPFResult.FAIL else ": only a fail refuses"
    return Step(SPF_FAIL, WARN, f"{what} (recorded{mild})"), None


def _dmarc_step(results: AuthResults, modes: AuthCheckModes) -> tuple[Step, Reply | None, bool]:
    """The step, a refusal if any, and whether the message is held."""
    mode = modes.dmarc_reject
    m = results.dmarc
    if mode == "off":
        return (
            Step(DMARC_REJECT, OFF, "[auth_checks] dmarc_reject = off: DMARC does not decide"),
            None,
            False,
        )
    if m is None:
        return Step(DMARC_REJECT, NO_MATCH, "no message to judge"), None, False
    policy = f"p={m.policy}" if m.policy else "no policy"
    what = f"DMARC {m.result} for From: {m.from_domain or '(none)'} ({policy}; {m.detail})"
    if m.result in (DMARCResult.PASS, DMARCResult.NONE):
        return Step(DMARC_REJECT, PERMIT, what), None, False
    if m.result == DMARCResult.FAIL:
        if mode == "reject" and m.policy == "reject":
            code, enhanced = DMARC_REJECTED_CODE
            text = (
                f"Message rejected: {m.from_domain} asks receivers to reject mail that fails"
                f" DMARC (p=reject): {m.detail}"
            )
            return Step(DMARC_REJECT, REJECT, what), Reply(code, enhanced, text), False
        if mode == "reject" and m.policy == "quarantine":
            return Step(DMARC_REJECT, HOLD, f"{what}: held for the admin"), None, True
        return Step(DMARC_REJECT, WARN, f"{what} (recorded)"), None, False
    if m.result == DMARCResult.TEMPERROR and mode == "reject" and m.policy != "none":
        code, enhanced = TEMPORARY_CODE
        text = (
            f"DMARC check of {m.from_domain} could not be completed ({m.detail}), try again later"
        )
        return Step(DMARC_REJECT, DEFER, what), Reply(code, enhanced, text), False
    return Step(DMARC_REJECT, WARN, f"{what} (recorded)"), None, False


def check_authentication(results: AuthResults, modes: AuthCheckModes) -> Decision:
    """End of DATA, mail from outside: SPF first, then DMARC; a refusal wins over a hold."""
    spf_step, spf_reply = _spf_step(results, modes)
    trace = [spf_step]
    if spf_reply is not None and spf_step.result == REJECT:
        return Decision(Verdict.REJECT, spf_reply, SPF_FAIL, tuple(trace))
    dmarc_step, dmarc_reply, held = _dmarc_step(results, modes)
    trace.append(dmarc_step)
    if dmarc_reply is not None and dmarc_step.result == REJECT:
        return Decision(Verdict.REJECT, dmarc_reply, DMARC_REJECT, tuple(trace))
    if spf_reply is not None:
        return Decision(Verdict.DEFER, spf_reply, SPF_FAIL, tuple(trace))
    if dmarc_reply is not None:
        return Decision(Verdict.DEFER, dmarc_reply, DMARC_REJECT, tuple(trace))
    if held:
        return Decision(Verdict.HOLD, CHECKS_OK, DMARC_REJECT, tuple(trace))
    for step in trace:
        if step.result == WARN:
            return Decision(Verdict.WARN, CHECKS_OK, step.rule, tuple(trace))
    return Decision(Verdict.PERMIT, CHECKS_OK, AUTH_CHECKS, tuple(trace))


def hold_reason(decision: Decision) -> str | None:
    """The text kept in the envelope of a message held by DMARC quarantine."""
    if decision.verdict is not Verdict.HOLD:
        return None
    for step in decision.trace:
        if step.rule == DMARC_REJECT:
            return f"{DMARC_REJECT}: {step.detail}"
    return DMARC_REJECT
