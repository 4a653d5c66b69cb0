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


class JSONFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object per line, for log shippers.

    `msg` is the same text the text format prints, so a grep (or a fail2ban
    filter) written for one finds the same events in the other.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        pid = "[%(process)d]" if with_pid else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(name)s{pid} %(levelname)s %(message)s")
        )
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
