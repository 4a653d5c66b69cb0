"""What every process of the server sets up alike: its log, its event loop, its stop.

The front (`server/main.py`), a front worker and the queue manager (started
by the front through `python -m postvakt.server`, `server/__main__.py`) each
run one coroutine on one event loop, logging to stderr the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from postvakt import metrics
from postvakt.clock import PerSecond
from postvakt.config import Config, ConfigError
from postvakt.permissions import set_umask

# How long SIGTERM waits for transactions in flight before closing them.
SHUTDOWN_GRACE = 10.0
# Which event loop runs the server: "uvloop" (the default when installed) or
# "asyncio"; for telling a loop's bug from ours, and for tests of both.
EVENT_LOOP_ENV = "POSTVAKT_EVENT_LOOP"


def run_process(config: Config, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Set up the process (umask, log, metrics) and run `main()` on its event loop."""
    set_umask()
    setup_logging(config.log_level, config.log.format, with_pid=config.server.workers > 1)
    if config.metrics.listen is not None:
        # The front starts the node's counts afresh; the processes it starts add to them.
        metrics.enable(metrics.metrics_dir(config.data_dir))
    runner = event_loop_runner(os.environ.get(EVENT_LOOP_ENV, ""))
    with contextlib.suppress(KeyboardInterrupt):
        return int(runner(main()))
    return 0


# `json.dumps(..., ensure_ascii=False)` makes a new encoder for every call;
# this one, made once, gives the same text.
_JSON = json.JSONEncoder(ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text format, `%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s`
    (the pid with several processes): byte for byte what `logging.Formatter`
    makes of that format, with the date and time formatted once per second and
    the line built by one f-string instead of `%` on the record's `__dict__`.
    """

    def __init__(self, *, with_pid: bool) -> None:
        pid = "[%(process)d]" if with_pid else ""
        super().__init__(f"%(asctime)s %(name)s{pid} %(levelname)s %(message)s")
        self._with_pid = with_pid
        fmt, convert = self.default_time_format, self.converter
        self._second = PerSecond(lambda t: time.strftime(fmt, convert(t)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt:
            return super().formatTime(record, datefmt)
        # `default_msec_format`, "%s,%03d".
        return f"{self._second.text(record.created)},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        # `logging.Formatter.format` calls this after setting `message` and
        # `asctime`, and adds an exception or stack itself.
        if self._with_pid:
            return (
                f"{record.asctime} {record.name}[{record.process:d}] "
                f"{record.levelname} {record.message}"
            )
        return f"{record.asctime} {record.name} {record.levelname} {record.message}"


class JSONFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object per line, for log shippers.

    `msg` is the same text the text format prints, so a grep (or a fail2ban
    filter) written for one finds the same events in the other.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = PerSecond(lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)))

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._second.text(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _JSON.encode(entry)


def setup_logging(level: str, fmt: str = "text", *, with_pid: bool = False) -> None:
    """`fmt` is `[log] format`; with several processes (`[server] workers`) each
    text line names its process (JSON lines always carry `pid`)."""
    # Only what the format names is collected for each record (the logging
    # HOWTO's "Optimization"): a log line costs half (52 -> 25 us measured for
    # the "queued" line) without the thread and caller lookups.
    logging.logThreads = False
    logging.logProcesses = with_pid or fmt == "json"
    logging.logMultiprocessing = False
    logging._srcfile = None
    # Each line is written as it is logged. Holding the event loop's lines
    # for one write per loop turn was tried and dropped (bench/README.md,
    # "Where the CPU per message goes"): under 0.3% of the front's CPU, and
    # a client then had its reply before the decision's line was in the log
    # (27% of RCPT replies, measured).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(with_pid=with_pid))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    if choice not in ("", "uvloop", "asyncio"):
        raise ConfigError(
            EVENT_LOOP_ENV, EVENT_LOOP_ENV, f"{choice!r} is not one of uvloop, asyncio"
        )
    if choice != "asyncio":
        try:
            # Here, not at the top: uvloop is optional (not on every platform),
            # and which loop runs is the environment's choice, made at start.
            import uvloop

            return uvloop.run
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    EVENT_LOOP_ENV, EVENT_LOOP_ENV, "uvloop is not installed"
                ) from None
    return asyncio.run
