"""The Prometheus endpoint, live: the real `postvakt serve` with `[metrics] listen`,
real clients sending, refused, held and delivered mail, and every scrape
parsed by prometheus_client's own text parser.

Deliveries happen in the queue manager's process and sessions in the front's:
the numbers below only add up when one scrape sums the node's processes.
"""

from __future__ import annotations

import poplib
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import (
    LOCAL_DOMAIN,
    OUTSIDE_IP,
    Running,
    SmtpSink,
    base_config,
    to_toml,
    wait_maildir,
)

pytestmark = pytest.mark.skipif(
    not Path(SmtpSink.BINARY).exists(), reason="Postfix's smtp-sink is not installed"
)

REMOTE = "other.example"
ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "correct horse"
DEADLINE = 30.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(srv: Running) -> Samples:
    port = srv.ports["metrics"][0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(srv: Running, test: Callable[[Samples], bool]) -> Samples:
    deadline = time.monotonic() + DEADLINE
    while True:
        samples = scrape(srv)
        if test(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink")
    yield s
    s.stop()


@pytest.fixture
def server(tmp_path: Path, sink: SmtpSink) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    cfg = base_config(
        data_dir,
        delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}},
        # Our network (127.0.0.1) may relay one message an hour; the next is held.
        limits={"exempt": [], "networks": {"messages_per_hour": 1, "outcome": "hold"}},
        metrics={"listen": "127.0.0.1:0"},
    )
    cfg["postmaster"] = ALICE  # the hold notice goes to a real mailbox: a third delivery
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def relay_from_network(srv: Running, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.sendmail(f"printer@{LOCAL_DOMAIN}", [f"bob@{REMOTE}"], f"Subject: {subject}\r\n\r\nx\r\n")


def test_counters_move_as_mail_is_sent_refused_held_and_delivered(
    server: Running, sink: SmtpSink
) -> None:
    before = scrape(server)
    assert value(before, "postvakt_smtpd_connects_total", listener="smtp") == 0
    assert value(before, "postvakt_queue_messages", state="hold") == 0

    # Sent: our network relays one message to the remote MX.
    relay_from_network(server, "first")
    # Held: the second goes over the network's hourly limit.
    relay_from_network(server, "second")
    # Refused: an outside client tries to relay.
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), source_address=(OUTSIDE_IP, 0)) as s:
        s.ehlo("hotel.example")
        assert s.mail(f"x@{REMOTE}")[0] == 250
        assert s.rcpt(f"v@{REMOTE}")[0] == 550
    # Delivered locally: from outside, to our own user.
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), source_address=(OUTSIDE_IP, 0)) as s:
        s.sendmail(f"x@{REMOTE}", [ALICE], "Subject: inbound\r\n\r\nhello\r\n")
    # AUTH: one failure, one success on submission.
    with smtplib.SMTP("127.0.0.1", server.port("submission"), source_address=(OUTSIDE_IP, 0)) as s:
        s.starttls(context=tls())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(ALICE, "wrong")
    with smtplib.SMTP("127.0.0.1", server.port("submission"), source_address=(OUTSIDE_IP, 0)) as s:
        s.starttls(context=tls())
        s.login(ALICE, PASSWORD)
    # POP3: a login (which also opens POP-before-SMTP for the address).
    wait_maildir(server.data_dir, ALICE, containing=b"inbound")
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=tls(), timeout=30)
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.quit()
    assert len(sink.wait_for(1)) == 1

    after = wait_until(
        server,
        lambda m: (
            value(m, "postvakt_deliveries_total", status="sent") >= 3
            and value(m, "postvakt_queue_messages", state="hold") >= 1
        ),
    )
    assert value(after, "postvakt_smtpd_connects_total", listener="smtp") == 4
    assert value(after, "postvakt_smtpd_connects_total", listener="submission") == 2
    assert value(after, "postvakt_pop3_connects_total", listener="pop3s") == 1
    assert value(after, "postvakt_smtpd_messages_accepted_total", listener="smtp") == 3
    assert (
        value(after, "postvakt_smtpd_messages_held_total", reason="networks.messages_per_hour") == 1
    )
    assert (
        value(after, "postvakt_limits_hit_total", rule="networks.messages_per_hour", verdict="hold")
        == 1
    )
    assert value(after, "postvakt_smtpd_messages_rejected_total", stage="rcpt", code="550") == 1
    assert (
        value(
            after,
            "postvakt_smtpd_decisions_total",
            stage="rcpt",
            verdict="reject",
            rule="reject_unauth_destination",
        )
        == 1
    )
    assert (
        value(
            after,
            "postvakt_smtpd_sasl_authentication_failures_total",
            listener="submission",
            mechanism="PLAIN",
        )
        == 1
    )
    assert (
        value(
            after,
            "postvakt_smtpd_sasl_authentication_successes_total",
            listener="submission",
            mechanism="PLAIN",
        )
        == 1
    )
    assert value(after, "postvakt_pop3_logins_total", listener="pop3s", outcome="ok") == 1
    # Deliveries run in the queue manager's process: counted there, summed here.
    # The relayed message, the inbound one, and the hold notice to postmaster.
    assert value(after, "postvakt_deliveries_total", status="sent") == 3
    assert value(after, "postvakt_delivery_delay_seconds_count", status="sent") == 3
    assert value(after, "postvakt_delivery_delay_seconds_bucket", status="sent", le="+Inf") == 3
    assert value(after, "postvakt_queue_messages", state="hold") == 1
    assert value(after, "postvakt_queue_oldest_age_seconds", state="hold") >= 0
    assert value(after, "postvakt_queue_messages", state="deferred") == 0
    assert value(after, "postvakt_grants_active", protocol="pop3") == 1


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir)))
    srv = Running(cfg_path, data_dir).start()
    try:
        assert "metrics" not in srv.ports
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
            s.noop()
    finally:
        srv.stop()
    assert not (data_dir / "metrics").exists()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        data_dir = tmp_path / "data"
        cfg_path = tmp_path / "postvakt.toml"
        cfg_path.write_text(to_toml(base_config(data_dir, metrics={"listen": f"127.0.0.1:{port}"})))
        with pytest.raises(RuntimeError) as e:
            Running(cfg_path, data_dir).start()
        assert f"[metrics] listen: 127.0.0.1:{port}" in str(e.value)
        assert "Traceback" not in str(e.value)
    finally:
        holder.close()


def test_scrape_has_no_samples_of_another_node(tmp_path: Path) -> None:
    """A leftover counter file from an earlier run does not leak into a new one."""
    data_dir = tmp_path / "data"
    stale = data_dir / "metrics"
    stale.mkdir(parents=True)
    (stale / "counter_999999.db").write_bytes(b"junk")
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(base_config(data_dir, metrics={"listen": "127.0.0.1:0"})))
    srv = Running(cfg_path, data_dir).start()
    try:
        assert value(scrape(srv), "postvakt_smtpd_connects_total", listener="smtp") == 0
        assert not (stale / "counter_999999.db").exists()
    finally:
        srv.stop()
