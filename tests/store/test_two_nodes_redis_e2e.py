"""Two real `postvakt serve` nodes on one (private) Redis: what one node learns,
the other acts on; and what happens when Redis goes away and comes back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import PrivateRedis
from nodes import PASSWORD, REMOTE, Pop3, pop3_login, rcpt_reply, smtp_auth, start_node, submit

from support import OTHER_OUTSIDE_IP, OUTSIDE_IP, Running, eventually

ALICE = "alice@pv.test"
GUESSER = "127.0.0.4"
DENIED = f"550 5.7.1 <carol@{REMOTE}>: Relaying denied"


@pytest.fixture
def two_nodes(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[tuple[Running, Running]]:
    store = {"state": private_redis.url, "timeout": "1s"}
    limits = {
        "exempt": [],
        "user": {"messages_per_hour": 3},
        "auth_failures": 4,
        "auth_delay": 0.05,
        "auth_delay_max": 0.1,
    }
    routes = {"routes": {REMOTE: "127.0.0.1:9"}}  # nothing is delivered in these tests
    a = start_node(tmp_path, "node-a", {ALICE: PASSWORD}, store, limits=limits, delivery=routes)
    try:
        b = start_node(tmp_path, "node-b", {ALICE: PASSWORD}, store, limits=limits, delivery=routes)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_a_pop3_login_on_one_node_opens_relay_on_the_other(
    two_nodes: tuple[Running, Running],
) -> None:
    a, b = two_nodes
    assert rcpt_reply(b, OUTSIDE_IP).startswith(DENIED)
    assert pop3_login(a, OUTSIDE_IP, ALICE).startswith("+OK")

    # The login's answer does not wait for the grant's write to Redis (a thread
    # of the node makes it, store/redis.py): the other node sees it a moment later.
    def relays() -> None:
        assert rcpt_reply(b, OUTSIDE_IP).startswith("250")

    eventually(relays, timeout=10)
    assert rcpt_reply(b, OTHER_OUTSIDE_IP).startswith(DENIED)
    for node in (a, b):
        listed = json.loads(node.cli("grants", "list", "--json").stdout)
        assert [(g["ip"], g["login"], g["protocol"], g["node"]) for g in listed] == [
            (OUTSIDE_IP, ALICE, "pop3", "node-a")
        ]
        text = node.cli(
            "explain", "--client", OUTSIDE_IP, "--from", f"bob@{REMOTE}", "--to", f"carol@{REMOTE}"
        ).stdout
        assert f"POP3 login by {ALICE} from {OUTSIDE_IP} on node node-a" in text, text


def test_a_user_limit_counts_messages_over_both_nodes(two_nodes: tuple[Running, Running]) -> None:
    a, b = two_nodes
    assert submit(a, OUTSIDE_IP, ALICE, "one").startswith("250")
    assert submit(b, OUTSIDE_IP, ALICE, "two").startswith("250")
    assert submit(a, OUTSIDE_IP, ALICE, "three").startswith("250")
    # The fourth is over messages_per_hour = 3 in all: held (250, never dropped).
    assert submit(b, OUTSIDE_IP, ALICE, "four").startswith("250")
    held = json.loads(b.cli("queue", "list", "--held", "--json").stdout)
    assert len(held) == 1
    assert "user.messages_per_hour" in b.log()
    shown = a.cli("limits", "show", ALICE).stdout
    assert "AT LIMIT" in shown, shown


def test_login_failures_over_smtp_on_one_node_and_pop3_on_the_other_stop_one_guesser(
    two_nodes: tuple[Running, Running],
) -> None:
    a, b = two_nodes
    assert smtp_auth(a, GUESSER, ALICE, "guess-1") == 535
    assert smtp_auth(a, GUESSER, ALICE, "guess-2") == 535
    assert pop3_login(b, GUESSER, ALICE, "guess-3").startswith("-ERR [AUTH]")
    assert pop3_login(b, GUESSER, ALICE, "guess-4").startswith("-ERR [AUTH]")
    # The ceiling (4) is reached over both nodes and both protocols: even the
    # right password is refused without a check, on either node.
    assert smtp_auth(a, GUESSER, ALICE, PASSWORD) == 454
    assert pop3_login(b, GUESSER, ALICE, PASSWORD).startswith("-ERR")
    # Alice herself, from her own address, is not affected.
    assert smtp_auth(b, OUTSIDE_IP, ALICE, PASSWORD) == 235
    assert pop3_login(a, OUTSIDE_IP, ALICE).startswith("+OK")


def test_one_maildrop_is_never_served_by_two_nodes_at_once(
    two_nodes: tuple[Running, Running],
) -> None:
    a, b = two_nodes
    first = Pop3(a, OUTSIDE_IP)
    try:
        assert first.login(ALICE).startswith("+OK")
        assert pop3_login(b, OTHER_OUTSIDE_IP, ALICE) == (
            "-ERR [IN-USE] Mailbox is locked by another session"
        )
    finally:
        first.close()
    eventually(lambda: _logs_in(b), timeout=20)


def _logs_in(node: Running) -> None:
    assert pop3_login(node, OTHER_OUTSIDE_IP, ALICE).startswith("+OK")


def test_redis_down_closes_pop_before_smtp_keeps_auth_and_recovers_without_restart(
    two_nodes: tuple[Running, Running], private_redis: PrivateRedis
) -> None:
    a, b = two_nodes
    assert pop3_login(a, OUTSIDE_IP, ALICE).startswith("+OK")
    assert rcpt_reply(b, OUTSIDE_IP).startswith("250")

    private_redis.stop()
    # POP-before-SMTP fails closed; AUTH and `networks` still work.
    assert rcpt_reply(b, OUTSIDE_IP).startswith(DENIED)
    assert rcpt_reply(b, OUTSIDE_IP).startswith(DENIED)
    assert smtp_auth(b, OUTSIDE_IP, ALICE) == 235
    assert rcpt_reply(b, "127.0.0.1").startswith("250")
    # A held-back limit still counts (in the node) rather than refusing mail.
    assert submit(b, OUTSIDE_IP, ALICE, "during the outage").startswith("250")
    log = b.log()
    assert log.count("unreachable:") == 1, log
    assert "Traceback" not in log
    failed = b.cli("grants", "list", check=False)
    assert failed.returncode != 0 and "unreachable" in failed.stderr

    private_redis.start()  # empty: the grant is gone, a new login makes a new one

    def relays_again() -> None:
        assert pop3_login(a, OUTSIDE_IP, ALICE).startswith("+OK")
        assert rcpt_reply(b, OUTSIDE_IP).startswith("250")

    eventually(relays_again, timeout=30)
    assert b.log().count("reachable again") == 1
    assert "Traceback" not in a.log() + b.log()
