"""Nodes on one PostgreSQL directory: a change made with node A's CLI takes
effect on node B (docs/deployment.md gives the bound; this measures it);
and a private PostgreSQL stopped and started under a running node."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engines import PrivatePostgres, PrivateRedis
from nodes import REMOTE, rcpt_reply, smtp_auth, start_node

from support import OUTSIDE_IP, Running, maildir_messages, postvakt

ALICE = "alice@pv.test"
# How long the tests wait for a change to show on the other node: far above the
# documented bound, so that a loaded machine does not fail them.
DEADLINE = 30.0


def seconds_until(check: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < DEADLINE, f"{what}: not seen in {DEADLINE} s"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def two_nodes(
    tmp_path: Path, pg_database: str, private_redis: PrivateRedis
) -> Iterator[tuple[Running, Running]]:
    migrated(tmp_path, pg_database)
    store = {"directory": pg_database, "state": private_redis.url}
    a = b = None
    try:
        a = start_node(
            tmp_path,
            "node-a",
            {},
            store,
            limits={"auth_failures": 50, "auth_delay": 0.01, "auth_delay_max": 0.01},
        )
        b = start_node(
            tmp_path,
            "node-b",
            {},
            store,
            limits={"auth_failures": 50, "auth_delay": 0.01, "auth_delay_max": 0.01},
        )
        yield a, b
    finally:
        for n in (a, b):
            if n is not None:
                n.stop()


def migrated(tmp_path: Path, url: str) -> None:
    cfg = tmp_path / "migrate.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/m"\n[store]\ndirectory = "{url}"\n')
    postvakt("store", "migrate", config=cfg)


def test_users_changed_on_node_a_take_effect_on_node_b(two_nodes: tuple[Running, Running]) -> None:
    a, b = two_nodes
    took = {}
    a.add_user(ALICE, "first")
    took["user add"] = seconds_until(lambda: smtp_auth(b, OUTSIDE_IP, ALICE, "first") == 235, "add")
    a.cli("user", "passwd", ALICE, "--password-stdin", input="second\n")
    took["user passwd"] = seconds_until(
        lambda: smtp_auth(b, OUTSIDE_IP, ALICE, "first") == 535, "passwd"
    )
    assert smtp_auth(b, OUTSIDE_IP, ALICE, "second") == 235
    a.cli("alias", "add", "info@pv.test", ALICE)
    took["alias add"] = seconds_until(
        lambda: rcpt_reply(b, OUTSIDE_IP, "info@pv.test").startswith("250"), "alias"
    )
    a.cli("user", "del", ALICE)
    took["user del"] = seconds_until(
        lambda: smtp_auth(b, OUTSIDE_IP, ALICE, "second") == 535, "del"
    )
    assert rcpt_reply(b, OUTSIDE_IP, ALICE).startswith("550 5.1.1")
    # Each wait includes a whole SMTP session; the change itself takes milliseconds.
    print("seen on node B after (s):", {k: round(v, 3) for k, v in took.items()})


def test_postgresql_down_and_back_under_a_running_node(
    tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    url = private_pg.createdb()
    migrated(tmp_path, url)
    node = start_node(
        tmp_path,
        "node-a",
        {ALICE: "secret"},
        {"directory": url, "timeout": "2s"},
        delivery={"retry_initial": "1s", "retry_max": "1s"},
    )
    try:
        assert smtp_auth(node, OUTSIDE_IP, ALICE, "secret") == 235
        private_pg.stop()

        def refused_for_now() -> bool:
            return smtp_auth(node, OUTSIDE_IP, ALICE, "secret") == 454

        seconds_until(refused_for_now, "AUTH 454 with PostgreSQL down")
        with smtplib.SMTP("127.0.0.1", node.port("smtp"), source_address=(OUTSIDE_IP, 0)) as s:
            s.ehlo("client.other.example")
            assert s.mail(f"bob@{REMOTE}")[0] == 250
            code, text = s.rcpt(ALICE)
            assert (code, text.split()[0]) == (451, b"4.3.0"), text
            # Postmaster is always accepted (RFC 5321 §4.5.1): queued now, delivered when back.
            assert s.rcpt("postmaster@pv.test")[0] == 250
            assert s.data(b"Subject: while the directory is down\r\n\r\nhello\r\n")[0] == 250
        time.sleep(2.5)  # a few delivery tries come and go; the message must stay queued
        assert node.cli("queue", "list", "--json").stdout.count('"id"') == 1
        assert maildir_messages(node.data_dir, "postmaster@pv.test") == []

        private_pg.start()
        seconds_until(lambda: smtp_auth(node, OUTSIDE_IP, ALICE, "secret") == 235, "AUTH back")
        seconds_until(
            lambda: len(maildir_messages(node.data_dir, "postmaster@pv.test")) == 1,
            "queued mail delivered after the directory came back",
        )
        log = node.log()
        assert "Traceback" not in log, log
        # One line per process (front and queue manager) for the outage and for the recovery.
        assert 1 <= log.count("unreachable: ") <= 2, log
        assert 1 <= log.count("reachable again") <= 2, log
    finally:
        node.stop()
