"""The counters of `postvakt.metrics`, made when `[metrics] listen` is set.

A module of its own so that prometheus_client (1.5-1.7 MB PSS in each
process on top of its other modules, measured) is loaded only by a node that
serves the endpoint: `metrics.enable()` imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram, values

NAMESPACE = "postvakt"
# Delivery delay buckets (seconds): a local delivery takes well under a
# second; a remote one seconds; a deferred one minutes to days (the default
# give-up time is 5 days, Postfix's maximal_queue_lifetime).
DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)


@dataclass(frozen=True)
class Metrics:
    smtpd_connects: Counter
    pop3_connects: Counter
    tls_handshake_failures: Counter
    smtpd_decisions: Counter
    smtpd_rejects: Counter
    sasl_successes: Counter
    sasl_failures: Counter
    pop3_logins: Counter
    messages_accepted: Counter
    messages_held: Counter
    limits_hit: Counter
    deliveries: Counter
    delivery_delay: Histogram


def make() -> Metrics:
    """The counters, memory-mapped into the directory of PROMETHEUS_MULTIPROC_DIR."""
    # Decided per metric when it is made: made after this line, they are mmap-backed.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    ns = NAMESPACE
    return Metrics(
        smtpd_connects=Counter(
            "smtpd_connects", "SMTP connections accepted", ["listener"], namespace=ns
        ),
        pop3_connects=Counter(
            "pop3_connects", "POP3 connections accepted", ["listener"], namespace=ns
        ),
        tls_handshake_failures=Counter(
            "tls_handshake_failures",
            "TLS handshakes that failed, by listener and OpenSSL reason (or error class)",
            ["listener", "error"],
            namespace=ns,
        ),
        smtpd_decisions=Counter(
            "smtpd_decisions",
            "Policy decisions at MAIL, RCPT and DATA, by the rule that decided",
            ["stage", "verdict", "rule"],
            namespace=ns,
        ),
        smtpd_rejects=Counter(
            "smtpd_messages_rejected",
            "Commands refused by policy or protocol checks, by stage and reply code",
            ["stage", "code"],
            namespace=ns,
        ),
        sasl_successes=Counter(
            "smtpd_sasl_authentication_successes",
            "SMTP AUTH logins that succeeded",
            ["listener", "mechanism"],
            namespace=ns,
        ),
        sasl_failures=Counter(
            "smtpd_sasl_authentication_failures",
            "SMTP AUTH logins that failed or were refused (too many failures)",
            ["listener", "mechanism"],
            namespace=ns,
        ),
        pop3_logins=Counter(
            "pop3_logins",
            "POP3 logins by outcome (ok, failed, refused, delayed, in_use)",
            ["listener", "outcome"],
            namespace=ns,
        ),
        messages_accepted=Counter(
            "smtpd_messages_accepted",
            "Messages committed to the queue (including held ones)",
            ["listener"],
            namespace=ns,
        ),
        messages_held=Counter(
            "smtpd_messages_held",
            "Messages accepted into the hold queue, by reason",
            ["reason"],
            namespace=ns,
        ),
        limits_hit=Counter(
            "limits_hit",
            "Outbound limits reached, by limit and outcome (defer, reject, hold)",
            ["rule", "verdict"],
            namespace=ns,
        ),
        deliveries=Counter(
            "deliveries",
            "Delivery attempts per recipient, by status (sent, deferred, bounced, expired)",
            ["status"],
            namespace=ns,
        ),
        delivery_delay=Histogram(
            "delivery_delay_seconds",
            "Time from receipt to each recipient's delivery attempt, by status",
            ["status"],
            namespace=ns,
            buckets=DELAY_BUCKETS,
        ),
    )
