"""`postvakt queue ...` against a running server."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

from support import LOCAL_DOMAIN, Running, SmtpSink, maildir_messages, start_server

ALICE = f"alice@{LOCAL_DOMAIN}"
REMOTE = "other.example"


def send(srv: Running, subject: str) -> str:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
        s.ehlo()
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt(f"friend@{REMOTE}")[0] == 250
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250
    return text.decode().rsplit(" ", 1)[1]


def listing(srv: Running, *args: str) -> list[dict]:  # type: ignore[type-arg]
    r = srv.cli("queue", "list", "--json", *args)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def by_id(srv: Running) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["id"]: r for r in listing(srv)}


def test_queue_commands_on_a_running_server(tmp_path: Path) -> None:
    refusing = SmtpSink(tmp_path, extra=["-r", "rcpt"])
    srv = start_server(
        tmp_path,
        users={ALICE: "x"},
        delivery={
            "routes": {REMOTE: f"127.0.0.1:{refusing.port}"},
            "retry_initial": "1h",
            "retry_max": "1h",
        },
    )
    accepting: SmtpSink | None = None
    try:
        first = send(srv, "first")
        second = send(srv, "second")
        third = send(srv, "third")
        wait(lambda: {r["state"] for r in listing(srv)} == {"deferred"} and len(listing(srv)) == 3)
        rows = by_id(srv)
        assert set(rows) == {first, second, third}

        # delete: gone without delivery and without a bounce.
        assert "deleted" in srv.cli("queue", "delete", third).stdout
        assert third not in by_id(srv)
        assert srv.cli("queue", "show", third, check=False).returncode != 0
        row = rows[first]
        assert row["sender"] == ALICE
        assert row["recipients"] == [{"address": f"friend@{REMOTE}", "state": "pending"}]
        assert "450 4.3.0" in row["last_error"]
        assert row["attempts"] == 1

        text = srv.cli("queue", "list").stdout
        assert (
            first in text
            and "deferred" in text
            and f"<{ALICE}> -> friend@{REMOTE}" in text
            and "450 4.3.0" in text
        )

        shown = srv.cli("queue", "show", first).stdout
        assert "Subject: first" in shown and '"attempts": 1' in shown

        assert "held" in srv.cli("queue", "hold", first).stdout
        assert [r["id"] for r in listing(srv, "--held")] == [first]
        assert (
            srv.cli("queue", "retry", first, check=False).returncode != 0
        )  # held: release it instead

        # The remote side recovers; a retry delivers at once, not in an hour.
        port = refusing.port
        refusing.stop()
        accepting = SmtpSink(tmp_path, port=port)
        assert "scheduled" in srv.cli("queue", "retry", second).stdout
        wait(lambda: second not in by_id(srv))
        assert any("Subject: second" in m for m in accepting.wait_for(1))

        assert "released" in srv.cli("queue", "release", first).stdout
        wait(lambda: first not in by_id(srv))
        assert len(accepting.wait_for(2)) == 2

        time.sleep(1.5)
        assert len(accepting.messages()) == 2
        assert maildir_messages(srv.data_dir, ALICE) == []
        assert "Mail queue is empty" in srv.cli("queue", "list").stdout
    finally:
        srv.stop()
        refusing.stop()
        if accepting is not None:
            accepting.stop()


def test_retry_all(tmp_path: Path) -> None:
    refusing = SmtpSink(tmp_path, extra=["-r", "rcpt"])
    srv = start_server(
        tmp_path,
        users={ALICE: "x"},
        delivery={
            "routes": {REMOTE: f"127.0.0.1:{refusing.port}"},
            "retry_initial": "1h",
            "retry_max": "1h",
        },
    )
    accepting: SmtpSink | None = None
    try:
        for i in range(3):
            send(srv, f"m{i}")
        wait(lambda: len(listing(srv)) == 3 and all(r["state"] == "deferred" for r in listing(srv)))
        port = refusing.port
        refusing.stop()
        accepting = SmtpSink(tmp_path, port=port)
        assert "3 message(s)" in srv.cli("queue", "retry", "--all").stdout
        wait(lambda: listing(srv) == [])
        assert len(accepting.wait_for(3)) == 3
    finally:
        srv.stop()
        refusing.stop()
        if accepting is not None:
            accepting.stop()
