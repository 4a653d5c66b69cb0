"""The server's log lines: the same text as the stdlib's formatter makes, each
line in the log by the time its effect is seen (a reply, the process's end),
however the process ends."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from postvakt.server.process import JSONFormatter, TextFormatter
from support import LOCAL_DOMAIN, OUTSIDE_IP, RawClient, Running, base_config, to_toml


def record(created: float, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("broken")
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord(
        "postvakt.smtp",
        logging.INFO,
        __file__,
        1,
        "queued %s to=<%s>",
        ("4Zx9", "bö@pv.test"),
        exc_info,
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
def test_lines_of_the_last_moment_reach_stderr(ending: str, tmp_path: Path) -> None:
    """The lines logged just before the process's main coroutine ends are in its
    stderr (before the traceback of an exception that ends it)."""
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


def test_a_decision_is_in_the_log_when_its_reply_arrives_and_at_sigterm(tmp_path: Path) -> None:
    """A real `postvakt serve`: the RCPT line is in the log once the client has
    the RCPT reply (lines held for one write per loop turn missed a quarter of
    them), and the lines of a session that ends as SIGTERM comes, and the
    shutdown's own lines, up to the last, are in its log."""
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir)))
    srv = Running(cfg_path, data_dir).start()
    try:
        missing = []
        for i in range(20):
            if i % 4 == 0:  # a few unknown recipients per session, under the error limit
                c = RawClient(srv.port("smtp"), OUTSIDE_IP)
                c.reply()
                c.cmd("EHLO client.example")
                c.cmd("MAIL FROM:<x@elsewhere.example>")
            assert c.cmd(f"RCPT TO:<nobody{i}@{LOCAL_DOMAIN}>").startswith("550")
            if f"to=<nobody{i}@{LOCAL_DOMAIN}>" not in srv.log():
                missing.append(i)
        assert missing == []
        c.sock.sendall(b"QUIT\r\n")
    finally:
        assert srv.stop() == 0
    log = srv.log().splitlines()
    assert any("disconnect from unknown[127.0.0.2] port=smtp" in x for x in log), log
    # The front logs it after the queue manager has stopped: the last line of all.
    assert log[-1].endswith(" postvakt INFO stopped"), log
