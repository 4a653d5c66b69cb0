"""What the Prometheus endpoint counts (`[metrics] listen`), in every process of a node.

House rules:
- Callers are the adapters and the queue manager, at the points where they
  already log a decision: one call, next to the log line, that names what
  happened in the words of the log (listener, rule, mechanism, status).
- Off by default. Until `enable()` ran, every function here is one test of a
  module global and returns: an unmonitored server pays nothing.
- Several processes (the front, its workers, the queue manager) count into
  one directory per node, with prometheus_client's multiprocess mode (one
  memory-mapped file per process and kind). One scrape sums them all, so the
  endpoint gives the node's totals whichever process answers it.
- Counters only here; what is a level (queue length, oldest message, grants)
  is measured when scraped (`postvakt.server.metrics`), never kept twice.

Names follow the Postfix exporter's (`postfix_smtpd_connects_total` ->
`postvakt_smtpd_connects_total`), so that dashboards carry over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postvakt.metrics_counters import Metrics

# The environment variable prometheus_client's multiprocess mode reads.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(data_dir: Path) -> Path:
    """The node's directory of per-process counter files."""
    return data_dir / "metrics"


_m: Metrics | None = None


def enable(directory: Path) -> None:
    """Count from now on, into `directory`.

    The node's first process empties it: counters start at zero with the
    server, as any Prometheus counter of a restarted process does. Processes
    it starts (the queue manager, front workers) inherit the directory in
    their environment and add to it, however they are started; the files of
    one that died (a queue manager started again) keep counting in the totals.
    """
    global _m
    inherited = os.environ.get(MULTIPROC_ENV) == str(directory)
    if not inherited and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # Here, only when [metrics] listen is set: prometheus_client costs each
    # process 1.5-1.7 MB PSS on top of its other modules (8 MB alone; measured)
    # that an unmonitored server never needs.
    from postvakt.metrics_counters import make

    _m = make()


def enabled() -> bool:
    return _m is not None


def smtpd_connect(listener: str) -> None:
    if _m is not None:
        _m.smtpd_connects.labels(listener).inc()


def tls_handshake_failure(listener: str, error: str) -> None:
    """One failed handshake on any listener (the `error=` of its log line)."""
    if _m is not None:
        _m.tls_handshake_failures.labels(listener, error).inc()


def smtpd_decision(stage: str, verdict: str, rule: str, code: int) -> None:
    """One policy decision; a refusal also counts as a rejected command."""
    if _m is not None:
        _m.smtpd_decisions.labels(stage, verdict, rule or "-").inc()
        if code >= 400:
            _m.smtpd_rejects.labels(stage, str(code)).inc()


def smtpd_reject(stage: str, code: int) -> None:
    """A refusal that no policy rule made (DATA checks, queue errors, AUTH blocked)."""
    if _m is not None:
        _m.smtpd_rejects.labels(stage, str(code)).inc()


def smtpd_auth(listener: str, mechanism: str, ok: bool) -> None:
    if _m is not None:
        c = _m.sasl_successes if ok else _m.sasl_failures
        c.labels(listener, mechanism or "-").inc()


def pop3_connect(listener: str) -> None:
    if _m is not None:
        _m.pop3_connects.labels(listener).inc()


def pop3_login(listener: str, outcome: str) -> None:
    if _m is not None:
        _m.pop3_logins.labels(listener, outcome).inc()


def message_accepted(listener: str, hold: str | None) -> None:
    if _m is not None:
        _m.messages_accepted.labels(listener).inc()
        if hold:
            # The rule's name, not the detail that follows it: a label has few values.
            _m.messages_held.labels(hold.split(":", 1)[0]).inc()


def limit_hit(rule: str, verdict: str) -> None:
    if _m is not None:
        _m.limits_hit.labels(rule, verdict).inc()


def delivery(status: str, delay: float) -> None:
    if _m is not None:
        _m.deliveries.labels(status).inc()
        _m.delivery_delay.labels(status).observe(max(0.0, delay))
