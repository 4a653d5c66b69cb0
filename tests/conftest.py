"""Suite-wide hooks: with POSTVAKT_STRICT_SKIPS=1 (set by .ci/run) a test that
skips for a reason not on the allow-list below fails the run.

CI installs every package the tests use, so "X is not installed" there means a
broken CI script, not a machine that cannot have X: such a skip must not hide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

# Skips that may happen even where .ci/run did its job. Keep this list short;
# each entry says why the part cannot be had.
ALLOWED_SKIPS = [
    # The embedded default config listens on fixed ports (2525, ...): another
    # program on the machine may hold one of them.
    re.compile(r"port \d+ of the embedded default is in use on this machine"),
    # Tests that start processes as another user or a private Postfix need
    # root; CI runs as root, a developer's run may not.
    re.compile(r"needs root"),
    # .ci/run installs the PostgreSQL client and Dovecot's driver, but no
    # database server: the PostgreSQL tests use the one the machine runs.
    re.compile(r"no PostgreSQL on 127\.0\.0\.1:5432"),
]

STRICT = os.environ.get("POSTVAKT_STRICT_SKIPS") == "1"
_unexpected: list[str] = []


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _check(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (STRICT and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if not any(p.search(reason) for p in ALLOWED_SKIPS):
        _unexpected.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _check(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _check(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unexpected:
        terminalreporter.section("skips not on the allow-list (tests/conftest.py)", red=True)
        for line in _unexpected:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _same_umask_for_every_test() -> Iterator[None]:
    """Every postvakt command sets the process umask to 027 (files private from
    birth). A test that runs a command in-process (click's CliRunner) would
    leave that umask to every later test of the same process, whose files (a
    config written for a server that runs as another user) would then be
    unreadable to that user: put it back after each test."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)
