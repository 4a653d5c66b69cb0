"""Pure policy decisions: relaying, sender identity and limits, each with a trace.

Rules of the house:
- Pure functions of (client, address, settings, directory view): no I/O, no
  clock (the client carries `now`), no sockets. A test enforces the imports.
- The settings are the small views of `policy/settings.py`, each naming what
  a decision reads; a `Config` satisfies them, and policy never imports it.
- A decision is a `Decision(verdict, reply, rule, trace)`. The log line,
  `postvakt explain` and the reply's explanation all come from that trace.
- A rule's name is the same string in config, trace, log and test ids.
- The `AUTH=` MAIL parameter and anything else the client merely claims is
  never an input; only what the server verified is in `Client`.
"""

from __future__ import annotations

from postvakt.policy.limits import (
    LimitsConfig,
    Quota,
    Subject,
    Usage,
    check_mail_limits,
    check_rcpt_limits,
    subject_for,
)
from postvakt.policy.relay import (
    LOCAL_DOMAIN,
    REJECT_UNAUTH_DESTINATION,
    RELAY_DOMAIN,
    RELAY_RULES,
    check_rcpt,
)
from postvakt.policy.roads import (
    PERMIT_AUTHENTICATED,
    PERMIT_CLIENTS,
    PERMIT_NETWORKS,
    PERMIT_POP_BEFORE_SMTP,
    ROADS,
)
from postvakt.policy.sender import (
    HEADER_FROM,
    NULL_SENDER,
    SENDER_AUTHENTICATED,
    SENDER_CLIENTS,
    SENDER_NETWORKS,
    SENDER_POP_BEFORE_SMTP,
    SENDER_RULES,
    SENDER_UNAUTHENTICATED_LOCAL,
    check_header_from,
    check_sender,
)
from postvakt.policy.types import (
    GRANT_PROTOCOLS,
    PORTS,
    Client,
    Decision,
    DirectoryView,
    Grant,
    GrantProtocol,
    Port,
    Result,
    Step,
    Verdict,
    grant_protocol,
    port_kind,
)

__all__ = [
    "GRANT_PROTOCOLS",
    "HEADER_FROM",
    "LOCAL_DOMAIN",
    "NULL_SENDER",
    "PERMIT_AUTHENTICATED",
    "PERMIT_CLIENTS",
    "PERMIT_NETWORKS",
    "PERMIT_POP_BEFORE_SMTP",
    "PORTS",
    "REJECT_UNAUTH_DESTINATION",
    "RELAY_DOMAIN",
    "RELAY_RULES",
    "ROADS",
    "SENDER_AUTHENTICATED",
    "SENDER_CLIENTS",
    "SENDER_NETWORKS",
    "SENDER_POP_BEFORE_SMTP",
    "SENDER_RULES",
    "SENDER_UNAUTHENTICATED_LOCAL",
    "Client",
    "Decision",
    "DirectoryView",
    "Grant",
    "GrantProtocol",
    "Port",
    "Result",
    "LimitsConfig",
    "Quota",
    "Step",
    "Subject",
    "Usage",
    "Verdict",
    "check_header_from",
    "grant_protocol",
    "port_kind",
    "check_mail_limits",
    "check_rcpt",
    "check_rcpt_limits",
    "check_sender",
    "subject_for",
]
