"""The smtp_sink fixture: Postfix's smtp-sink on free loopback ports, stopped
after the test (the sink itself is `support.SmtpSink`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import SmtpSink


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Callable[..., SmtpSink]]:
    """`smtp_sink("-r", "RCPT")` starts a sink with those options; `port=` reuses a port."""
    if not os.path.exists(SmtpSink.BINARY):
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    sinks: list[SmtpSink] = []

    def start(*options: str, port: int | None = None) -> SmtpSink:
        sink = SmtpSink(tmp_path, extra=list(options), port=port)
        sinks.append(sink)
        return sink

    yield start
    for s in sinks:
        s.stop()
