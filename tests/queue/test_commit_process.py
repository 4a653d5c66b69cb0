"""The commit helper process (server/commit_process.py), driven as the front's
committer thread drives it: real processes, a real socket pair, real files."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient, spool
from postvakt.queue.spool import HOLD, INCOMING, IncomingMessage
from postvakt.server.commit_client import HelperClient

BODY = b"From: alice@pv.test\r\nSubject: by the helper\r\n\r\nhello\r\n"


def env(hold: str | None = None) -> Envelope:
    return Envelope(
        sender="alice@pv.test",
        recipients=(Recipient("bob@pv.test"),),
        received_at=1_700_000_000.0,
        client_ip="127.0.0.1",
        helo="client.test",
        login=None,
        hold=hold,
    )


def files(q: Queue) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(q.root / d)) for d in ("tmp", "incoming", "hold")}


def message(q: Queue, body: bytes = BODY) -> IncomingMessage:
    m = q.new_message()
    m.write(body)
    return m


def run(root: Path, body: Callable[[HelperClient], Awaitable[None]]) -> None:
    """`body` with a started client, on an event loop of its own."""

    async def go() -> None:
        client = HelperClient(root)
        await client.start()
        try:
            await body(client)
        finally:
            await client.close()

    asyncio.run(go())


async def commit_all(
    client: HelperClient, batch: list[tuple[IncomingMessage, Envelope]]
) -> list[QueueWriteError | None]:
    """Handed over in one turn of the loop: one batch."""
    return list(await asyncio.gather(*(client.commit(m, e) for m, e in batch)))


def test_a_batch_is_committed_by_the_helper(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    held = env(hold="over the limit")
    batch: list[tuple[IncomingMessage, Envelope]] = [(message(q), env()) for _ in range(3)]
    batch.append((message(q), held))

    async def body(client: HelperClient) -> None:
        assert await commit_all(client, batch) == [None] * 4

    run(q.root, body)
    ids = sorted(m.queue_id for m, _ in batch[:3])
    assert files(q)["incoming"] == ids and files(q)["hold"] == [batch[3][0].queue_id]
    assert files(q)["tmp"] == []
    for qid in ids:
        loaded = q.load(qid, INCOMING)
        assert q.read_body(loaded) == BODY and loaded.envelope == env()
    assert q.load(batch[3][0].queue_id, HOLD).envelope == held


def test_a_spilled_message_is_finished_by_the_helper_from_where_the_front_stopped(
    tmp_path: Path,
) -> None:
    """Past SPILL the front has written part of the message into its tmp file,
    which it holds locked; the helper writes the rest and commits it."""
    q = Queue(tmp_path / "queue")
    body = b"Subject: big\r\n\r\n" + b"x" * spool.SPILL + b"the end\r\n"
    m = q.new_message()
    m.write(body[: spool.SPILL + 100])  # spilled: a file, locked by this process
    m.write(body[spool.SPILL + 100 :])  # in memory, not yet in the file
    assert files(q)["tmp"] == [m.queue_id]

    async def body_(client: HelperClient) -> None:
        assert await client.commit(m, env()) is None

    run(q.root, body_)
    assert files(q)["tmp"] == [] and files(q)["incoming"] == [m.queue_id]
    assert q.read_body(q.load(m.queue_id, INCOMING)) == body
    assert m._fd is None  # the front's descriptor, and with it the lock, is gone


@pytest.mark.parametrize("point", ["after_write", "after_fsync", "mid_batch", "after_rename"])
def test_a_helper_that_dies_mid_batch_gives_451s_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The helper dies in the middle of a batch (its files written, fsynced,
    some or all renamed into incoming/, before the directory fsync that would
    acknowledge them): every message gets an error (a 451), none stays in the
    queue to be delivered as well, no file of it is left, and the next
    message goes to a new helper."""
    q = Queue(tmp_path / "queue")
    monkeypatch.setenv("POSTVAKT_CRASH_AT", point)  # the helper's, not this process's
    batch = [(message(q), env()) for _ in range(3)]
    later = message(q)

    async def body(client: HelperClient) -> None:
        monkeypatch.delenv("POSTVAKT_CRASH_AT")  # the helper started next runs on
        results = await commit_all(client, batch)
        assert all(isinstance(r, QueueWriteError) for r in results)
        assert files(q)["incoming"] == [] and files(q)["tmp"] == []
        assert await client.commit(later, env()) is None

    run(q.root, body)
    assert files(q)["incoming"] == [later.queue_id]


def test_a_helper_killed_between_batches_costs_no_message(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")

    async def body(client: HelperClient) -> None:
        assert await client.commit(message(q), env()) is None
        proc = client.helper.proc
        assert proc is not None
        proc.kill()
        await asyncio.to_thread(proc.wait)
        m = message(q)
        assert await client.commit(m, env()) is None
        assert m.queue_id in files(q)["incoming"]
        assert client.helper.proc is not None and client.helper.proc is not proc

    run(q.root, body)


def test_the_helper_outlives_a_stop_signal_and_ends_with_its_front(tmp_path: Path) -> None:
    """Stopping a service signals every process of it: the helper leaves the
    decision to its front, and exits when the front closes its end."""
    q = Queue(tmp_path / "queue")
    procs = []

    async def body(client: HelperClient) -> None:
        proc = client.helper.proc
        assert proc is not None
        procs.append(proc)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            proc.send_signal(sig)
        await asyncio.sleep(0.3)
        assert proc.poll() is None
        assert await client.commit(message(q), env()) is None

    run(q.root, body)
    assert procs[0].returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(procs[0].pid, 0)
