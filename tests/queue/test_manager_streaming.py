"""The manager streams bodies: its memory does not grow with the message
(issue: one 50 MB message to three recipients peaked at 363 MB), and what
arrives is byte for byte what was queued."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smtp_peer import Peer

from postvakt import config as C
from postvakt.delivery.smtpclient import to_wire
from postvakt.directory import Directory
from postvakt.queue import Envelope, Queue, Recipient
from postvakt.queue.manager import QueueManager
from support import free_port

BENCH = Path(__file__).resolve().parents[2] / "bench" / "manager_memory.py"


def test_peak_memory_does_not_follow_the_message_size() -> None:
    if not os.path.exists("/usr/sbin/smtp-sink"):
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("/proc/self/clear_refs is missing: peak RSS cannot be reset")
    p = subprocess.run(
        [sys.executable, str(BENCH), "--size", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    # A whole copy of the body alone would be 30 MB; before streaming it was ~7 copies.
    assert r["growth_mb"] < 20, r


class NoDNS:
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        raise AssertionError(f"no DNS in tests ({domain})")

    async def addresses(self, host: str) -> list[str]:
        raise AssertionError(f"no DNS in tests ({host})")


def test_big_message_arrives_intact_in_maildir_and_at_the_peer(tmp_path: Path) -> None:
    peer = Peer(port=free_port())
    config = C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": str(tmp_path / "data"),
            "domains": {"local": ["pv.test"]},
            "delivery": {"routes": {"x.example": f"127.0.0.1:{peer.port}"}, "tls": "none"},
        }
    )
    directory = Directory.for_config(config)
    directory.add_user("bob@pv.test", "pw")
    q = Queue(config.data_dir / "queue")
    head = b"Received: from client\r\nFrom: alice@pv.test\r\nSubject: big\r\n\r\n"
    body = b"".join(
        b".dot %d\r\n%s\r\n" % (i, b"q" * (i % 3000)) for i in range(2000)
    )  # ~3 MB: many read chunks, lines longer than 998, lines starting with "."
    m = q.new_message()
    m.write(head)
    m.write(body)
    m.commit(
        Envelope(
            sender="alice@pv.test",
            recipients=(Recipient("bob@pv.test"), Recipient("far@x.example")),
            received_at=time.time(),
            client_ip="127.0.0.1",
            helo="client.test",
            login=None,
        )
    )

    async def go() -> None:
        await peer.start()
        qm = QueueManager(config, directory, q, resolver=NoDNS())  # type: ignore[arg-type]
        await qm.start()
        try:
            qm.wake()
            deadline = time.monotonic() + 60
            while q.find(m.queue_id) is not None:
                assert time.monotonic() < deadline, "not delivered in time"
                await asyncio.sleep(0.05)
        finally:
            await qm.stop(5)
            await peer.close()

    asyncio.run(go())
    [name] = os.listdir(directory.maildir("bob@pv.test") / "new")
    stored = (directory.maildir("bob@pv.test") / "new" / name).read_bytes()
    expect = b"Return-Path: <alice@pv.test>\nDelivered-To: bob@pv.test\n" + (head + body).replace(
        b"\r\n", b"\n"
    )
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(expect).hexdigest()
    [t] = peer.transactions
    assert t.data == to_wire(head + body)
