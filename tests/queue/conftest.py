"""Queue tests: helpers importable as plain modules, and smtp-sink peers."""

from __future__ import annotations

from sink_fixture import smtp_sink  # noqa: F401
