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
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

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
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return int(runner(_on_loop(main)))
        return 0
    finally:
        flush_log()


async def _on_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """`main()`, with the lines the loop's thread logs meanwhile written once per loop turn."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, LineHandler)]
    loop = asyncio.get_running_loop()
    for h in handlers:
        h.attach(loop)
    try:
        return await main()
    finally:
        for h in handlers:
            h.detach()


def flush_log() -> None:
    """Write out every line logged so far (the readiness marker comes after them)."""
    for h in logging.getLogger().handlers:
        h.flush()


# `json.dumps(..., ensure_ascii=False)` makes a new encoder for every call;
# this one, made once, gives the same text.
_JSON = json.JSONEncoder(ensure_ascii=False)


class _SecondText:
    """A log line's date and time to the second, formatted once per second.

    A `time.localtime` (or `gmtime`) and a `strftime` for every line were
    more than half of what formatting a line cost (1.7 of 2.9 us measured);
    the lines of one second share them.
    """

    def __init__(self, fmt: str, converter: Callable[[float], time.struct_time]) -> None:
        self._fmt = fmt
        self._converter = converter
        self._last: tuple[int, str] = (-1, "")  # one tuple: a thread sees both or neither

    def text(self, created: float) -> str:
        second, text = self._last
        # `int()` truncates as the converter does for the times a server sees (after 1970).
        if int(created) != second:
            text = time.strftime(self._fmt, self._converter(created))
            self._last = (int(created), text)
        return text


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
        self._second = _SecondText(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt:
            return super().formatTime(record, datefmt)
        # `default_msec_format`, "%s,%03d".
        return f"{self._second.text(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        # The steps of `logging.Formatter.format`, in its order.
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        if self._with_pid:
            s = (
                f"{record.asctime} {record.name}[{record.process:d}] "
                f"{record.levelname} {record.message}"
            )
        else:
            s = f"{record.asctime} {record.name} {record.levelname} {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + record.exc_text
        if record.stack_info:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + self.formatStack(record.stack_info)
        return s


class LineHandler(logging.StreamHandler[TextIO]):
    """Lines to stderr, those of the event loop's thread written once per loop turn.

    A line logged on the loop's thread (while `attach`ed to it) waits in a
    list; the first one of a turn schedules `flush` with `call_soon`, so the
    turn's lines go out in one write when the loop comes back to its ready
    callbacks, never later. A line from any other thread (the committer, an
    executor job), or with no loop attached, writes what waits first and
    itself after it, under the handler's lock: the order of the lines is the
    order they were logged in. What waits is written by `detach` (the end of
    the process's main coroutine, however it ends: SIGTERM's shutdown, an
    exception), by `flush` (`flush_log`, `run_process`'s end, and
    `logging.shutdown` at exit). A process killed outright (SIGKILL, a
    crash point's `os._exit`) loses at most the lines of the turn it was in.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Lines of this thread (the one running `loop`) wait for the end of the loop's turn."""
        with self.lock:  # type: ignore[union-attr]
            self._loop = loop
            self._loop_thread = threading.get_ident()

    def detach(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._loop = None
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        # `Handler.handle` holds the lock.
        try:
            line = self.format(record) + self.terminator
            loop = self._loop
            if loop is not None and threading.get_ident() == self._loop_thread:
                if not self._waiting:
                    loop.call_soon(self.flush)
                self._waiting.append(line)
                return
            if self._waiting:
                self._waiting.append(line)
                line = "".join(self._waiting)
                self._waiting.clear()
            self.stream.write(line)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                if self._waiting:
                    text = "".join(self._waiting)
                    self._waiting.clear()
                    self.stream.write(text)
                self.stream.flush()
            except RecursionError:
                raise
            except Exception:  # stderr gone (EPIPE, closed)
                # As with a line written at once (`Handler.handleError`): the
                # log's failure never stops the server, nor loops through the
                # event loop's exception handler (which logs).
                pass


class JSONFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object per line, for log shippers.

    `msg` is the same text the text format prints, so a grep (or a fail2ban
    filter) written for one finds the same events in the other.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondText("%Y-%m-%dT%H:%M:%S", time.gmtime)

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
    handler = LineHandler(sys.stderr)
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
