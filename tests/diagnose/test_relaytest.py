"""The relay battery itself: every trick of robustness anchors §2 is in it, each
attempt stops before DATA, and the verdict logic (relayed / local / ambiguous /
inconclusive) holds against scripted servers and a misconfigured postvakt."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from doctor_fakeserver import FakeServer, Script

import postvakt.diagnose.classify
import postvakt.diagnose.errortext
from postvakt.cli.diagnose import relaytest
from postvakt.diagnose.client import SMTP_ALLOWED
from postvakt.diagnose.relaytest import (
    AMBIGUOUS,
    EXIT_CLOSED,
    EXIT_INCONCLUSIVE,
    EXIT_OPEN,
    FOREIGN,
    LOCAL,
    RelayTestOptions,
    battery,
    run_relaytest,
)
from support import LOCAL_DOMAIN, start_server

OUTSIDE = "127.0.0.2"


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for s in started:
        s.stop()


# Every variant of robustness anchors §2 with what a correct server must make of
# it; a variant dropped from the battery, or one whose meaning changes, fails here.
F, LO, A = "foreign", "local", "ambiguous"
EXPECTED_TRICKS = {
    "R1": F,
    "R2": F,
    "R3-local-sender": F,
    "R3-host-sender": F,
    "R4": F,
    "R5-percent": A,
    "R5-percent-literal": A,
    "R6-bang": A,
    "R6-bang-literal": A,
    "R6-bang-bare": A,
    "R7-quoted": F,
    "R7-quoted-literal": F,
    "R8-quoted-bare": F,
    "R8-quoted-percent": F,
    "R9-double-at": F,
    "R9-double-at-literal": F,
    "R9-double-at-host": F,
    "R10-source-route": F,
    "R10-source-route-literal": F,
    "R11-route-to-local": LO,
    "R12-trailing-dot": F,
    "R12-case": F,
    "R13-local-case-dot": LO,
    "R14-prefix": F,
    "R14-suffix": F,
    "R14-subdomain": F,
    "R15-ipv4-literal": F,
    "R15-ipv6-literal": F,
    "R15-bare-ip": F,
    "R16-unqualified": LO,
    "R17-nul": F,
    "R17-cr": F,
    "R18-8bit-no-smtputf8": F,
    "R19-local-then-foreign": F,
    "S3-auth-param": F,
}


def test_battery_covers_every_variant_of_the_anchor() -> None:
    tricks = battery("pv.test", "x.example", "192.0.2.10", "mx.pv.test")
    ids = [t.id for t in tricks]
    assert len(ids) == len(set(ids))
    assert {t.id: t.meaning for t in tricks} == EXPECTED_TRICKS
    assert (FOREIGN, LOCAL, AMBIGUOUS) == (F, LO, A)
    by_id = {t.id: t for t in tricks}
    # The literal variants use the server's own address literal.
    for tid in ("R4", "R5-percent-literal", "R6-bang-literal", "R7-quoted-literal"):
        assert "[192.0.2.10]" in " ".join(by_id[tid].rcpts) + by_id[tid].mail, tid
    assert by_id["R9-double-at-literal"].rcpts == ("<v@x.example@[192.0.2.10]>",)
    assert by_id["R10-source-route-literal"].rcpts == ("<@[192.0.2.10]:v@x.example>",)


def test_accept_everything_server_is_an_open_relay(servers: list[FakeServer]) -> None:
    fake = FakeServer(Script())
    servers.append(fake)
    report = run_relaytest(
        RelayTestOptions("127.0.0.1", fake.port, "pv.test", source=OUTSIDE, timeout=3)
    )
    assert report.exit_code == EXIT_OPEN
    # Each variant on its own: every foreign one is reported relayed, every
    # ambiguous one ambiguous.
    assert {r.trick.id for r in report.relayed} == {t for t, m in EXPECTED_TRICKS.items() if m == F}
    assert {r.trick.id for r in report.ambiguous} == {
        t for t, m in EXPECTED_TRICKS.items() if m == A
    }
    assert set(fake.verbs()) <= SMTP_ALLOWED
    assert "DATA" not in fake.verbs()
    # One connection per trick, plus the identity probe and the control.
    assert fake.connections == len(report.results) + 2


def test_refusing_everything_is_inconclusive(servers: list[FakeServer]) -> None:
    fake = FakeServer(Script(rcpt_reply="554 5.7.1 Relay access denied"))
    servers.append(fake)
    # The control (a local recipient) is refused too: nothing can be concluded.
    report = run_relaytest(
        RelayTestOptions("127.0.0.1", fake.port, "pv.test", source=OUTSIDE, timeout=3)
    )
    assert report.relayed == []
    assert report.exit_code == EXIT_INCONCLUSIVE
    assert "control" in report.inconclusive


def test_naive_suffix_matching_is_caught(servers: list[FakeServer]) -> None:
    """A server that accepts any recipient ending in "pv.test>" relays to evilpv.test."""
    fake = FakeServer(Script(rcpt_accept=lambda path: path.lower().endswith("pv.test>")))
    servers.append(fake)
    report = run_relaytest(
        RelayTestOptions("127.0.0.1", fake.port, "pv.test", source=OUTSIDE, timeout=3)
    )
    assert report.exit_code == EXIT_OPEN
    relayed = {r.trick.id for r in report.relayed}
    assert "R14-prefix" in relayed and "R1" not in relayed


def test_exact_local_matching_is_closed(servers: list[FakeServer]) -> None:
    local = {
        "<postmaster@pv.test>",
        "<postmaster@pv.test.>",
        "<@x.example:postmaster@pv.test>",
        "<v>",
    }
    fake = FakeServer(Script(rcpt_accept=lambda path: path.lower() in local))
    servers.append(fake)
    report = run_relaytest(
        RelayTestOptions(
            "127.0.0.1", fake.port, "pv.test", foreign_domain="x.example", source=OUTSIDE, timeout=3
        )
    )
    assert report.relayed == [] and report.ambiguous == []
    assert report.exit_code == EXIT_CLOSED, report.to_text("en")
    assert {r.trick.id for r in report.results if r.outcome == "local_ok"} == {
        "R11-route-to-local",
        "R13-local-case-dot",
        "R16-unqualified",
    }


def test_server_that_refuses_the_stranger_at_the_banner_is_inconclusive(
    servers: list[FakeServer],
) -> None:
    fake = FakeServer(Script(banner="554 5.7.1 go away"))
    servers.append(fake)
    r = CliRunner().invoke(
        relaytest, [f"127.0.0.1:{fake.port}", "--domain", "pv.test", "--timeout", "3", "--json"]
    )
    assert r.exit_code == EXIT_INCONCLUSIVE
    doc = json.loads(r.stdout)
    assert doc["open_relay"] is False and doc["inconclusive"]


def test_postvakt_with_the_docker_gateway_mistake_is_flagged(tmp_path: Path) -> None:
    """networks = 127.0.0.0/8 makes 127.0.0.2 "own network": relaytest must say OPEN."""
    srv = start_server(
        tmp_path, users={f"alice@{LOCAL_DOMAIN}": "pw"}, relay={"networks": ["127.0.0.0/8"]}
    )
    try:
        r = CliRunner().invoke(
            relaytest,
            [
                f"127.0.0.1:{srv.port('smtp')}",
                "--domain",
                LOCAL_DOMAIN,
                "--local-user",
                "alice",
                "--source-address",
                OUTSIDE,
                "--json",
            ],
        )
        doc = json.loads(r.stdout)
        assert r.exit_code == EXIT_OPEN, r.output
        assert "R1" in doc["relayed"]
        # And even so nothing was queued: the battery stops before DATA.
        assert " queued id=" not in srv.log()
    finally:
        srv.stop()


def test_postvakt_closed_exit_code(tmp_path: Path) -> None:
    srv = start_server(tmp_path, users={f"alice@{LOCAL_DOMAIN}": "pw"})
    try:
        r = CliRunner().invoke(
            relaytest,
            [
                f"127.0.0.1:{srv.port('smtp')}",
                "--domain",
                LOCAL_DOMAIN,
                "--local-user",
                "alice",
                "--source-address",
                OUTSIDE,
            ],
        )
        assert r.exit_code == EXIT_CLOSED, r.output
        assert "Not an open relay" in r.output
    finally:
        srv.stop()


@pytest.mark.parametrize("module", [postvakt.diagnose.classify, postvakt.diagnose.errortext])
def test_offline_modules_are_pure(module: object) -> None:
    """--explain-error works offline: its modules import no network, process or clock."""
    path = Path(module.__file__)  # type: ignore[attr-defined]
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "os", "time", "subprocess"}
