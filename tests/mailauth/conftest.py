"""Mail authentication tests: smtp-sink peers as remote MX hosts."""

from __future__ import annotations

from sink_fixture import smtp_sink  # noqa: F401
