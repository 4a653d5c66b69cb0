"""The server's log lines: the same text as the stdlib's formatter makes, and
every line written, in the order logged, whether from the event loop's thread
(written once per loop turn) or from another thread, and at the end of a
process however its main coroutine ends."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postvakt.server.process import JSONFormatter, LineHandler, TextFormatter
from support import LOCAL_DOMAIN, OUTSIDE_IP, RawClient, Running, base_config, to_toml

LOOPS = ["asyncio", "uvloop"]


def record(created: float, msg: str = "queued %s to=<%s>", exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("broken")
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord(
        "postvakt.smtp", logging.INFO, __file__, 1, msg, ("4Zx9", "bö@pv.test"), exc_info
    )
    r.created = created
    r.msecs = int((created - int(created)) * 1000) + 0.0
    r.process = 4242
    return r


# Times over a few seconds, in steps that fall on and off second boundaries.
TIMES = [1_780_000_000 + i * 0.137 for i in range(60)] + [1_780_000_010.0, 1_780_000_010.999]


@pytest.mark.parametrize("with_pid", [False, True], ids=["one-process", "workers"])
def test_text_lines_are_the_stdlib_formatters(with_pid: bool) -> None:
    pid = "[%(process)d]" if with_pid else ""
    stdlib = logging.Formatter(f"%(asctime)s %(name)s{pid} %(levelname)s %(message)s")
    ours = TextFormatter(with_pid=with_pid)
    for t in TIMES:
        assert ours.format(record(t)) == stdlib.format(record(t))
    assert ours.format(record(TIMES[0], exc=True)) == stdlib.format(record(TIMES[0], exc=True))
    assert "Traceback" in ours.format(record(TIMES[0], exc=True))


def test_json_lines_are_as_before() -> None:
    def before(r: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.created))
                + f".{int(r.msecs):03d}Z",
                "level": r.levelname.lower(),
                "logger": r.name,
                "pid": r.process,
                "msg": r.getMessage(),
            },
            ensure_ascii=False,
        )

    ours = JSONFormatter()
    for t in TIMES:
        assert ours.format(record(t)) == before(record(t))


class Writes(io.StringIO):
    """A stream that keeps each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, LineHandler, Writes]]:
    stream = Writes()
    handler = LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"postvakt.test-lines.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield log, handler, stream
    log.removeHandler(handler)


def run_on(loop_name: str, main: Callable[[], object]) -> None:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())  # type: ignore[arg-type]
    else:
        asyncio.run(main())  # type: ignore[arg-type]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_lines_of_the_loop_and_of_threads_in_order(
    loop_name: str, lines: tuple[logging.Logger, LineHandler, Writes]
) -> None:
    log, handler, stream = lines
    expected: list[str] = []

    def thread_logs(tag: str) -> None:
        for i in range(50):
            log.info("%s %d", tag, i)
            expected.append(f"{tag} {i}")

    async def main() -> None:
        handler.attach(asyncio.get_running_loop())
        try:
            for turn in range(20):
                for i in range(10):
                    log.info("loop %d.%d", turn, i)
                    expected.append(f"loop {turn}.{i}")
                if turn % 5 == 2:
                    # Another thread logs while the loop's lines of this turn wait:
                    # they go out first.
                    t = threading.Thread(target=thread_logs, args=(f"thread {turn}",))
                    t.start()
                    t.join()
                    log.info("after thread %d", turn)
                    expected.append(f"after thread {turn}")
                if turn % 5 == 3:
                    await asyncio.get_running_loop().run_in_executor(
                        None, thread_logs, f"executor {turn}"
                    )
                await asyncio.sleep(0)
            log.info("last")
            expected.append("last")
        finally:
            handler.detach()

    run_on(loop_name, main)
    assert stream.getvalue() == "".join(f"{x}\n" for x in expected)
    # The loop's ten lines of a turn went out together, in one write.
    assert "".join(f"loop 0.{i}\n" for i in range(10)) in stream.writes
    assert "".join(f"loop 19.{i}\n" for i in range(10)) in stream.writes


def test_without_a_loop_each_line_is_written_at_once(
    lines: tuple[logging.Logger, LineHandler, Writes],
) -> None:
    log, _, stream = lines
    log.info("one")
    assert stream.getvalue() == "one\n"
    log.info("two")
    assert stream.writes == ["one\n", "two\n"]


class Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_stderr_gone_does_not_stop_the_loop(loop_name: str) -> None:
    handler = LineHandler(Broken())
    log = logging.getLogger("postvakt.test-lines.broken")
    log.propagate = False
    log.addHandler(handler)
    errors: list[dict[str, object]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        handler.attach(loop)
        try:
            for turn in range(3):
                log.warning("turn %d", turn)
                await asyncio.sleep(0)
            log.warning("waits for the end")
        finally:
            handler.detach()

    try:
        run_on(loop_name, main)
    finally:
        log.removeHandler(handler)
    assert errors == []


SCRIPT = """
import asyncio, logging, sys
from postvakt import config
from postvakt.server.process import run_process

log = logging.getLogger("postvakt")

async def main() -> int:
    for i in range(3):
        log.info("line %d", i)
    if sys.argv[1] == "raise":
        raise RuntimeError("the end")
    if sys.argv[1] == "exit":
        sys.exit(3)
    return 0

sys.exit(run_process(config.embedded_default(), main))
"""


@pytest.mark.parametrize("ending", ["return", "raise", "exit"])
def test_lines_of_the_last_turn_reach_stderr(ending: str, tmp_path: Path) -> None:
    """The lines logged by the loop's last turn are written before the process ends
    (and before the traceback of an exception that ends it)."""
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(SCRIPT))
    r = subprocess.run(
        [sys.executable, str(script), ending],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    found = [x.split(" INFO ", 1)[1] for x in r.stderr.splitlines() if " INFO " in x]
    assert found == ["line 0", "line 1", "line 2"], r.stderr
    if ending == "raise":
        assert r.stderr.index("line 2") < r.stderr.index("Traceback"), r.stderr
        assert "RuntimeError: the end" in r.stderr
    assert r.returncode == {"return": 0, "raise": 1, "exit": 3}[ending], r.stderr


def test_a_line_just_before_sigterm_is_in_stderr(tmp_path: Path) -> None:
    """A real `postvakt serve`: the lines of a session that ends as SIGTERM
    comes, and the shutdown's own lines, up to the last, are in its log."""
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir)))
    srv = Running(cfg_path, data_dir).start()
    try:
        c = RawClient(srv.port("smtp"), OUTSIDE_IP)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<x@elsewhere.example>")
        c.cmd(f"RCPT TO:<nobody@{LOCAL_DOMAIN}>")
        c.sock.sendall(b"QUIT\r\n")
    finally:
        assert srv.stop() == 0
    log = srv.log().splitlines()
    assert any("disconnect from unknown[127.0.0.2] port=smtp" in x for x in log), log
    # The front logs it after the queue manager has stopped: the last line of all.
    assert log[-1].endswith(" postvakt INFO stopped"), log
